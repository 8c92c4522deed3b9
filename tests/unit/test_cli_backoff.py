"""The shared back-off: jittered, capped, and it gives up at its deadline."""

from __future__ import annotations

import random

import pytest

from condor_annex.backoff import Backoff, DeadlineExceeded


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _backoff(clock: FakeClock, deadline: float = 10.0) -> Backoff:
    return Backoff(
        deadline_seconds=deadline,
        base=0.5,
        cap=4.0,
        sleep=clock.sleep,
        clock=lambda: clock.now,
        rng=random.Random(7),  # noqa: S311 (deterministic jitter for the test)
    )


def test_wait_for_returns_the_first_non_none_answer():
    clock = FakeClock()
    answers = iter([None, None, "ready"])
    assert _backoff(clock).wait_for(lambda: next(answers)) == "ready"
    assert len(clock.sleeps) == 2


def test_wait_for_gives_up_at_the_deadline_without_oversleeping():
    clock = FakeClock()
    with pytest.raises(DeadlineExceeded):
        _backoff(clock, deadline=10.0).wait_for(lambda: None, "the fleet tag")
    assert clock.now <= 10.0 + 1e-9


def test_delays_are_capped_and_jittered():
    delays = _backoff(FakeClock(), deadline=60.0).delays()
    assert max(delays) <= 4.0
    assert len(set(delays)) > 1


def test_retry_retries_only_retryable_errors():
    clock = FakeClock()
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("again")
        return "done"

    assert _backoff(clock).retry(flaky, lambda e: isinstance(e, ConnectionError)) == "done"
    with pytest.raises(ValueError):
        _backoff(clock).retry(lambda: (_ for _ in ()).throw(ValueError("no")), lambda e: False)


def test_retry_reraises_the_last_error_at_the_deadline():
    clock = FakeClock()

    def always() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        _backoff(clock, deadline=3.0).retry(always, lambda e: True)
    assert clock.now <= 3.0 + 1e-9
