"""SIGINT, SIGTERM and SIGHUP: a create rolls back for each, a second signal during the rollback
is acknowledged and does not stop it, a third stops it and says exactly what is left, and a
signal after the create has finished does not turn its success into an error. Messages name the
interrupted verb. The signals are sent at named steps (tests/reliability/signal_at.py).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from condor_annex import contract
from condor_annex.cli.main import CliContext, main
from tests.integration.annex_env import AnnexEnv
from tests.reliability.conftest import (
    Run,
    assert_no_secret,
    claim_left,
    claim_refused,
    cli,
    left_behind,
    od_args,
)

AREA = "signals"
pytestmark = pytest.mark.xdist_group("reliability-signals")
mark = pytest.mark.reliability
REPO = Path(__file__).resolve().parents[2]


def _signalled(env: AnnexEnv, name: str, signal: str, step: str, state: str, extra: int = 0) -> Run:
    argv = [sys.executable, "-m", "tests.reliability.signal_at", signal, step, state, str(extra)]
    done = subprocess.run(
        [*argv, *od_args(env, name), *env.cli_args()],
        capture_output=True, text=True, env=dict(os.environ), cwd=REPO, timeout=180,
    )  # fmt: skip
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.mark.parametrize(
    "signal, step",
    [
        pytest.param(
            "SIGTERM", "lease", marks=mark(AREA, "SIGTERM during create (after the lease step)"),
            id="term",
        ),
        pytest.param(
            "SIGHUP", "tarball",
            marks=mark(AREA, "SIGHUP during create (terminal closed, after the upload)"),
            id="hup",
        ),
        pytest.param(
            "SIGINT", "launch", marks=mark(AREA, "SIGINT during create (after the launch)"),
            id="int",
        ),
    ],
)  # fmt: skip
def test_signal_during_create_rolls_back(
    env: AnnexEnv, observed: Any, signal: str, step: str
) -> None:
    name = f"sig-{signal[3:].lower()}"
    before = env.leftovers()
    run = _signalled(env, name, signal, step, "done")
    left = left_behind(env, before)
    claim_refused(
        observed, run, 130, f"create of annex {name} interrupted by {signal}", "rolled back"
    )
    claim_left(observed, left)
    assert_no_secret(run.out, run.err)


@mark(AREA, "a second SIGINT during the rollback: acknowledged, the rollback completes")
def test_second_signal_is_acknowledged_and_rollback_completes(env: AnnexEnv, observed: Any) -> None:
    name = "sig-twice"
    before = env.leftovers()
    run = _signalled(env, name, "SIGINT", "lease", "done", extra=1)
    left = left_behind(env, before)
    lines = run.err.strip().splitlines()
    observed.equal("exit {}", run.code, 130)
    observed.check(
        "the second signal is acknowledged: `still rolling back`",
        any("still rolling back" in line for line in lines),
        run.err,
    )
    observed.check(
        "last line: everything it had made was rolled back",
        lines[-1].endswith("everything it had made was rolled back"),
        run.err,
    )
    claim_left(observed, left)


@mark(AREA, "a third SIGTERM during the rollback: exit, naming exactly what was left; `off` cleans")
def test_third_signal_forces_exit_and_names_what_is_left(env: AnnexEnv, observed: Any) -> None:
    name = "sig-thrice"
    before = env.leftovers()
    run = _signalled(env, name, "SIGTERM", "lease", "done", extra=2)
    left = left_behind(env, before)
    off = cli(env, "off", "-annex-name", name)
    after_off = left_behind(env, before)
    observed.equal("exit {}", run.code, 130)
    named = "delete the lease schedule; delete the lease record; delete the configuration tarball"
    observed.check(
        f"message: left behind (not undone): {named}",
        f"left behind (not undone): {named}" in run.err,
        run.err,
    )
    claim_left(
        observed,
        left,
        objects=[contract.config_key(name), contract.lease_key(name)],
        schedules=[contract.schedule_name(name)],
    )
    observed.equal("off exit {}", off.code, 0)
    claim_left(observed, after_off)


@mark(AREA, "SIGINT after the create finished (while printing): exit 0, the annex stands")
def test_signal_after_create_finished_is_not_an_error(env: AnnexEnv, observed: Any) -> None:
    name = "sig-late"
    before = env.leftovers()
    run = _signalled(env, name, "SIGINT", "after", "-", extra=0)
    made = left_behind(env, before)
    off = cli(env, "off", "-annex-name", name)
    observed.equal("exit {}", run.code, 0)
    observed.check(
        "acknowledged: `after the work was done`", "after the work was done" in run.err, run.err
    )
    observed.equal("{} instance running", len(made["instances"]), 1)
    observed.equal("off exit {}", off.code, 0)
    claim_left(observed, left_behind(env, before))


@pytest.mark.parametrize(
    "argv, verb, next_step",
    [
        pytest.param(
            ["status"], "status", "nothing was changed",
            marks=mark(AREA, "^C during `status`: says status was interrupted, not a create"),
            id="status",
        ),
        pytest.param(
            ["off", "-annex-name", "nothing-here", "-json"], "off", "run the same `off` again",
            marks=mark(AREA, "^C during `off`: says off was interrupted and to run it again"),
            id="off",
        ),
    ],
)  # fmt: skip
def test_interrupt_message_names_the_verb(
    env: AnnexEnv, observed: Any, argv: list[str], verb: str, next_step: str
) -> None:
    def interrupt(*args: Any) -> Any:
        raise KeyboardInterrupt

    out, err = io.StringIO(), io.StringIO()
    ctx = CliContext(
        stdout=out,
        stderr=err,
        clients=lambda region, profile: env.clients,
        pool_view=interrupt,
        pool_shutdown=interrupt,
        pool_remaining=interrupt,
    )
    run = Run(main([*argv, *env.cli_args()], ctx), out.getvalue(), err.getvalue())
    claim_refused(observed, run, 130, f"{verb} interrupted by SIGINT", next_step)
    observed.check("no mention of a create", "create" not in run.err, run.err)
