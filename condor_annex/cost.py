"""What an annex will cost, before it starts, and what it has cost so far.

On-demand prices come from the AWS Price List Query API (`pricing:GetProducts`, service code
`AmazonEC2`) filtered to exactly one product per instance type: Linux, shared tenancy, no
pre-installed software, `capacitystatus=Used` (not a capacity-reservation row), the annex's
region (Price List Query API, "Filter" and the EC2 product attributes). Spot prices come from
`DescribeSpotPriceHistory` for `Linux/UNIX` in every availability zone of the region (asking from
"now" returns the price in effect now, per pool). Both are cached per region for a day under the
user's cache directory (`$XDG_CACHE_HOME/condor_annex`, default `~/.cache/condor_annex`).

A price that cannot be found is never guessed: the preview says which and why, and the caller
asks for explicit confirmation (or, with a cap, refuses where AWS cannot enforce the cap).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from botocore.exceptions import BotoCoreError, ClientError

from condor_annex.errors import InvalidInput

CACHE_LIFETIME = timedelta(days=1)
SPOT_PRODUCT_DESCRIPTION = "Linux/UNIX"
_CACHE_VERSION = 1

Now = Callable[[], datetime]


def default_cache_dir() -> Path:
    """The user's cache directory for condor_annex (XDG base directory spec)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "condor_annex"


def on_demand_filters(region: str, instance_type: str) -> list[dict[str, str]]:
    """GetProducts filters that leave exactly one EC2 product: Linux, shared, no extras."""
    return [
        {"Type": "TERM_MATCH", "Field": field_name, "Value": value}
        for field_name, value in (
            ("instanceType", instance_type),
            ("regionCode", region),
            ("operatingSystem", "Linux"),
            ("tenancy", "Shared"),
            ("preInstalledSw", "NA"),
            ("capacitystatus", "Used"),
        )
    ]


def _hourly_usd(price_item: str) -> set[str]:
    """The on-demand USD/hour figures of one PriceList element (a JSON document as a string)."""
    product = json.loads(price_item)
    out: set[str] = set()
    for term in product.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            usd = dimension.get("pricePerUnit", {}).get("USD")
            if usd is not None and dimension.get("unit", "Hrs") == "Hrs":
                out.add(str(usd))
    return out


@dataclass
class Price:
    """A price found (usd_per_hour) or not (reason says why)."""

    usd_per_hour: Optional[float] = None
    reason: str = ""

    @property
    def known(self) -> bool:
        return self.usd_per_hour is not None


