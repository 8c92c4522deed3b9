"""Interrupted and racing creates, and the lease functions run twice or at once.

A SIGKILLed `condor_annex` cannot roll back: what it made so far stays. The tests show, step by
step, what is left and what removes it: the lease (its one-time schedule or the periodic sweep,
run here in-process with the clock moved past the expiry), `condor_annex off`, or a rerun.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import pytest

from condor_annex import annex, contract, lease
from condor_annex.errors import InvalidInput
from tests.fixtures.cdk import load_lambda_module
from tests.fixtures.reliability import Row
from tests.integration.annex_env import AnnexEnv
from tests.reliability.conftest import (
    Run,
    assert_clear_error,
    assert_no_secret,
    claim_left,
    cli,
    left_behind,
    od_args,
)

AREA_KILL = "interrupted create"
AREA_RACE = "concurrency"
pytestmark = pytest.mark.xdist_group("reliability-lease")
mark = pytest.mark.reliability
LATER = datetime.now(timezone.utc) + timedelta(days=30)
"""A moment after every lease these tests make (the longest is 50 minutes)."""


def _lease_module() -> Any:
    return load_lambda_module("lease")


def _sweep(env: AnnexEnv) -> list[Any]:
    results: list[Any] = _lease_module().sweep(
        env.settings.config_bucket,
        s3=env.clients.s3,
        ec2=env.clients.ec2,
        scheduler=env.clients.scheduler,
        now=LATER,
    )
    return results


REPO = Path(__file__).resolve().parents[2]


def _killed_at(env: AnnexEnv, name: str, step: str, state: str, log: Path) -> int:
    """Run a create of `name` as its own process, SIGKILLed at the progress event step/state.

    The process kills itself inside the progress callback (tests/reliability/kill_at.py): what
    it leaves is exactly what the steps before that instant made, on every run.
    """
    argv = [sys.executable, "-m", "tests.reliability.kill_at", step, state]
    with log.open("wb") as out:
        done = subprocess.run(
            [*argv, *od_args(env, name), *env.cli_args()],
            stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ), cwd=REPO, timeout=120,
        )  # fmt: skip
    assert f"{step}: {state}" in log.read_text(), log.read_text()
    return done.returncode


def _claim_killed(observed: Row, code: int, where: str) -> None:
    observed.equal(f"SIGKILL {where} (exit {{}})", code, -signal.SIGKILL)


@mark(AREA_KILL, "SIGKILL right after the connectivity check (its Lambda Invoke answered)")
def test_kill_after_connectivity_leaves_nothing(
    env: AnnexEnv, observed: Row, tmp_path: Path
) -> None:
    before = env.leftovers()
    env.local.clear_calls()
    code = _killed_at(env, "kill-conn", "connectivity", "done", tmp_path / "log")
    left = left_behind(env, before)
    _claim_killed(observed, code, "after the connectivity step")
    invokes = len(env.local.calls("lambda", "Invoke"))
    observed.check(f"{invokes} Lambda Invoke answered before it", invokes >= 1)
    claim_left(observed, left)
    assert_no_secret((tmp_path / "log").read_text())


@mark(AREA_KILL, "SIGKILL right after the tarball upload; cleaned by `off`")
def test_kill_after_tarball_then_off_cleans(env: AnnexEnv, observed: Row, tmp_path: Path) -> None:
    name = "kill-tar"
    before = env.leftovers()
    code = _killed_at(env, name, "tarball", "done", tmp_path / "log")
    after_kill = left_behind(env, before)
    off = cli(env, "off", "-annex-name", name)
    left = left_behind(env, before)
    _claim_killed(observed, code, "after the tarball step")
    claim_left(observed, after_kill, objects=[contract.config_key(name)])
    observed.check(
        f"only {', '.join(after_kill['objects'])}: no instance, so nothing runs up a bill",
        after_kill["instances"] == [] and after_kill["fleets"] == [],
    )
    observed.equal("`off` exit {}", off.code, 0)
    claim_left(observed, left)
    assert_no_secret((tmp_path / "log").read_text())


@mark(AREA_KILL, "SIGKILL right after the lease step (before the launch); cleaned by the lease")
def test_kill_after_lease_then_lease_function_cleans(
    env: AnnexEnv, observed: Row, tmp_path: Path
) -> None:
    name = "kill-lease"
    before = env.leftovers()
    code = _killed_at(env, name, "lease", "done", tmp_path / "log")
    after_kill = left_behind(env, before)
    record = lease.read_lease_record(env.clients.s3, env.settings.config_bucket, name)
    # What the one-time schedule does at the expiry: run the lease function with the record.
    ended = _lease_module().end_lease(
        record, s3=env.clients.s3, ec2=env.clients.ec2, scheduler=env.clients.scheduler, now=LATER
    )
    left = left_behind(env, before)
    _claim_killed(observed, code, "after the lease step")
    claim_left(
        observed,
        after_kill,
        objects=[contract.config_key(name), contract.lease_key(name)],
        schedules=[contract.schedule_name(name)],
    )
    observed.equal(
        "at the expiry the lease function deleted {} objects and the schedule",
        len(ended.deleted_objects),
        2,
    )
    observed.equal("with {} errors", len(ended.errors), 0)
    claim_left(observed, left)
    assert_no_secret((tmp_path / "log").read_text())


@mark(AREA_KILL, "SIGKILL once the instances exist; cleaned by the periodic sweep")
def test_kill_after_launch_then_sweep_cleans(env: AnnexEnv, observed: Row, tmp_path: Path) -> None:
    name = "kill-launch"
    before = env.leftovers()
    code = _killed_at(env, name, "launch", "done", tmp_path / "log")
    after_kill = left_behind(env, before)
    # Belt and braces: the schedule may be gone (deleted by hand, or failed to fire).
    annex.delete_schedule(env.clients.scheduler, name)
    results = [r for r in _sweep(env) if r.annex_name == name]
    left = left_behind(env, before)
    _claim_killed(observed, code, "after the launch step")
    observed.equal("{} instance running", len(after_kill["instances"]), 1)
    claim_left(
        observed,
        after_kill,
        instances=after_kill["instances"],
        objects=[contract.config_key(name), contract.lease_key(name)],
        schedules=[contract.schedule_name(name)],
    )
    terminated = results[0].terminated_instances if results else []
    observed.check(
        f"with the schedule also gone, the sweep terminated {len(terminated)} instance(s)",
        terminated == after_kill["instances"],
        (terminated, after_kill),
    )
    claim_left(observed, left)
    assert_no_secret((tmp_path / "log").read_text())


@mark(AREA_KILL, "rerun of a create that was killed after its lease was recorded")
def test_rerun_after_kill_is_refused_and_points_at_off(
    env: AnnexEnv, observed: Row, tmp_path: Path
) -> None:
    name = "kill-rerun"
    before = env.leftovers()
    code = _killed_at(env, name, "lease", "done", tmp_path / "log")
    rerun = cli(env, *od_args(env, name))
    off = cli(env, "off", "-annex-name", name)
    left = left_behind(env, before)
    _claim_killed(observed, code, "after the lease step")
    observed.equal("rerun exit {}", rerun.code, InvalidInput.exit_code)
    observed.holds(
        rerun.first_line,
        lambda: assert_clear_error(
            rerun, InvalidInput.exit_code, "already exists", f"off -annex-name {name}"
        ),
    )
    observed.equal("`off` exit {}", off.code, 0)
    claim_left(observed, left)


# --- Concurrency ----------------------------------------------------------------------------------


def _race(env: AnnexEnv, name: str) -> list[Run]:
    """Two creates of `name` in threads: both pass validation before either goes on, and the
    second uploads its tarball only after the first has (the interleaving that hurts; moto's
    conditional writes are not atomic, so a truly simultaneous upload is left to S3)."""
    validated = threading.Barrier(2, timeout=30)
    first_uploaded = threading.Event()

    def progress_of(i: int) -> Callable[[str, str], None]:
        def progress(step: str, state: str) -> None:
            if (step, state) == ("validate", "done"):
                validated.wait()
            if i == 0 and (step, state) == ("tarball", "done"):
                first_uploaded.set()
            if i == 1 and (step, state) == ("tarball", "start"):
                first_uploaded.wait(timeout=30)

        return progress

    runs: list[Optional[Run]] = [None, None]

    def create(i: int) -> None:
        try:
            runs[i] = cli(env, *od_args(env, name), progress=progress_of(i))
        finally:
            first_uploaded.set()  # never leave the other thread waiting

    threads = [threading.Thread(target=create, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None for r in runs)
    return [r for r in runs if r is not None]


@mark(AREA_RACE, "two creates of the same name at once (both past validation)")
def test_concurrent_creates_make_one_annex(env: AnnexEnv, observed: Any) -> None:
    name = "race"
    before = env.leftovers()
    runs = _race(env, name)
    made = left_behind(env, before)
    codes = sorted(r.code for r in runs)
    loser = next((r for r in runs if r.code != 0), None)
    off = cli(env, "off", "-annex-name", name)
    left = left_behind(env, before)
    observed.equal("exit codes {}", codes, [0, InvalidInput.exit_code])
    assert loser is not None
    observed.holds(
        f"loser: {loser.first_line}",
        lambda: assert_clear_error(
            loser, InvalidInput.exit_code, name, "already exists", "off -annex-name"
        ),
    )
    observed.equal("after both: {} instance", len(made["instances"]), 1)
    observed.equal(
        "objects {}",
        sorted(made["objects"]),
        sorted([contract.config_key(name), contract.lease_key(name)]),
    )
    observed.equal("schedules {}", made["schedules"], [contract.schedule_name(name)])
    observed.equal("`off` exit {}", off.code, 0)
    claim_left(observed, left)


@mark(AREA_RACE, "two `off` of the same Spot Fleet annex at once")
def test_concurrent_offs_both_succeed(env: AnnexEnv, observed: Any) -> None:
    name = "double-off"
    before = env.leftovers()
    created = cli(
        env, "-annex-name", name, "-slots", "2", "-aws-ami-id", env.ami_id,
        "-aws-spot-instance-types", "m5.large",
    )  # fmt: skip
    assert created.code == 0, created.err
    barrier = threading.Barrier(2, timeout=30)
    runs: list[Optional[Run]] = [None, None]

    def off(i: int) -> None:
        barrier.wait()
        runs[i] = cli(env, "off", "-annex-name", name)

    threads = [threading.Thread(target=off, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    left = left_behind(env, before)
    codes = [r.code if r else None for r in runs]
    observed.check(f"exit codes {codes}", codes == [0, 0], [r.err for r in runs if r])
    claim_left(observed, left)


@mark(AREA_RACE, "lease function run twice for the same annex (schedule retry)")
def test_lease_function_twice_is_idempotent(env: AnnexEnv, observed: Any) -> None:
    name = "twice"
    before = env.leftovers()
    assert cli(env, *od_args(env, name)).code == 0
    record = lease.read_lease_record(env.clients.s3, env.settings.config_bucket, name)
    assert record is not None
    module = _lease_module()
    args = {"s3": env.clients.s3, "ec2": env.clients.ec2, "scheduler": env.clients.scheduler}
    first = module.end_lease(record, now=LATER, **args)
    second = module.end_lease(record, now=LATER, **args)
    left = left_behind(env, before)
    observed.equal("first run: {} terminated", len(first.terminated_instances), 1)
    observed.equal(
        "{} objects and the schedule deleted", (len(first.deleted_objects), not first.errors),
        (2, True),
    )  # fmt: skip
    observed.equal("second run changed: {}", second.changed, False)
    observed.equal("errors: {}", len(second.errors), 0)
    claim_left(observed, left)


@mark(AREA_RACE, "lease function and sweep run at the same moment for the same annex")
def test_lease_function_and_sweep_concurrently(env: AnnexEnv, observed: Any) -> None:
    name = "together"
    before = env.leftovers()
    assert cli(env, *od_args(env, name)).code == 0
    record = lease.read_lease_record(env.clients.s3, env.settings.config_bucket, name)
    assert record is not None
    module = _lease_module()
    barrier = threading.Barrier(2, timeout=30)
    outcomes: dict[str, Any] = {}

    def run(kind: str) -> None:
        barrier.wait()
        try:
            if kind == "lease":
                outcomes[kind] = [
                    module.end_lease(
                        record,
                        s3=env.clients.s3,
                        ec2=env.clients.ec2,
                        scheduler=env.clients.scheduler,
                        now=LATER,
                    )
                ]
            else:
                outcomes[kind] = _sweep(env)
        except Exception as exc:  # recorded and asserted below
            outcomes[kind] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in ("lease", "sweep")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    left = left_behind(env, before)
    failures = {k: v for k, v in outcomes.items() if isinstance(v, Exception)}
    errors = [e for v in outcomes.values() if isinstance(v, list) for r in v for e in r.errors]
    observed.check(f"exceptions: {len(failures)}", not failures, failures)
    observed.check(f"error entries: {len(errors)}", not errors, errors)
    claim_left(observed, left)


@mark(AREA_RACE, "forged lease event (annex name `../victim`) to the lease function")
def test_forged_lease_event_is_refused(env: AnnexEnv, observed: Any) -> None:
    before = env.leftovers()
    assert cli(env, *od_args(env, "victim")).code == 0
    made = left_behind(env, before)
    event = {
        "annex_name": "../victim",
        "bucket": env.settings.config_bucket,
        "expires_at": "2000-01-01T00:00:00Z",
        "client_token": "x",
        "version": contract.LEASE_RECORD_VERSION,
    }
    with pytest.raises(ValueError) as refused:
        _lease_module().handler(event)
    still = left_behind(env, before)
    off = cli(env, "off", "-annex-name", "victim")
    observed.check(
        f"handler raised {type(refused.value).__name__}", isinstance(refused.value, ValueError)
    )
    observed.check("annex `victim` untouched (instance, objects, schedule)", still == made)
    assert off.code == 0
