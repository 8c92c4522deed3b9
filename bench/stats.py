"""Statistics, ratios and throttle arithmetic the benchmarks report (pure functions)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Summary:
    """Distribution of a sample (seconds or counts)."""

    n: int
    mean: float
    median: float
    p90: float
    p99: float
    min: float
    max: float
    stdev: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("percentile of an empty sample")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(ordered[low])
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def summarize(samples: Sequence[float]) -> Summary:
    if not samples:
        raise ValueError("summary of an empty sample")
    return Summary(
        n=len(samples),
        mean=statistics.fmean(samples),
        median=percentile(samples, 50),
        p90=percentile(samples, 90),
        p99=percentile(samples, 99),
        min=float(min(samples)),
        max=float(max(samples)),
        stdev=statistics.stdev(samples) if len(samples) > 1 else 0.0,
    )


def ratio(baseline: float, ours: float) -> float:
    """How many times the baseline's value ours is (baseline / ours): >1 means ours is smaller.

    Infinite when ours is zero and the baseline is not (e.g. IAM calls avoided entirely).
    """
    if ours == 0:
        return math.inf if baseline > 0 else 1.0
    return baseline / ours


def format_ratio(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}x"


def token_bucket_lower_bound(calls: int, capacity: float, refill_per_second: float) -> float:
    """Least time (s) in which `calls` requests can all be admitted by a token bucket.

    The bucket starts full (`capacity` tokens) and gains `refill_per_second` tokens per second
    (the EC2 and IAM throttling model): the first `capacity` calls pass at once, every further
    call waits for a refill token.
    """
    if calls < 0 or capacity < 0 or refill_per_second <= 0:
        raise ValueError("calls and capacity must be >= 0 and the refill rate > 0")
    return max(0.0, (calls - capacity) / refill_per_second)


@dataclass(frozen=True)
class Bucket:
    """A throttle on one service (and optionally one operation): capacity and refill rate."""

    service: str
    operation: str | None
    capacity: float
    refill_per_second: float

    def label(self) -> str:
        return f"{self.service}:{self.operation or '*'}"


def throttled_lower_bound(
    buckets: Sequence[Bucket], calls: Mapping[tuple[str, str], int]
) -> tuple[float, str]:
    """The binding lower bound over all buckets and the bucket that sets it.

    `calls` maps (service, operation) to how many calls the run made. A bucket without an
    operation admits every operation of its service.
    """
    best = 0.0
    binding = "none"
    for bucket in buckets:
        admitted = sum(
            n
            for (service, operation), n in calls.items()
            if service == bucket.service
            and (bucket.operation is None or operation == bucket.operation)
        )
        bound = token_bucket_lower_bound(admitted, bucket.capacity, bucket.refill_per_second)
        if bound > best:
            best, binding = bound, bucket.label()
    return best, binding
