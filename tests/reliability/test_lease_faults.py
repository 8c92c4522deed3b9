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
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import pytest

from condor_annex import annex, contract, lease
from condor_annex.errors import InvalidInput
from tests.fixtures.cdk import load_lambda_module
from tests.integration.annex_env import AnnexEnv
from tests.reliability.conftest import (
    Run,
    assert_clear_error,
    assert_no_secret,
    cli,
    describe_left,
    left_behind,
    od_args,
)

AREA_KILL = "interrupted create"
AREA_RACE = "concurrency"
pytestmark = pytest.mark.xdist_group("reliability-lease")
mark = pytest.mark.reliability
CLI = Path(sys.executable).parent / "condor_annex"
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


def _start_cli(env: AnnexEnv, name: str, log: Path) -> subprocess.Popen[bytes]:
    argv = [str(CLI), *od_args(env, name), *env.cli_args()]
    return subprocess.Popen(
        argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=dict(os.environ)
    )


def _wait_for(what: str, probe: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not probe():
        if proc.poll() is not None:
            raise AssertionError(f"the CLI finished (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened")
        time.sleep(0.01)


def _has_object(env: AnnexEnv, key: str) -> Callable[[], bool]:
    return lambda: key in env.objects()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


@mark(AREA_KILL, "SIGKILL during the connectivity check (Lambda Invoke seen)")
def test_kill_during_connectivity_leaves_nothing(
    env: AnnexEnv, observed: Any, tmp_path: Path
) -> None:
    before = env.leftovers()
    env.local.clear_calls()
    proc = _start_cli(env, "kill-conn", tmp_path / "log")
    _wait_for("the Lambda Invoke", lambda: bool(env.local.calls("lambda", "Invoke")), proc)
    _kill(proc)
    time.sleep(0.5)  # anything the dead process had in flight has landed by now
    left = left_behind(env, before)
    observed(f"killed after Invoke; {describe_left(left)}")
    assert not any(left.values()), left
    assert_no_secret((tmp_path / "log").read_text())


@mark(AREA_KILL, "SIGKILL right after the tarball upload; cleaned by `off`")
def test_kill_after_tarball_then_off_cleans(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    name = "kill-tar"
    before = env.leftovers()
    proc = _start_cli(env, name, tmp_path / "log")
    _wait_for("the tarball upload", _has_object(env, contract.config_key(name)), proc)
    _kill(proc)
    time.sleep(0.5)
    after_kill = left_behind(env, before)
    off = cli(env, "off", "-annex-name", name)
    left = left_behind(env, before)
    observed(
        f"killed after tarball; {describe_left(after_kill)} "
        f"({', '.join(after_kill['objects'])}); no instance, so nothing runs up a bill; the "
        f"bucket's 8-day lifecycle rule also expires the tarball; `off` exit {off.code}, "
        f"{describe_left(left)}"
    )
    assert after_kill["instances"] == [] and after_kill["fleets"] == []
    assert contract.config_key(name) in after_kill["objects"]
    assert_no_secret((tmp_path / "log").read_text())
    assert off.code == 0, off.err
    assert not any(left.values()), left


@mark(AREA_KILL, "SIGKILL while the launch is throttled (lease exists); cleaned by the lease")
def test_kill_after_lease_then_lease_function_cleans(
    env: AnnexEnv, observed: Any, tmp_path: Path
) -> None:
    name = "kill-lease"
    before = env.leftovers()
    env.local.throttle("ec2", "RunInstances", capacity=0, refill_per_second=0)
    try:
        proc = _start_cli(env, name, tmp_path / "log")
        _wait_for(
            "the lease schedule",
            lambda: contract.schedule_name(name) in env.schedules(),
            proc,
        )
        _wait_for(
            "a RunInstances attempt", lambda: bool(env.local.calls("ec2", "RunInstances")), proc
        )
        _kill(proc)
    finally:
        env.local.clear_throttles()
    time.sleep(0.5)
    after_kill = left_behind(env, before)
    record = lease.read_lease_record(env.clients.s3, env.settings.config_bucket, name)
    assert record is not None
    # What the one-time schedule does at the expiry: run the lease function with the record.
    ended = _lease_module().end_lease(
        record, s3=env.clients.s3, ec2=env.clients.ec2, scheduler=env.clients.scheduler, now=LATER
    )
    left = left_behind(env, before)
    observed(
        f"killed during launch retries; {describe_left(after_kill)}; at the expiry the lease "
        f"function deleted {len(ended.deleted_objects)} objects and the schedule; "
        f"{describe_left(left)}"
    )
    assert after_kill["instances"] == []
    assert after_kill["schedules"] == [contract.schedule_name(name)]
    assert ended.errors == []
    assert_no_secret((tmp_path / "log").read_text())
    assert not any(left.values()), left


@mark(AREA_KILL, "SIGKILL once the instances exist; cleaned by the periodic sweep")
def test_kill_after_launch_then_sweep_cleans(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    name = "kill-launch"
    before = env.leftovers()
    proc = _start_cli(env, name, tmp_path / "log")
    _wait_for("the instances", lambda: bool(env.live_instances(name)), proc)
    _kill(proc)
    time.sleep(0.5)
    after_kill = left_behind(env, before)
    # Belt and braces: the schedule may be gone (deleted by hand, or failed to fire).
    annex.delete_schedule(env.clients.scheduler, name)
    results = [r for r in _sweep(env) if r.annex_name == name]
    left = left_behind(env, before)
    observed(
        f"killed after launch; {describe_left(after_kill)}; with the schedule also gone, "
        f"the sweep terminated {len(results[0].terminated_instances) if results else 0} "
        f"instance(s); {describe_left(left)}"
    )
    assert len(after_kill["instances"]) == 1
    assert results and results[0].terminated_instances == after_kill["instances"]
    assert_no_secret((tmp_path / "log").read_text())
    assert not any(left.values()), left


@mark(AREA_KILL, "rerun of a create that was killed after its lease was recorded")
def test_rerun_after_kill_is_refused_and_points_at_off(
    env: AnnexEnv, observed: Any, tmp_path: Path
) -> None:
    name = "kill-rerun"
    before = env.leftovers()
    env.local.throttle("ec2", "RunInstances", capacity=0, refill_per_second=0)
    try:
        proc = _start_cli(env, name, tmp_path / "log")
        _wait_for("the lease record", _has_object(env, contract.lease_key(name)), proc)
        _kill(proc)
    finally:
        env.local.clear_throttles()
    time.sleep(0.5)
    rerun = cli(env, *od_args(env, name))
    off = cli(env, "off", "-annex-name", name)
    left = left_behind(env, before)
    observed(
        f"rerun exit {rerun.code}: {rerun.first_line}; `off` exit {off.code}; {describe_left(left)}"
    )
    assert_clear_error(rerun, InvalidInput.exit_code, "already exists", f"off -annex-name {name}")
    assert off.code == 0 and not any(left.values()), (off.err, left)


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
    observed(
        f"exit codes {codes}; loser: {loser.first_line if loser else 'none'}; after both: "
        f"{len(made['instances'])} instance, objects {made['objects']}, schedules "
        f"{made['schedules']}"
    )
    off = cli(env, "off", "-annex-name", name)
    left = left_behind(env, before)
    assert codes[0] == 0 and codes[1] != 0
    assert loser is not None
    assert_clear_error(loser, InvalidInput.exit_code, name, "already exists", "off -annex-name")
    assert len(made["instances"]) == 1
    assert sorted(made["objects"]) == sorted([contract.config_key(name), contract.lease_key(name)])
    assert made["schedules"] == [contract.schedule_name(name)]
    assert off.code == 0 and not any(left.values()), left


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
    observed(f"exit codes {codes}; {describe_left(left)}")
    assert codes == [0, 0], [r.err for r in runs if r]
    assert not any(left.values()), left


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
    observed(
        f"first run: {len(first.terminated_instances)} terminated, "
        f"{len(first.deleted_objects)} objects and the schedule deleted; second run changed: "
        f"{second.changed}, errors: {len(second.errors)}; {describe_left(left)}"
    )
    assert first.changed and not first.errors
    assert not second.changed and not second.errors
    assert not any(left.values()), left


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
    observed(f"exceptions: {len(failures)}; error entries: {len(errors)}; {describe_left(left)}")
    assert not failures, failures
    assert not errors, errors
    assert not any(left.values()), left


@mark(AREA_RACE, "forged lease event (annex name `../x`, another bucket) to the lease function")
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
    observed(f"handler raised {type(refused.value).__name__}; victim untouched: {still == made}")
    assert still == made
    assert off.code == 0