class PriceBook:
    """Prices of one region, from AWS or the day-old cache."""

    def __init__(
        self,
        *,
        region: str,
        ec2: Any,
        pricing: Any,
        cache_dir: Optional[Path] = None,
        now: Optional[Now] = None,
    ) -> None:
        self.region = region
        self.ec2 = ec2
        self.pricing = pricing
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self.now: Now = now or (lambda: datetime.now(timezone.utc))
        self.aws_calls = 0
        """Price look-ups that went to AWS (the cache answered the rest)."""
        self._cache = self._load()

    # --- cache ------------------------------------------------------------------------------

    @property
    def cache_file(self) -> Path:
        return self.cache_dir / f"prices-{self.region}.json"

    def _load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"version": _CACHE_VERSION, "on_demand": {}, "spot": {}}
        if data.get("version") != _CACHE_VERSION:
            return {"version": _CACHE_VERSION, "on_demand": {}, "spot": {}}
        return data

    def _fresh(self, entry: Optional[dict[str, Any]]) -> bool:
        if not entry:
            return False
        try:
            stamp = datetime.fromisoformat(str(entry["at"]))
        except (KeyError, ValueError):
            return False
        return self.now() - stamp < CACHE_LIFETIME

    def _save(self) -> None:
        """Atomic replace; a cache that cannot be written only costs a look-up next time."""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".prices-", dir=self.cache_dir)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self._cache, handle, sort_keys=True)
            os.replace(tmp, self.cache_file)
        except OSError:
            pass

    # --- look-ups ---------------------------------------------------------------------------

    def on_demand(self, instance_type: str) -> Price:
        entry = self._cache["on_demand"].get(instance_type)
        if self._fresh(entry):
            return Price(float(entry["usd"]))
        if self.pricing is None:
            return Price(reason="no Price List Query API client")
        self.aws_calls += 1
        try:
            figures: set[str] = set()
            token: Optional[str] = None
            while True:
                args: dict[str, Any] = {
                    "ServiceCode": "AmazonEC2",
                    "FormatVersion": "aws_v1",
                    "Filters": on_demand_filters(self.region, instance_type),
                    "MaxResults": 100,
                }
                if token:
                    args["NextToken"] = token
                answer = self.pricing.get_products(**args)
                for item in answer.get("PriceList", []):
                    figures |= _hourly_usd(item)
                token = answer.get("NextToken")
                if not token:
                    break
        except (ClientError, BotoCoreError) as exc:
            return Price(reason=f"the Price List Query API could not be asked ({_why(exc)})")
        if not figures:
            return Price(
                reason=f"the AWS price list has no Linux on-demand price for {instance_type} "
                f"in {self.region}"
            )
        if len(figures) > 1:
            return Price(
                reason=f"the AWS price list answered {len(figures)} different prices for "
                f"{instance_type} in {self.region}"
            )
        usd = figures.pop()
        self._cache["on_demand"][instance_type] = {"usd": usd, "at": self.now().isoformat()}
        self._save()
        return Price(float(usd))

    def spot(self, instance_types: Sequence[str]) -> tuple[dict[str, dict[str, float]], str]:
        """Current Spot USD/hour per instance type and availability zone (absent: no price),
        and why the look-up failed (empty when it did not)."""
        wanted = sorted(set(instance_types))
        out: dict[str, dict[str, float]] = {}
        missing = []
        for itype in wanted:
            entry = self._cache["spot"].get(itype)
            if self._fresh(entry):
                out[itype] = {z: float(p) for z, p in entry["zones"].items()}
            else:
                missing.append(itype)
        if not missing:
            return out, ""
        self.aws_calls += 1
        found: dict[str, dict[str, str]] = {t: {} for t in missing}
        stamp = self.now()
        try:
            paginator = self.ec2.get_paginator("describe_spot_price_history")
            for page in paginator.paginate(
                InstanceTypes=missing,
                ProductDescriptions=[SPOT_PRODUCT_DESCRIPTION],
                StartTime=stamp,
                EndTime=stamp,
            ):
                for point in page.get("SpotPriceHistory", []):
                    zones = found.setdefault(str(point["InstanceType"]), {})
                    # The newest point per pool is the price in effect now.
                    zones.setdefault(str(point["AvailabilityZone"]), str(point["SpotPrice"]))
        except (ClientError, BotoCoreError) as exc:
            return out, f"DescribeSpotPriceHistory could not be asked ({_why(exc)})"
        for itype, zones in found.items():
            if zones:
                self._cache["spot"][itype] = {"zones": zones, "at": stamp.isoformat()}
                out[itype] = {z: float(p) for z, p in zones.items()}
        self._save()
        return out, ""


