"""The boot agent end to end: local AWS (moto over HTTP) + the IMDSv2 emulator, agent as a process."""

from __future__ import annotations

import re
import stat
import subprocess
import time

import pytest

from condor_annex import contract
from condor_annex.agent.exits import Exit
from tests.integration import test_agent_world as _world_fixtures
from tests.integration.test_agent_world import AGENT, TOKEN, AnnexWorld, tarball

# The fixture shared by the agent integration modules.
world = _world_fixtures.world


def _assert_configured(world: AnnexWorld, annex: str, public_ip: str | None) -> None:
    config = world.config_dir / contract.TARBALL_CONFIG_FILE
    token = world.config_dir / contract.TARBALL_TOKEN_FILE
    macros = world.config_dir / contract.INSTANCE_MACROS_FILE
    assert f'AnnexName = "{annex}"' in config.read_text()
    assert token.read_bytes() == TOKEN
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.stat().st_mode) == 0o644
    text = macros.read_text()
    assert f'{contract.MACRO_INSTANCE_ID} = "{world.instance_id}"' in text
    if public_ip:
        assert f"{contract.MACRO_PUBLIC_IP} = {public_ip}" in text
    else:
        assert contract.MACRO_PUBLIC_IP not in text
    assert not world.powered_off


def test_on_demand_instance_is_configured(world: AnnexWorld) -> None:
    world.setup()
    world.upload("demo")
    world.launch_on_demand("demo")
    done = world.run_agent()
    assert done.returncode == 0, done.stderr
    _assert_configured(world, "demo", "203.0.113.10")
    for step in ("imds", "annex-name", "bucket", "download", "verify", "unpack"):
        assert f"step={step} result=ok" in done.stderr
    assert "step=firewall result=skipped" in done.stderr
    assert TOKEN.decode().strip() not in done.stderr


def test_agent_and_sdk_use_only_imdsv2_against_a_v1_refusing_service(world: AnnexWorld) -> None:
    world.setup()
    world.upload("v2only")
    world.launch_on_demand("v2only")
    done = world.run_agent()
    assert done.returncode == 0, done.stderr
    log = world.imds.requests(world.instance_id)
    assert ("PUT", "/latest/api/token", 200) in log
    # The emulator answers 401 to any GET without a valid token (IMDSv1): none happened.
    assert [entry for entry in log if entry[2] == 401] == []
    assert any("security-credentials" in path for _, path, _ in log)  # the SDK's own fetch
    _assert_configured(world, "v2only", "203.0.113.10")


def test_annex_name_with_underscores_is_everything_left_of_the_last_underscore(
    world: AnnexWorld,
) -> None:
    world.setup()
    world.upload("big_data_run")
    world.launch_on_demand("big_data_run", public_ip=None)
    done = world.run_agent()
    assert done.returncode == 0, done.stderr
    assert "annex=big_data_run" in done.stderr
    _assert_configured(world, "big_data_run", None)


def test_bucket_found_through_attached_managed_policy_fallback(world: AnnexWorld) -> None:
    world.setup(inline=False)
    world.upload("fallback")
    world.launch_on_demand("fallback")
    done = world.run_agent()
    assert done.returncode == 0, done.stderr
    assert "scanned=True" in done.stderr and "source=managed:" in done.stderr
    _assert_configured(world, "fallback", "203.0.113.10")


def _has_polled_for_the_tag(world: AnnexWorld, tags_in_metadata: bool) -> bool:
    if tags_in_metadata:
        paths = [path for _, path, _ in world.imds.requests(world.instance_id)]
        return any(path.startswith("/latest/meta-data/tags/instance") for path in paths)
    # The first DescribeInstances finds the client token; later ones look for the tag.
    return len(world.aws.calls("ec2", "DescribeInstances")) >= 2


