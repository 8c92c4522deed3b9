"""The benchmark harness's arithmetic: statistics, ratios and throttle lower bounds."""

from __future__ import annotations

import math

import pytest

from bench.stats import (
    Bucket,
    format_ratio,
    percentile,
    ratio,
    summarize,
    throttled_lower_bound,
    token_bucket_lower_bound,
)


def test_percentile_interpolates_between_closest_ranks() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 0], 90) == pytest.approx(9.0)


def test_percentile_of_one_sample_is_that_sample() -> None:
    assert percentile([7.0], 99) == 7.0


def test_percentile_refuses_empty_samples() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_reports_median_tail_and_spread() -> None:
    summary = summarize([float(v) for v in range(1, 101)])
    assert summary.n == 100
    assert summary.median == 50.5
    assert summary.p99 == pytest.approx(99.01)
    assert (summary.min, summary.max) == (1.0, 100.0)
    assert summary.stdev > 0


def test_ratio_is_baseline_over_ours() -> None:
    assert ratio(9, 3) == 3.0
    assert ratio(3, 9) == pytest.approx(1 / 3)


def test_ratio_is_infinite_when_ours_needs_none() -> None:
    assert math.isinf(ratio(7, 0))
    assert ratio(0, 0) == 1.0
    assert format_ratio(ratio(7, 0)) == "inf"


def test_token_bucket_admits_its_capacity_at_once() -> None:
    assert token_bucket_lower_bound(20, capacity=20, refill_per_second=20) == 0.0


def test_token_bucket_lower_bound_for_a_thousand_iam_calls_at_20_per_second() -> None:
    # 20 pass at once, the other 980 wait for refill tokens at 20 per second.
    assert token_bucket_lower_bound(1000, capacity=20, refill_per_second=20) == pytest.approx(49.0)


def test_token_bucket_lower_bound_for_ec2_describe_bucket() -> None:
    # Non-mutating EC2 actions: bucket of 100, refilled at 20 per second.
    assert token_bucket_lower_bound(1000, capacity=100, refill_per_second=20) == pytest.approx(45.0)


def test_token_bucket_refuses_a_zero_refill_rate() -> None:
    with pytest.raises(ValueError):
        token_bucket_lower_bound(10, capacity=5, refill_per_second=0)


def test_binding_bucket_is_the_slowest_one() -> None:
    buckets = [
        Bucket("iam", None, capacity=20, refill_per_second=20),
        Bucket("ec2", "DescribeInstances", capacity=100, refill_per_second=20),
    ]
    calls = {
        ("iam", "GetRolePolicy"): 700,
        ("iam", "ListRolePolicies"): 300,
        ("ec2", "DescribeInstances"): 1000,
        ("ec2", "RunInstances"): 5000,
    }
    bound, binding = throttled_lower_bound(buckets, calls)
    assert bound == pytest.approx(49.0)  # all 1000 IAM calls share the one IAM bucket
    assert binding == "iam:*"


def test_operation_bucket_counts_only_its_operation() -> None:
    buckets = [Bucket("ec2", "DescribeInstances", capacity=100, refill_per_second=20)]
    bound, binding = throttled_lower_bound(buckets, {("ec2", "RunInstances"): 10_000})
    assert (bound, binding) == (0.0, "none")


def test_pool_wave_row_summarizes_joins_and_keeps_failed_waves_readable() -> None:
    from bench.bench_pool import Wave

    wave = Wave(instances=4, create_s=1.23456, boot_to_join_s=[4.0, 5.0, 6.0, 10.0],
                agent_s=[1.0, 1.0, 2.0, 2.0], create_to_all_visible_s=12.3456)  # fmt: skip
    row = wave.row()
    assert row["joined"] == 4
    assert row["boot_to_join"]["median"] == 5.5
    assert row["boot_to_join"]["p90"] == pytest.approx(8.8)
    assert row["agent"]["median"] == 1.5
    assert (row["create_s"], row["create_to_all_visible_s"]) == (1.235, 12.346)
    failed = Wave(instances=2, create_s=1.0, failures=["i-1: no slot"]).row()
    assert failed["joined"] == 0 and failed["boot_to_join"] is None and failed["agent"] is None
