"""`off` drains before it terminates: the shutdown request first, then the wait for the annex's
daemons to leave the pool (or the drain timeout), with the lease moved to the drain deadline as
the safety net. AWS is the local AWS; the pool is a scripted collector view (real daemons:
tests/pool/), and time is a clock the test advances, so nothing here waits."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from typing import Any

from condor_annex import lease
from condor_annex.cli.main import CliContext, main
from condor_annex.create import create_annex
from condor_annex.off import DEFAULT_DRAIN_TIMEOUT_SECONDS, DRAIN_POLL_SECONDS, DrainClock
from tests.integration import annex_env as _annex_env
from tests.integration.annex_env import AnnexEnv

minimal_annex_env = _annex_env.minimal_annex_env


class FakeTime(DrainClock):
    def __init__(self) -> None:
        self.moment = datetime.now(timezone.utc)
        self.slept: list[float] = []
        super().__init__(now=lambda: self.moment, sleep=self._sleep)

    def _sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.moment += timedelta(seconds=seconds)


class ScriptedPool:
    """The collector's view: `counts` masters of the annex on successive queries (the last one
    repeats); records what each query saw of AWS and of the lease."""

    def __init__(self, env: AnnexEnv, annex: str, counts: list[int]) -> None:
        self.env, self.annex, self.counts = env, annex, counts
        self.shutdowns: list[str] = []
        self.seen: list[dict[str, Any]] = []

    def shutdown(self, name: str) -> int:
        self.shutdowns.append(name)
        return self.counts[0]

    def remaining(self, name: str) -> int:
        record = lease.read_lease_record(self.env.clients.s3, self.env.settings.config_bucket, name)
        self.seen.append(
            {
                "instances": len(self.env.live_instances(name)),
                "lease_ends": record.expiry if record else None,
            }
        )
        index = min(len(self.seen) - 1, len(self.counts) - 1)
        return self.counts[index]


def _create(env: AnnexEnv, name: str) -> Any:
    return create_annex(
        env.request(name, count=2, duration_seconds=4 * 3600),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(),
    )


def _off(env: AnnexEnv, pool: ScriptedPool, clock: FakeTime, *flags: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    ctx = CliContext(
        stdout=out,
        stderr=err,
        clients=lambda region, profile: env.clients,
        pool_shutdown=pool.shutdown,
        pool_remaining=pool.remaining,
        drain_clock=clock,
    )
    code = main(["off", "-annex-name", pool.annex, *flags, *env.cli_args()], ctx)
    return code, out.getvalue() + err.getvalue()


def test_off_waits_until_the_daemons_left_then_terminates(minimal_annex_env: AnnexEnv) -> None:
    env = minimal_annex_env
    made = _create(env, "drains")
    pool = ScriptedPool(env, "drains", [2, 2, 1, 0])
    clock = FakeTime()
    start = clock.moment
    code, text = _off(env, pool, clock)
    assert code == 0, text
    assert pool.shutdowns == ["drains"]
    # Instances kept running while their daemons drained; the 4th query found none left.
    assert [s["instances"] for s in pool.seen] == [2, 2, 2, 2]
    assert clock.slept == [DRAIN_POLL_SECONDS] * 3
    # The lease was moved to the drain deadline before the wait: the safety net if `off` dies.
    deadline = start + timedelta(seconds=DEFAULT_DRAIN_TIMEOUT_SECONDS)
    ends = pool.seen[0]["lease_ends"]
    assert ends is not None and abs((ends - deadline).total_seconds()) <= 2
    assert made.expires_at > ends
    assert "every daemon had left the pool" in text
    assert env.live_instances("drains") == []


def test_drain_timeout_terminates_daemons_that_do_not_leave(minimal_annex_env: AnnexEnv) -> None:
    env = minimal_annex_env
    _create(env, "stuck")
    pool = ScriptedPool(env, "stuck", [2])
    clock = FakeTime()
    code, text = _off(env, pool, clock, "-drain-timeout", "1")  # a bare number: minutes
    assert code == 0, text
    assert sum(clock.slept) == 60
    assert "the drain timed out" in text
    assert "2 daemon(s) still in the pool after the 60 s drain timeout" in text
    assert env.live_instances("stuck") == []


def test_drain_timeout_zero_terminates_now_and_fast_is_passed_on(
    minimal_annex_env: AnnexEnv,
) -> None:
    env = minimal_annex_env
    _create(env, "now")
    pool = ScriptedPool(env, "now", [2])
    clock = FakeTime()
    code, text = _off(env, pool, clock, "-drain-timeout", "0", "-fast")
    assert code == 0, text
    assert pool.shutdowns == ["now"] and pool.seen == [] and clock.slept == []
    assert env.live_instances("now") == []


def test_no_pool_to_watch_means_no_drain_and_says_so(minimal_annex_env: AnnexEnv) -> None:
    env = minimal_annex_env
    _create(env, "blind")

    def refused(name: str) -> int:
        raise RuntimeError("Failed to start command.")

    pool = ScriptedPool(env, "blind", [1])
    pool.shutdown = refused  # type: ignore[method-assign]
    clock = FakeTime()
    code, text = _off(env, pool, clock)
    assert code == 0, text
    assert "the pool was not asked to shut down" in text
    assert "not drained (the pool could not be asked or watched)" in text
    assert pool.seen == [] and env.live_instances("blind") == []
