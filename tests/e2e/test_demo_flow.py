"""End to end: the demo's whole flow, with every step's outcome asserted.

The same `Demo` that `make demo` runs: local AWS as a process, `condor_annex -setup` through the
pinned CDK CLI, an on-demand and a Spot Fleet annex, the real boot agent per instance, status,
a lease expiring into the lease Lambda, `off`, and `-destroy-setup` — `-setup`/`-destroy-setup`
as an administrator IAM user, every other command as an operator IAM user holding only the
setup's operator policies, with the local AWS's IAM engine deciding every request.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest

from annex_sandbox.demo import FLEET_ANNEX, ON_DEMAND_ANNEX, SPOT_ANNEX, Demo
from condor_annex import contract


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("demo")
    transcript = io.StringIO()
    demo = Demo(workdir, out=transcript)
    outcomes = demo.run()
    return demo, outcomes, transcript.getvalue(), workdir


pytestmark = [pytest.mark.cdk, pytest.mark.xdist_group("cdk-deploy")]


def test_setup_writes_every_output_and_check_setup_passes(demo_run) -> None:
    _, outcomes, _, _ = demo_run
    assert set(outcomes.setup_outputs) == {o.key for o in contract.STACK_OUTPUTS}
    assert outcomes.check_setup_exit == 0


def test_each_annex_gets_its_instances_and_its_own_tarball(demo_run) -> None:
    _, outcomes, _, _ = demo_run
    assert len(outcomes.annex_instances[ON_DEMAND_ANNEX]) == 2
    assert len(outcomes.annex_instances[SPOT_ANNEX]) == 2
    assert len(outcomes.annex_instances[FLEET_ANNEX]) == 2
    assert outcomes.tarballs == sorted(
        contract.config_key(a) for a in (ON_DEMAND_ANNEX, SPOT_ANNEX, FLEET_ANNEX)
    )


def test_every_create_shows_its_cost_preview_and_the_fleet_annex_uses_ec2_fleet(demo_run) -> None:
    _, outcomes, _, _ = demo_run
    assert set(outcomes.previews) == {ON_DEMAND_ANNEX, SPOT_ANNEX, FLEET_ANNEX}
    assert any("per hour" in line for line in outcomes.previews[ON_DEMAND_ANNEX])
    assert any(line.startswith("Cap: $1.0000") for line in outcomes.previews[FLEET_ANNEX])
    fleet = outcomes.ec2_fleet
    assert fleet["Type"] == "maintain"
    assert fleet["SpotOptions"]["AllocationStrategy"] == "price-capacity-optimized"
    assert fleet["SpotOptions"]["MaxTotalPrice"] == "1"
    assert contract.token_belongs_to(fleet["ClientToken"], FLEET_ANNEX)


def test_every_instance_boots_with_the_real_agent_into_its_config(demo_run) -> None:
    _, outcomes, _, _ = demo_run
    instances = [i for ids in outcomes.annex_instances.values() for i in ids]
    assert outcomes.boots == dict.fromkeys(instances, 0)
    for instance_id in instances:
        files = outcomes.configured_files[instance_id]
        assert contract.TARBALL_CONFIG_FILE in files
        assert contract.TARBALL_TOKEN_FILE in files
        assert contract.INSTANCE_MACROS_FILE in files


def test_status_lists_exactly_the_instances_of_both_annexes(demo_run) -> None:
    _, outcomes, _, _ = demo_run
    listed = {
        annex["annex_name"]: sorted(i["instance_id"] for i in annex["instances"])
        for annex in outcomes.status["annexes"]
    }
    assert listed == {name: sorted(ids) for name, ids in outcomes.annex_instances.items()}


def test_the_expired_lease_ends_only_its_own_annex(demo_run) -> None:
    _, outcomes, _, _ = demo_run
    after = outcomes.after_lease
    assert after["running"] == []
    assert sorted(after["terminated"]) == outcomes.annex_instances[ON_DEMAND_ANNEX]
    assert contract.config_key(ON_DEMAND_ANNEX) not in after["keys"]
    assert contract.lease_key(ON_DEMAND_ANNEX) not in after["keys"]
    assert after["other_annex_running"] == outcomes.annex_instances[SPOT_ANNEX]
    # The lease ended the annex (how long that took is measured by bench/bench_lease.py).
    assert outcomes.lease_cleanup_seconds is not None


def test_off_and_destroy_leave_nothing_behind(demo_run) -> None:
    _, outcomes, _, _ = demo_run
    assert outcomes.after_off["running"] == []
    assert outcomes.after_off["keys"] == []
    assert outcomes.after_off["ec2_fleets"] == []
    assert outcomes.destroyed


def test_the_demo_stops_every_process_it_started(demo_run) -> None:
    demo, _, transcript, _ = demo_run
    assert demo.aws_process is not None and demo.aws_process.poll() is not None
    # The pool's daemons too (each master was our child; stop() reaped it).
    assert all(not node.running() for node in demo.nodes.values())
    assert demo.manager is None or not demo.manager.running()
    port = int(demo.endpoint.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert f"[{demo.STEPS}/{demo.STEPS}] Stop the emulators" in transcript


def test_the_transcript_never_shows_a_secret(demo_run) -> None:
    demo, _, transcript, _ = demo_run
    assert "eyJ" not in transcript  # no JWT (IDTOKEN) header
    assert "demo-secret-key" not in transcript
    assert Path(demo.key_file).stat().st_mode & 0o077 == 0


def test_with_real_daemons_a_users_job_runs_on_the_annex_and_idle_instances_power_off(
    demo_run,
) -> None:
    _, outcomes, transcript, _ = demo_run
    if outcomes.pool != "real":
        reason = [line.strip() for line in transcript.splitlines() if "no real HTCondor" in line]
        pytest.skip(f"the demo used its pretend collector: {reason}")
    instances = [i for ids in outcomes.annex_instances.values() for i in ids]
    assert len(outcomes.slots_in_pool) == len(instances)
    joined = {
        i["instance_id"]: i["joined_pool"]
        for annex in outcomes.status["annexes"]
        for i in annex["instances"]
    }
    assert joined == dict.fromkeys(instances, True)
    assert any(i in (outcomes.job_host or "") for i in outcomes.annex_instances[ON_DEMAND_ANNEX])
    assert outcomes.job_output is not None and ON_DEMAND_ANNEX in outcomes.job_output
    assert outcomes.powered_off == dict.fromkeys(outcomes.annex_instances[ON_DEMAND_ANNEX], 1)


def test_the_operator_runs_every_command_but_the_setup_and_the_engine_refused_nothing(
    demo_run,
) -> None:
    _, outcomes, transcript, _ = demo_run
    administrator, operator = "annex-administrator", "annex-operator"
    assert outcomes.principals == {
        "-setup": administrator,
        "-check-setup": operator,
        "-annex-name": operator,
        "status": operator,
        "off": operator,
        "-destroy-setup": administrator,
    }
    assert f"[as IAM user {operator}] $ condor_annex status" in transcript
    # The engine judged the users' requests (not only the root's) and refused none of them.
    assert outcomes.engine_decisions.get("user", 0) > 0
    assert outcomes.refused == []
