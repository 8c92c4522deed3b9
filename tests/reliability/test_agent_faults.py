"""The boot agent under faults: every failure is a logged exit code and a power-off, no secret.

The agent runs as a process against the local AWS and the IMDS emulator (helpers shared with
tests/integration/test_agent_world.py). The annex's lease stays the safety net behind a
powered-off instance: it terminates the instance and deletes the tarball (test_lease_faults.py).
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import time
from typing import Any, Callable

import pytest

from annex_sandbox.local_aws import FAKE_SECRET_ACCESS_KEY
from condor_annex import contract
from condor_annex.agent.exits import Exit
from tests.integration import test_agent_world as _world_fixtures
from tests.integration.test_agent_world import ANNEX_CONFIG, TOKEN, AnnexWorld, tarball

world = _world_fixtures.world
AREA = "boot agent"
pytestmark = pytest.mark.xdist_group("reliability-agent")
mark = pytest.mark.reliability


def _summary(done: Any, world: AnnexWorld, elapsed: float) -> str:
    errors = [line for line in done.stderr.splitlines() if "result=error" in line]
    first = errors[0] if errors else "no error line"
    written = (
        sorted(p.name for p in world.config_dir.iterdir()) if world.config_dir.exists() else []
    )
    return (
        f"exit {done.returncode} after {elapsed:.1f} s; {first[:160]}; powered off: "
        f"{world.powered_off}; files written: {', '.join(written) or 'none'}"
    )


def _assert_no_secret(done: Any, world: AnnexWorld) -> None:
    log = done.stdout + done.stderr
    assert TOKEN.decode().strip() not in log
    assert FAKE_SECRET_ACCESS_KEY not in log
    imds = world.imds.instance(world.instance_id)
    creds = getattr(imds, "credentials", None)
    for secret in (getattr(creds, "secret_access_key", None), getattr(creds, "token", None)):
        if secret:
            assert secret not in log
    assert not re.search(r"SecretAccessKey|aws_secret|SessionToken\W*[:=]", log)


def _run(world: AnnexWorld, *args: str, timeout: float = 60) -> tuple[Any, float]:
    start = time.monotonic()
    done = world.run_agent(*args, timeout=timeout)
    return done, time.monotonic() - start


def _fails(
    world: AnnexWorld, observed: Any, code: Exit, step: str, *args: str, timeout: float = 60
) -> Any:
    done, elapsed = _run(world, *args, timeout=timeout)
    observed(_summary(done, world, elapsed))
    assert done.returncode == code, done.stderr
    assert f"step={step} result=error" in done.stderr
    assert "step=poweroff result=ok" in done.stderr
    assert world.powered_off
    _assert_no_secret(done, world)
    return done


# --- AWS faults ---------------------------------------------------------------------------------


@mark(AREA, "S3 outage during boot: GetObject throttled for good (SlowDown)")
@pytest.mark.xdist_group("reliability-agent-s3-outage")
def test_s3_outage_during_boot_exits_and_powers_off(world: AnnexWorld, observed: Any) -> None:
    # The slowest case (~95 s): the agent's clients make botocore's 10 adaptive attempts, as on
    # a real instance, before the power-off. Its own group so it runs beside the others.
    world.setup()
    world.upload("s3down")
    world.launch_on_demand("s3down")
    world.aws.throttle("s3", "GetObject", capacity=0, refill_per_second=0)
    done = _fails(world, observed, Exit.AWS_ERROR, "download", timeout=240)
    assert "SlowDown" in done.stderr
    assert not world.config_dir.exists()


_AGENT_APIS = [
    ("ec2", "DescribeInstances", "describe_regions"),
    ("iam", "GetRolePolicy", "list_roles"),
    ("s3", "GetObject", "list_buckets"),
]


@pytest.mark.parametrize(
    "service, operation, drain",
    [
        pytest.param(
            s, o, d, marks=mark(AREA, f"{s.upper()} throttling ({o}: burst 1, refill 0.2/s)"), id=s
        )
        for s, o, d in _AGENT_APIS
    ],
)
def test_throttled_agent_api_is_absorbed(
    world: AnnexWorld, observed: Any, service: str, operation: str, drain: str
) -> None:
    world.setup()
    world.upload("slowapis")
    world.launch_on_demand("slowapis")
    world.prefetch_credentials()
    world.aws.throttle(service, capacity=1, refill_per_second=0.2)
    # The agent makes one call of each kind: empty the bucket so that very call is throttled.
    getattr(getattr(world, service), drain)()
    world.aws.clear_calls()
    done, elapsed = _run(world)
    throttled = len(world.aws.calls(service, operation)) - 1
    world.aws.clear_throttles()
    observed(
        f"exit {done.returncode} after {elapsed:.1f} s; {operation} throttled {throttled}x "
        f"and retried by botocore (adaptive); powered off: {world.powered_off}"
    )
    assert done.returncode == 0, done.stderr
    assert throttled >= 1
    assert not world.powered_off
    _assert_no_secret(done, world)


@mark(AREA, "instance role lacks IAM read (AccessDenied), IAM enforced")
def test_access_denied_powers_off(world: AnnexWorld, observed: Any) -> None:
    world.setup(iam_read=False)
    world.upload("denied")
    world.launch_on_demand("denied")
    world.prefetch_credentials()
    world.aws.enforce_iam(True)
    _fails(world, observed, Exit.ACCESS_DENIED, "bucket")


@mark(AREA, "tarball missing in the bucket (deleted, or lease already ended)")
def test_missing_tarball_powers_off(world: AnnexWorld, observed: Any) -> None:
    world.setup()
    world.launch_on_demand("gone")
    _fails(world, observed, Exit.TARBALL_MISSING, "download")


@mark(
    AREA,
    "instance launched without the annex client token (looks like an untagged Spot Fleet "
    "instance; tag deadline 2 s)",
)
def test_foreign_instance_powers_off(world: AnnexWorld, observed: Any) -> None:
    world.setup()
    world.launch_on_demand(None)
    _fails(world, observed, Exit.FLEET_TAG_TIMEOUT, "annex-name", "--fleet-tag-timeout", "2")


# --- Spot Fleet tag -----------------------------------------------------------------------------


@mark(AREA, "Spot Fleet tag arrives late (4 s), tags not in metadata: DescribeInstances polling")
def test_late_fleet_tag_is_waited_for(world: AnnexWorld, observed: Any) -> None:
    world.aws.set_fleet_tag_delay(4.0)
    world.setup()
    world.upload("latetag")
    world.launch_spot_fleet("latetag", tags_in_metadata=False)
    done, elapsed = _run(world)
    polls = re.search(r"tag_polls=(\d+)", done.stderr)
    observed(
        f"exit {done.returncode} after {elapsed:.1f} s; waited {polls.group(1) if polls else '?'} "
        f"polls for {contract.SPOT_FLEET_REQUEST_ID_TAG}; powered off: {world.powered_off}"
    )
    assert done.returncode == 0, done.stderr
    assert polls and int(polls.group(1)) >= 1
    assert (world.config_dir / contract.TARBALL_CONFIG_FILE).exists()
    _assert_no_secret(done, world)


@mark(AREA, "Spot Fleet tag never arrives (deadline 2 s instead of 50 min)")
def test_fleet_tag_never_arrives_powers_off(world: AnnexWorld, observed: Any) -> None:
    world.aws.set_fleet_tag_delay(3600)
    world.setup()
    world.upload("notag")
    world.launch_spot_fleet("notag", tags_in_metadata=False)
    _fails(world, observed, Exit.FLEET_TAG_TIMEOUT, "annex-name", "--fleet-tag-timeout", "2")
    assert not world.config_dir.exists()


# --- Instance metadata --------------------------------------------------------------------------


@mark(AREA, "slow IMDS: every answer 0.3 s late")
def test_slow_imds_still_configures(world: AnnexWorld, observed: Any) -> None:
    world.setup()
    world.upload("slowimds")
    world.launch_on_demand("slowimds")
    world.imds.set_latency(world.instance_id, 0.3)
    done, elapsed = _run(world)
    observed(f"exit {done.returncode} after {elapsed:.1f} s; powered off: {world.powered_off}")
    assert done.returncode == 0, done.stderr
    assert not world.powered_off
    _assert_no_secret(done, world)


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(m, marks=mark(AREA, f"IMDS absent: {what} (deadline 2 s)"), id=m)
        for m, what in (
            ("refuse", "connection refused"),
            ("hang", "connections accepted, never answered"),
            ("disabled", "HttpEndpoint disabled (403/404)"),
        )
    ],
)
def test_absent_imds_powers_off_within_its_deadline(
    world: AnnexWorld, observed: Any, mode: str
) -> None:
    world.setup()
    world.upload("noimds")
    world.launch_on_demand("noimds")
    world.imds.set_available(world.instance_id, False, mode=mode)
    try:
        done = _fails(world, observed, Exit.IMDS_UNAVAILABLE, "imds", "--imds-timeout", "2")
    finally:
        world.imds.set_available(world.instance_id, True)
    assert not world.config_dir.exists()
    assert "deadline" in done.stderr or "metadata" in done.stderr


# --- Hostile tarballs ---------------------------------------------------------------------------


def _tar(members: list[tarfile.TarInfo], data: dict[str, bytes], *, gz: bool = True) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for info in members:
            body = data.get(info.name)
            archive.addfile(info, io.BytesIO(body) if body is not None else None)
    return gzip.compress(raw.getvalue()) if gz else raw.getvalue()


def _file(name: str, body: bytes) -> tuple[tarfile.TarInfo, dict[str, bytes]]:
    info = tarfile.TarInfo(name)
    info.size = len(body)
    return info, {name: body}


def _with(*extra: tarfile.TarInfo, data: dict[str, bytes] | None = None) -> bytes:
    config, files = _file(contract.TARBALL_CONFIG_FILE, ANNEX_CONFIG.replace(b"{name}", b"x"))
    return _tar([config, *extra], {**files, **(data or {})})


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info


def _fifo(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    return info


def _bomb() -> bytes:
    # 64 MiB of zeros compress to ~64 KiB: far over the agent's 16 MiB uncompressed cap.
    info = tarfile.TarInfo("99-bomb.config")
    info.size = 64 * 1024 * 1024
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        archive.addfile(info, io.BytesIO(bytes(info.size)))
    return gzip.compress(raw.getvalue(), compresslevel=9)


def _many() -> bytes:
    members = [_file(f"f{i}.config", b"X = 1\n") for i in range(300)]
    return _with(*(m for m, _ in members), data={k: v for _, d in members for k, v in d.items()})


def _duplicate() -> bytes:
    first, data = _file(contract.TARBALL_CONFIG_FILE, b"A = 1\n")
    again, _ = _file(contract.TARBALL_CONFIG_FILE, b"A = 2\n")
    return _tar([first, again], data)


def _plus(name: str, body: bytes = b"x") -> bytes:
    """A valid tarball plus one regular member `name`."""
    info, data = _file(name, body)
    return _with(info, data=data)


def _only(name: str, body: bytes = b"A = 1\n", *, gz: bool = True) -> bytes:
    """A tarball with the single regular member `name`."""
    info, data = _file(name, body)
    return _tar([info], data, gz=gz)


_HOSTILE: list[tuple[str, str, Callable[[], bytes]]] = [
    ("symlink", "symlink to /etc/shadow", lambda: _with(_link("x.config", "/etc/shadow", tarfile.SYMTYPE))),
    ("hardlink", "hard link to /etc/passwd", lambda: _with(_link("y.config", "/etc/passwd", tarfile.LNKTYPE))),
    ("device", "character device (/dev/null clone)", lambda: _with(_device("null.config"))),
    ("fifo", "FIFO", lambda: _with(_fifo("pipe.config"))),
    ("traversal", "member `../../etc/cron.d/evil`", lambda: _plus("../../etc/cron.d/evil")),
    ("absolute", "member `/etc/sudoers.d/evil`", lambda: _plus("/etc/sudoers.d/evil")),
    ("bomb", "gzip bomb (64 MiB of zeros in ~64 KiB)", _bomb),
    ("many", "300 members", _many),
    ("duplicate", "the same member twice", _duplicate),
    ("mixed", f"mixed layouts: {contract.TARBALL_CONFIG_FILE} and config.d/", lambda: _plus("config.d/x.config")),
    ("ambiguous", "ambiguous layout: passwords.d/ alone", lambda: _only("passwords.d/POOL")),
    ("truncated", "truncated gzip stream", lambda: tarball("x")[:-20]),
    ("plain", "plain tar, not gzip", lambda: _only(contract.TARBALL_CONFIG_FILE, gz=False)),
]  # fmt: skip


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(b, marks=mark(AREA, f"hostile tarball: {what}"), id=i)
        for i, what, b in _HOSTILE
    ],
)
def test_hostile_tarball_is_refused_and_nothing_written(
    world: AnnexWorld, observed: Any, build: Callable[[], bytes]
) -> None:
    world.setup()
    world.upload("hostile", build())
    world.launch_on_demand("hostile")
    _fails(world, observed, Exit.TARBALL_REFUSED, "verify")
    assert not world.config_dir.exists()
    outside = sorted(p.name for p in world.root.parent.iterdir() if p.name != "root")
    assert outside == [world.poweroff_marker.name]
    assert not (world.root / "etc").exists() or not any((world.root / "etc").rglob("*evil*"))
