"""One jittered exponential back-off with a deadline, shared by every wait in the CLI.

"Exponential Backoff And Jitter" (AWS Architecture Blog): full jitter, `sleep = uniform(0,
min(cap, base * 2**attempt))`, spreads retries of many clients best. Botocore's adaptive retry
mode already handles throttling of single calls; this helper is for waiting on a *state* (a
schedule to appear, instances to reach a state) where botocore has no waiter. Standard
library only: the boot agent waits for the Spot Fleet tag with it too (`equal_jitter`, so waits
still grow and a thousand instances do not poll twice a second each).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Optional, TypeVar

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """The condition did not hold before the deadline."""


@dataclass
class Backoff:
    """Full-jitter exponential delays, bounded by `cap`, until `deadline_seconds` have passed."""

    deadline_seconds: float
    base: float = 0.5
    cap: float = 20.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    equal_jitter: bool = False
    """"Equal jitter": each delay is at least half its ceiling (fewer polls, still spread)."""

    def delays(self) -> list[float]:
        """The delays this back-off would use, as if every wait took no time (for tests/docs)."""
        out: list[float] = []
        total = 0.0
        attempt = 0
        while total < self.deadline_seconds:
            delay = min(self._delay(attempt), self.deadline_seconds - total)
            out.append(delay)
            total += delay
            attempt += 1
        return out

    def schedule(self) -> Iterator[float]:
        """The delays between attempts, without end (for callers that keep their own clock)."""
        attempt = 0
        while True:
            yield self._delay(attempt)
            attempt += 1

    def _delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(attempt, 30)))
        return self.rng.uniform(ceiling / 2 if self.equal_jitter else 0, ceiling)

    def wait_for(self, probe: Callable[[], Optional[T]], what: str = "condition") -> T:
        """Call `probe` until it returns something other than None; raise at the deadline."""
        start = self.clock()
        attempt = 0
        while True:
            result = probe()
            if result is not None:
                return result
            remaining = self.deadline_seconds - (self.clock() - start)
            if remaining <= 0:
                raise DeadlineExceeded(f"{what} not reached within {self.deadline_seconds:g} s")
            self.sleep(min(self._delay(attempt), remaining))
            attempt += 1

    def retry(self, call: Callable[[], T], retryable: Callable[[BaseException], bool]) -> T:
        """Call `call` until it succeeds; re-raise a non-retryable error or the last one at the deadline."""
        start = self.clock()
        attempt = 0
        while True:
            try:
                return call()
            except Exception as exc:
                remaining = self.deadline_seconds - (self.clock() - start)
                if not retryable(exc) or remaining <= 0:
                    raise
                self.sleep(min(self._delay(attempt), remaining))
                attempt += 1