def _why(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


# --- The preview ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """One instance type the annex may launch, and how many slots one instance counts for."""

    instance_type: str
    weight: float = 1.0


@dataclass
class PoolCost:
    """What filling the annex from one pool would cost per hour."""

    instance_type: str
    instances: int
    on_demand_usd_per_hour: Optional[float]
    spot_usd_per_hour_min: Optional[float] = None
    spot_usd_per_hour_max: Optional[float] = None


@dataclass
class CostPreview:
    """The bill an annex is expected to run up; `usd_per_hour` is the upper bound."""

    kind: str
    region: str
    market: str
    """`on-demand` or `spot`."""
    duration_hours: float
    pools: list[PoolCost] = field(default_factory=list)
    usd_per_hour_min: Optional[float] = None
    usd_per_hour: Optional[float] = None
    usd_for_lease: Optional[float] = None
    max_price_per_hour: Optional[float] = None
    unknown: list[str] = field(default_factory=list)
    """Why a price could not be found (empty when every price is known)."""
    cached: bool = False
    """Every price came from the cache (no AWS call)."""

    @property
    def known(self) -> bool:
        return not self.unknown and self.usd_per_hour is not None

    @property
    def exceeds_cap(self) -> bool:
        return (
            self.max_price_per_hour is not None
            and self.usd_per_hour is not None
            and self.usd_per_hour > self.max_price_per_hour + 1e-9
        )


def _instances_for(slots: int, weight: float) -> int:
    return max(1, math.ceil(slots / weight)) if weight > 0 else slots


def preview(
    book: PriceBook,
    *,
    kind: str,
    market: str,
    pools: Sequence[Pool],
    size: int,
    duration_seconds: int,
    max_price_per_hour: Optional[float] = None,
) -> CostPreview:
    """The cost of `size` instances (on-demand: instances; fleets: weighted slots) from `pools`.

    Fleets may fill from any pool, so the hourly figure is a range over the pools; the upper end
    is what a cap is compared with.
    """
    calls_before = book.aws_calls
    hours = duration_seconds / 3600
    out = CostPreview(
        kind=kind,
        region=book.region,
        market=market,
        duration_hours=round(hours, 4),
        max_price_per_hour=max_price_per_hour,
    )
    spot_prices, spot_failure = (
        book.spot([p.instance_type for p in pools]) if market == "spot" else ({}, "")
    )
    totals: list[float] = []
    for pool in pools:
        count = _instances_for(size, pool.weight) if kind != "on-demand" else size
        on_demand = book.on_demand(pool.instance_type)
        cost = PoolCost(
            pool.instance_type,
            count,
            round(on_demand.usd_per_hour, 6)
            if on_demand.known and on_demand.usd_per_hour
            else None,
        )
        if market == "spot":
            zones = spot_prices.get(pool.instance_type, {})
            if zones:
                cost.spot_usd_per_hour_min = round(min(zones.values()), 6)
                cost.spot_usd_per_hour_max = round(max(zones.values()), 6)
                totals.extend(count * p for p in zones.values())
            else:
                out.unknown.append(
                    f"no Spot price for {pool.instance_type} in {book.region} "
                    f"({spot_failure or 'DescribeSpotPriceHistory answered none'})"
                )
        elif on_demand.known and on_demand.usd_per_hour is not None:
            totals.append(count * on_demand.usd_per_hour)
        else:
            out.unknown.append(f"{pool.instance_type}: {on_demand.reason}")
        out.pools.append(cost)
    if totals:
        out.usd_per_hour_min = round(min(totals), 4)
        out.usd_per_hour = round(max(totals), 4)
        out.usd_for_lease = round(out.usd_per_hour * hours, 4)
    out.cached = book.aws_calls == calls_before and not out.unknown
    return out


def check_cap(found: CostPreview, *, aws_enforces_cap: bool) -> None:
    """Refuse an annex whose preview exceeds the cap, or whose price is unknown under a cap
    that AWS itself cannot enforce (on-demand RunInstances has no price limit)."""
    cap = found.max_price_per_hour
    if cap is None:
        return
    if found.exceeds_cap:
        raise InvalidInput(
            f"the annex could cost up to ${found.usd_per_hour:.4f}/hour, more than the cap of "
            f"${cap:.4f}/hour (-max-price-per-hour / ANNEX_DEFAULT_MAX_PRICE_PER_HOUR); "
            "nothing was created",
            next_step="ask for fewer instances or slots, cheaper instance types, or raise the cap",
        )
    if not found.known and not aws_enforces_cap:
        raise InvalidInput(
            "the price of this annex is unknown ("
            + "; ".join(found.unknown)
            + f"), so the cap of ${cap:.4f}/hour cannot be checked; nothing was created",
            next_step="use instance types the AWS price list knows, or a fleet (-slots), whose "
            "cap AWS enforces",
        )


def parse_price(text: str, *, what: str = "-max-price-per-hour") -> float:
    """A USD amount such as `2`, `0.75` or `$1.50`; positive."""
    try:
        value = float(str(text).strip().lstrip("$"))
    except ValueError:
        raise InvalidInput(
            f"{what} {text!r} is not an amount of US dollars", next_step="write it as 1.50"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{what} must be a positive amount of US dollars, not {text!r}")
    return value


def format_aws_price(value: float) -> str:
    """A price as the fleet APIs take it (a decimal string, no exponent)."""
    return f"{value:.4f}".rstrip("0").rstrip(".") or "0"


# --- Cost so far ----------------------------------------------------------------------------------


def cost_so_far(
    book: PriceBook,
    instances: Iterable[tuple[str, str, Optional[str], Optional[datetime]]],
    now: datetime,
) -> tuple[Optional[float], list[str]]:
    """USD so far for (instance type, market, availability zone, launch time) rows.

    Running time times the current price: AWS bills per second for Linux, and the current price is
    what the preview promised. Returns None and why when a price is unknown.
    """
    rows = list(instances)
    spot_types = [t for t, market, _, _ in rows if market == "spot"]
    spot, _ = book.spot(spot_types) if spot_types else ({}, "")
    total = 0.0
    unknown: list[str] = []
    for itype, market, zone, launched in rows:
        if launched is None:
            continue
        hours = max(0.0, (now - launched).total_seconds() / 3600)
        if market == "spot":
            zones = spot.get(itype, {})
            price = zones.get(zone or "") or (max(zones.values()) if zones else None)
            if price is None:
                unknown.append(f"no Spot price for {itype}")
                continue
        else:
            found = book.on_demand(itype)
            if found.usd_per_hour is None:
                unknown.append(f"{itype}: {found.reason}")
                continue
            price = found.usd_per_hour
        total += hours * price
    return (None if unknown else round(total, 4)), sorted(set(unknown))
