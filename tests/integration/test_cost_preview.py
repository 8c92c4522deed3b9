"""The cost preview against the local AWS's Price List Query API and Spot price history."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from botocore.config import Config

from annex_sandbox import pricing
from condor_annex import cost
from condor_annex.errors import InvalidInput

REGION = "us-east-1"


def _book(aws, tmp_path, **kw):
    values = {
        "region": REGION,
        "ec2": aws.client("ec2"),
        "pricing": aws.client("pricing", region_name="us-east-1"),
        "cache_dir": tmp_path / "cache",
    }
    values.update(kw)
    return cost.PriceBook(**values)


def test_on_demand_preview_is_instances_times_the_listed_price(aws, tmp_path):
    found = cost.preview(
        _book(aws, tmp_path),
        kind="on-demand",
        market="on-demand",
        pools=[cost.Pool("m5.large")],
        size=3,
        duration_seconds=2 * 3600,
    )

    listed = float(pricing.on_demand_price(REGION, "m5.large") or "nan")
    assert found.known
    assert found.pools[0].instances == 3
    assert found.pools[0].on_demand_usd_per_hour == pytest.approx(listed)
    assert found.usd_per_hour == pytest.approx(3 * listed, abs=1e-4)
    assert found.usd_for_lease == pytest.approx(6 * listed, abs=1e-4)


def test_spot_preview_spans_the_price_range_of_every_pool(aws, tmp_path):
    found = cost.preview(
        _book(aws, tmp_path),
        kind="spot-fleet",
        market="spot",
        pools=[cost.Pool("m5.large", 2), cost.Pool("c5.xlarge", 4)],
        size=4,
        duration_seconds=3600,
    )

    zones = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"]
    m5 = [float(p) for z in zones if (p := pricing.spot_price(REGION, z, "m5.large"))]
    c5 = [float(p) for z in zones if (p := pricing.spot_price(REGION, z, "c5.xlarge"))]
    by_type = {p.instance_type: p for p in found.pools}
    assert found.known
    assert by_type["m5.large"].instances == 2 and by_type["c5.xlarge"].instances == 1
    assert by_type["m5.large"].spot_usd_per_hour_min == pytest.approx(min(m5))
    assert by_type["m5.large"].spot_usd_per_hour_max == pytest.approx(max(m5))
    assert found.usd_per_hour_min == pytest.approx(min(2 * min(m5), min(c5)), abs=1e-4)
    assert found.usd_per_hour == pytest.approx(max(2 * max(m5), max(c5)), abs=1e-4)
    assert found.usd_per_hour_min < found.usd_per_hour


def test_preview_of_an_unlisted_type_says_the_price_is_unknown_and_why(aws, tmp_path):
    found = cost.preview(
        _book(aws, tmp_path),
        kind="on-demand",
        market="on-demand",
        pools=[cost.Pool("x2iedn.32xlarge")],
        size=1,
        duration_seconds=3600,
    )

    assert not found.known
    assert found.usd_per_hour is None
    assert "x2iedn.32xlarge" in found.unknown[0] and "price list" in found.unknown[0]


def test_preview_says_why_when_the_price_list_cannot_be_reached(aws, tmp_path):
    unreachable = aws.client(
        "pricing",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1),
    )

    found = cost.preview(
        _book(aws, tmp_path, pricing=unreachable),
        kind="on-demand",
        market="on-demand",
        pools=[cost.Pool("m5.large")],
        size=1,
        duration_seconds=3600,
    )

    assert not found.known
    assert "could not be asked" in found.unknown[0]


def test_prices_are_cached_per_region_for_a_day(aws, tmp_path):
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    first = _book(aws, tmp_path, now=lambda: now)
    args = {
        "kind": "spot-fleet",
        "market": "spot",
        "pools": [cost.Pool("m5.large")],
        "size": 2,
        "duration_seconds": 3600,
    }
    fresh = cost.preview(first, **args)
    aws.clear_calls()

    cached = cost.preview(_book(aws, tmp_path, now=lambda: now + timedelta(hours=23)), **args)

    assert (tmp_path / "cache" / f"prices-{REGION}.json").exists()
    assert not fresh.cached and cached.cached
    assert cached.usd_per_hour == fresh.usd_per_hour
    assert (
        aws.calls(service="pricing") == [] and aws.calls(operation="DescribeSpotPriceHistory") == []
    )

    stale = cost.preview(_book(aws, tmp_path, now=lambda: now + timedelta(hours=25)), **args)

    assert not stale.cached
    assert len(aws.calls(service="pricing", operation="GetProducts")) == 1
    assert len(aws.calls(operation="DescribeSpotPriceHistory")) == 1


def test_an_unknown_price_is_not_cached(aws, tmp_path):
    book = _book(aws, tmp_path)
    book.on_demand("x2iedn.32xlarge")
    aws.clear_calls()

    _book(aws, tmp_path).on_demand("x2iedn.32xlarge")

    assert len(aws.calls(service="pricing")) == 1


def test_cap_refuses_a_preview_above_it(aws, tmp_path):
    found = cost.preview(
        _book(aws, tmp_path),
        kind="on-demand",
        market="on-demand",
        pools=[cost.Pool("m5.large")],
        size=10,
        duration_seconds=3600,
        max_price_per_hour=0.5,
    )

    assert found.exceeds_cap
    with pytest.raises(InvalidInput, match="more than the cap"):
        cost.check_cap(found, aws_enforces_cap=True)


def test_cap_accepts_a_preview_below_it(aws, tmp_path):
    found = cost.preview(
        _book(aws, tmp_path),
        kind="on-demand",
        market="on-demand",
        pools=[cost.Pool("m5.large")],
        size=2,
        duration_seconds=3600,
        max_price_per_hour=0.5,
    )

    cost.check_cap(found, aws_enforces_cap=False)
    assert not found.exceeds_cap


def test_unknown_price_under_a_cap_is_refused_only_where_aws_cannot_enforce_it(aws, tmp_path):
    found = cost.preview(
        _book(aws, tmp_path),
        kind="on-demand",
        market="on-demand",
        pools=[cost.Pool("x2iedn.32xlarge")],
        size=1,
        duration_seconds=3600,
        max_price_per_hour=5.0,
    )

    with pytest.raises(InvalidInput, match="cannot be checked"):
        cost.check_cap(found, aws_enforces_cap=False)
    cost.check_cap(found, aws_enforces_cap=True)


@pytest.mark.parametrize("text", ["0", "-1", "abc", "nan", "inf"])
def test_a_bad_cap_is_invalid_input(text):
    with pytest.raises(InvalidInput):
        cost.parse_price(text)


def test_a_cap_may_be_written_with_a_dollar_sign():
    assert cost.parse_price("$1.50") == 1.5
