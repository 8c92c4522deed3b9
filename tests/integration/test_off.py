"""`condor_annex off`: nothing of the annex keeps running or lingers; other annexes untouched."""

from __future__ import annotations

import io

from condor_annex import contract, spot
from condor_annex.cli.main import CliContext, main
from condor_annex.cli.render import render_off
from condor_annex.create import create_annex
from condor_annex.off import annex_off
from tests.integration import annex_env as _annex_env

shared_annex_env = _annex_env.shared_annex_env  # the fixture, shared by this module


def _on_demand(env, name, count=2):
    return create_annex(
        env.request(name, count=count),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(),
    )


def _spot(env, name):
    result = create_annex(
        env.request(name, slots=2, spot_instance_types=spot.parse_instance_types(["m5.large"])),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(),
    )
    env.clients.ec2.get_waiter("instance_exists").wait(
        Filters=[
            {"Name": f"tag:{contract.SPOT_FLEET_REQUEST_ID_TAG}", "Values": [result.fleet_id]}
        ],
        WaiterConfig={"Delay": 1, "MaxAttempts": 20},
    )
    return result


def _owned(env, name):
    """Objects, schedules and templates that belong to annex `name`."""
    return {
        "objects": [
            k for k in env.objects() if k in (contract.config_key(name), contract.lease_key(name))
        ],
        "schedules": [s for s in env.schedules() if s == contract.schedule_name(name)],
        "templates": [
            t for t in env.launch_templates() if t == contract.launch_template_name(name)
        ],
    }


def test_off_terminates_every_instance_and_removes_tarball_lease_and_schedule(shared_annex_env):
    env = shared_annex_env
    made = _on_demand(env, "gone")
    result = annex_off("gone", settings=env.settings, clients=env.clients)
    assert sorted(result.terminated_instances) == sorted(made.instance_ids)
    assert env.live_instances("gone") == []
    assert _owned(env, "gone") == {"objects": [], "schedules": [], "templates": []}


def test_off_leaves_other_annexes_running(shared_annex_env):
    env = shared_annex_env
    keep = _on_demand(env, "keep_me", count=1)
    _on_demand(env, "keep", count=1)
    annex_off("keep", settings=env.settings, clients=env.clients)
    assert [i["InstanceId"] for i in env.live_instances("keep_me")] == keep.instance_ids
    assert contract.config_key("keep_me") in env.objects()


def test_off_of_a_spot_annex_cancels_the_fleet_with_its_instances(shared_annex_env):
    env = shared_annex_env
    made = _spot(env, "spotgone")
    result = annex_off("spotgone", settings=env.settings, clients=env.clients)
    assert result.cancelled_fleets == [made.fleet_id]
    assert f"cancelled Spot Fleet {made.fleet_id}" in render_off(result)
    assert made.fleet_id not in [f["SpotFleetRequestId"] for f in env.live_fleets()]
    assert env.live_instances("spotgone") == []
    assert _owned(env, "spotgone") == {"objects": [], "schedules": [], "templates": []}


def test_off_twice_is_harmless_and_reports_nothing_left(shared_annex_env):
    env = shared_annex_env
    _on_demand(env, "twice", count=1)
    annex_off("twice", settings=env.settings, clients=env.clients)
    again = annex_off("twice", settings=env.settings, clients=env.clients)
    assert not again.changed


def test_off_asks_the_pool_for_a_peaceful_shutdown_first(shared_annex_env):
    env = shared_annex_env
    _on_demand(env, "polite", count=1)
    asked: list[tuple[str, int]] = []

    def shutdown(name: str) -> int:
        asked.append((name, len(env.live_instances(name))))
        return 1

    result = annex_off("polite", settings=env.settings, clients=env.clients, pool_shutdown=shutdown)
    assert asked == [("polite", 1)]  # asked while the instance still ran
    assert result.peaceful_requests == 1


def test_off_terminates_even_when_the_pool_cannot_be_asked(shared_annex_env):
    env = shared_annex_env
    _on_demand(env, "rude", count=1)

    def unreachable(name: str) -> int:
        raise OSError("collector unreachable")

    result = annex_off(
        "rude", settings=env.settings, clients=env.clients, pool_shutdown=unreachable
    )
    assert env.live_instances("rude") == []
    assert "collector unreachable" in result.notes[0]


def test_off_from_the_command_line_exits_zero_and_says_what_it_did(shared_annex_env):
    env = shared_annex_env
    _on_demand(env, "cli_off", count=1)
    out, err = io.StringIO(), io.StringIO()
    ctx = CliContext(
        stdout=out,
        stderr=err,
        clients=lambda region, profile: env.clients,
        pool_shutdown=lambda name: 0,
    )
    code = main(["off", "-annex-name", "cli_off", *env.cli_args()], ctx)
    assert code == 0, err.getvalue()
    assert "terminated 1 instance" in out.getvalue()
    assert env.live_instances("cli_off") == []
