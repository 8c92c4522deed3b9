"""Helpers for the reliability matrix: drive the CLI, list what is left behind, hunt for secrets.

Every case asserts the same four things where they apply: the exit code, a one-line message that
names what to do, nothing left in the local AWS (instances, fleets, tarballs, lease records,
schedules, launch templates), and no secret (annex token, pool key, AWS secret key or session
token) in any output or log line.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from annex_sandbox.local_aws import FAKE_SECRET_ACCESS_KEY
from condor_annex.annex_settings import AnnexClients
from condor_annex.aws import make_client, make_session
from condor_annex.cli.main import CliContext, main
from tests.fixtures.reliability import Row
from tests.integration import annex_env as _annex_env
from tests.integration.annex_env import POOL_KEY, AnnexEnv

shared_annex_env = _annex_env.shared_annex_env

_TMP_PATH = re.compile(r"/tmp/pytest-of-[^/\s]+/pytest-\d+/(?:popen-gw\d+/)?[^/\s]+/")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+")


@dataclass
class Run:
    """One `condor_annex` run: exit code and what it wrote."""

    code: int
    out: str
    err: str

    @property
    def first_line(self) -> str:
        """The error line (`condor_annex: ...`), else the first line of output."""
        errors = [line for line in self.err.splitlines() if line.startswith("condor_annex: ")]
        lines = errors or (self.err or self.out).strip().splitlines()
        return lines[0] if lines else ""

    @property
    def text(self) -> str:
        return self.out + self.err


def cli(
    env: AnnexEnv,
    *argv: str,
    clients: Optional[AnnexClients] = None,
    defaults: bool = True,
    **hooks: Any,
) -> Run:
    """Run `main` in-process against `env` (its collector, key, config file and `-yes`)."""
    out, err = io.StringIO(), io.StringIO()
    used = clients or env.clients
    ctx = CliContext(
        stdout=out,
        stderr=err,
        clients=lambda region, profile: used,
        create_hooks=env.hooks(**{"progress": None, **hooks}),
        pool_view=lambda: set(),
        pool_shutdown=lambda name: 0,
    )
    code = main([*argv, *(env.cli_args() if defaults else [])], ctx)
    return Run(code, out.getvalue(), err.getvalue())


def od_args(env: AnnexEnv, name: str, *extra: str) -> list[str]:
    """The arguments of a one-instance on-demand create of `name`."""
    return ["-annex-name", name, "-count", "1", "-aws-on-demand-ami-id", env.ami_id, *extra]


def clients_with(max_attempts: int, **kw: Any) -> AnnexClients:
    """The product's own clients (adaptive retries), with fewer attempts to keep tests short."""
    session = make_session(**kw)
    return AnnexClients(
        ec2=make_client(session, "ec2", max_attempts=max_attempts),
        s3=make_client(session, "s3", max_attempts=max_attempts),
        scheduler=make_client(session, "scheduler", max_attempts=max_attempts),
        lambda_=make_client(session, "lambda", max_attempts=max_attempts),
        region=session.region_name or "",
    )


def secrets_in(texts: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """Which secrets appear in `texts`: JWTs, the pool key, the fake AWS secret key, `extra`."""
    found = []
    needles = [POOL_KEY.decode(), FAKE_SECRET_ACCESS_KEY, *[e for e in extra if e]]
    for text in texts:
        if _JWT.search(text):
            found.append("an IDTOKEN (JWT)")
        found.extend(f"secret {n[:4]}..." for n in needles if n in text)
    return found


def assert_no_secret(*texts: str, extra: Iterable[str] = ()) -> None:
    leaked = secrets_in(texts, extra)
    assert not leaked, f"secret in output: {leaked}"


def assert_clear_error(run: Run, code: int, *mentions: str) -> None:
    """Exit `code`; the last stderr line, and the only error line, names `mentions`.

    Progress lines (`  step: done`) and the create's cost preview (a `Cost preview (...)` block
    up to a blank line) may come before it; nothing else, and nothing after it.
    """
    assert run.code == code, (run.code, run.err)
    lines = run.err.rstrip().splitlines()
    errors = [line for line in lines if line.startswith("condor_annex: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], run.err
    in_preview = False
    for line in lines[:-1]:
        in_preview = line.startswith("Cost preview (") or (in_preview and line.strip() != "")
        assert in_preview or line.startswith("  ") or not line.strip(), (line, run.err)
    assert "Traceback" not in run.err
    for mention in mentions:
        assert mention in errors[0], (mention, errors[0])
    assert_no_secret(run.out, run.err)


def left_behind(env: AnnexEnv, before: dict[str, Any]) -> dict[str, list[str]]:
    """What is in the local AWS now that was not there in `before` (empty lists = nothing)."""
    now = env.leftovers()
    return {kind: sorted(set(now[kind]) - set(before[kind])) for kind in now}


def clean(text: str) -> str:
    """`text` without pytest's temporary directories (so the table does not churn)."""
    return _TMP_PATH.sub("<tmp>/", text)


def describe_left(left: dict[str, list[str]]) -> str:
    parts = [f"{len(v)} {k}" for k, v in left.items() if v]
    return "left: " + (", ".join(parts) if parts else "nothing")


@pytest.fixture(scope="module")
def env(shared_annex_env: AnnexEnv) -> AnnexEnv:
    """The deployed setup stack and a user config, shared by one module (see annex_env)."""
    return shared_annex_env


def claim_refused(observed: Row, run: Run, code: int, *mentions: str) -> None:
    """Claim the exit code and the one-line error (asserted by `assert_clear_error`)."""
    observed.equal("exit {}", run.code, code)
    observed.holds(clean(run.first_line), lambda: assert_clear_error(run, code, *mentions))


def claim_left(observed: Row, left: dict[str, list[str]], **expected: list[str]) -> None:
    """Claim what is left behind: exactly `expected` (kind -> names), nothing when empty."""
    wanted = {kind: sorted(expected.get(kind, [])) for kind in left}
    observed.check(describe_left(left), left == wanted, f"expected {wanted}, found {left}")


def check_refused(
    env: AnnexEnv, observed: Row, argv: list[str], code: int, *mentions: str, **kw: Any
) -> Run:
    """Run a create/verb that must fail: clear one-line error, exit `code`, nothing left."""
    before = env.leftovers()
    run = cli(env, *argv, **kw)
    left = left_behind(env, before)
    claim_refused(observed, run, code, *mentions)
    claim_left(observed, left)
    return run


NOTES = Path(__file__).with_name("NOTES.md")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """After the matrix plugin wrote the table: append how the faults are made (NOTES.md)."""
    target = session.config.getoption("--reliability-doc", default=None)
    if not target or hasattr(session.config, "workerinput") or not Path(target).exists():
        return
    text = Path(target).read_text()
    if NOTES.read_text() not in text:
        Path(target).write_text(text + NOTES.read_text())