@pytest.mark.parametrize("tags_in_metadata", [True, False], ids=["imds-tags", "describe"])
def test_spot_fleet_instance_waits_for_the_fleet_tag(
    world: AnnexWorld, tags_in_metadata: bool
) -> None:
    # Spot Fleet tags only when the test says so: the agent must be seen waiting first,
    # however slowly this machine starts it.
    world.aws.set_fleet_tag_delay(3600)
    world.setup()
    world.upload("spotty")
    world.launch_spot_fleet("spotty", tags_in_metadata=tags_in_metadata)
    world.aws.clear_calls()
    agent = subprocess.Popen(
        [str(AGENT), "--root", str(world.root), "--no-firewall", "--imds-timeout", "5"],
        env=world.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not _has_polled_for_the_tag(world, tags_in_metadata) and time.monotonic() < deadline:
        assert agent.poll() is None, agent.communicate()[1]
        time.sleep(0.1)
    assert world.aws.fire_fleet_tags() == 1
    _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    assert re.search(r"tag_polls=[1-9]", stderr)  # it really waited for the tag
    source = "imds-tags" if tags_in_metadata else "describe-instances"
    assert f"tag_source={source}" in stderr
    assert f"fleet={world.fleet_id}" in stderr
    _assert_configured(world, "spotty", None)


def test_spot_fleet_tag_that_never_comes_powers_off(world: AnnexWorld) -> None:
    world.aws.set_fleet_tag_delay(3600)
    world.setup()
    world.upload("notag")
    world.launch_spot_fleet("notag", tags_in_metadata=False)
    done = world.run_agent("--fleet-tag-timeout", "2")
    assert done.returncode == Exit.FLEET_TAG_TIMEOUT
    assert "step=annex-name result=error" in done.stderr
    wanted = f"no {contract.SPOT_FLEET_REQUEST_ID_TAG} or {contract.EC2_FLEET_ID_TAG} tag within 2s"
    assert wanted in done.stderr
    assert "step=poweroff result=ok" in done.stderr
    assert world.powered_off
    assert not world.config_dir.exists()


def test_missing_tarball_powers_off(world: AnnexWorld) -> None:
    world.setup()
    world.launch_on_demand("nothing")
    done = world.run_agent()
    assert done.returncode == Exit.TARBALL_MISSING
    assert "step=download result=error" in done.stderr
    assert world.powered_off


def test_iam_denied_powers_off(world: AnnexWorld) -> None:
    world.setup(iam_read=False)
    world.upload("denied")
    world.launch_on_demand("denied")
    world.prefetch_credentials()
    world.aws.enforce_iam(True)
    done = world.run_agent()
    assert done.returncode == Exit.ACCESS_DENIED, done.stderr
    assert "step=bucket result=error" in done.stderr and "AccessDenied" in done.stderr
    assert world.powered_off


def test_instance_role_policy_is_enough_under_iam_enforcement(world: AnnexWorld) -> None:
    world.setup()
    world.upload("enforced")
    world.launch_on_demand("enforced")
    world.prefetch_credentials()
    world.aws.enforce_iam(True)
    done = world.run_agent()
    assert done.returncode == 0, done.stderr
    _assert_configured(world, "enforced", "203.0.113.10")


def test_setup_stack_instance_role_is_enough_for_the_agent(
    world: AnnexWorld, setup_outputs: dict[str, str]
) -> None:
    world.use_setup_stack(setup_outputs)
    world.upload("stacked")
    world.launch_on_demand("stacked")
    world.prefetch_credentials()
    world.aws.enforce_iam(True)
    done = world.run_agent()
    assert done.returncode == 0, done.stderr
    assert f"source=inline:{contract.INSTANCE_ROLE_POLICY_NAME} scanned=False" in done.stderr
    _assert_configured(world, "stacked", "203.0.113.10")


def test_fleet_without_annex_client_token_powers_off(world: AnnexWorld) -> None:
    world.aws.set_fleet_tag_delay(0)
    world.setup()
    world.launch_spot_fleet("ignored", tags_in_metadata=False, client_token="someone-elses-fleet")
    done = world.run_agent()
    assert done.returncode == Exit.NOT_AN_ANNEX_INSTANCE, done.stderr
    assert "has no annex client token" in done.stderr
    assert world.powered_off


def test_metadata_service_down_powers_off(world: AnnexWorld) -> None:
    world.setup()
    world.launch_on_demand("down")
    world.imds.set_available(world.instance_id, False)
    done = world.run_agent("--imds-timeout", "1")
    assert done.returncode == Exit.IMDS_UNAVAILABLE
    assert "step=imds result=error" in done.stderr
    assert world.powered_off


@pytest.mark.parametrize(
    "extra",
    [[("../escape.config", b"x")], [("/etc/evil.config", b"x")]],
    ids=["traversal", "absolute"],
)
def test_hostile_tarball_from_s3_is_refused_and_nothing_written(
    world: AnnexWorld, extra: list[tuple[str, bytes]]
) -> None:
    world.setup()
    world.upload("hostile", tarball("hostile", extra))
    world.launch_on_demand("hostile")
    done = world.run_agent()
    assert done.returncode == Exit.TARBALL_REFUSED
    assert "step=verify result=error" in done.stderr
    assert not world.config_dir.exists()
    assert sorted(p.name for p in world.root.parent.iterdir() if p.name != "root") == [
        world.poweroff_marker.name
    ]


def test_not_gzip_object_is_refused(world: AnnexWorld) -> None:
    world.setup()
    world.upload("plain", b"just some text, not a tarball\n" * 10)
    world.launch_on_demand("plain")
    done = world.run_agent()
    assert done.returncode == Exit.TARBALL_REFUSED
    assert 'reason="not gzip"' in done.stderr
    assert world.powered_off


def test_dry_run_writes_nothing_and_prints_the_plan(world: AnnexWorld) -> None:
    world.setup()
    world.upload("dry")
    world.launch_on_demand("dry")
    done = world.run_agent("--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"would write {world.config_dir / contract.TARBALL_TOKEN_FILE} mode 0600" in done.stdout
    assert not (world.root / "etc").exists()


def test_second_boot_rewrites_the_same_files(world: AnnexWorld) -> None:
    world.setup()
    world.upload("twice")
    world.launch_on_demand("twice")
    assert world.run_agent().returncode == 0
    done = world.run_agent()
    assert done.returncode == 0, done.stderr
    _assert_configured(world, "twice", "203.0.113.10")
    assert sorted(p.name for p in world.config_dir.iterdir()) == sorted(
        [contract.INSTANCE_MACROS_FILE, contract.TARBALL_CONFIG_FILE, contract.TARBALL_TOKEN_DIR]
    )
