"""Prices in the local AWS: the Price List Query API and Spot price history, from fixture prices.

moto 5.2.5 has no `pricing` service at all, and its `DescribeSpotPriceHistory` answers
`0.00001` for every pool with a 2006 timestamp. The local AWS answers both from the FIXTURE
prices below so the cost preview and the caps are tested against the real response shapes.

THE PRICES ARE FIXTURES, NOT QUOTES. On-demand figures are the us-east-1 Linux, shared-tenancy
list prices of a few instance types as published in 2024; other regions use them times a
documented factor; Spot prices are a fixed fraction of on-demand that differs per availability
zone so that a fleet's pools span a range. Instance types not listed have no price: the product
must then say "price unknown" and why.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

ON_DEMAND_USD_PER_HOUR_US_EAST_1: dict[str, str] = {
    "t3.micro": "0.0104",
    "t3.large": "0.0832",
    "m5.large": "0.096",
    "m5.xlarge": "0.192",
    "m5.2xlarge": "0.384",
    "m6i.large": "0.096",
    "c5.large": "0.085",
    "c5.xlarge": "0.17",
    "r5.large": "0.126",
}
"""Fixture on-demand prices (USD per hour, Linux, shared tenancy, no pre-installed software)."""

REGION_FACTOR: dict[str, float] = {
    "us-east-1": 1.0,
    "us-east-2": 1.0,
    "us-west-2": 1.0,
    "eu-west-1": 1.1,
    "eu-central-1": 1.15,
}
"""Fixture: regions priced relative to us-east-1; a region not listed has no prices at all."""

REGION_LOCATION: dict[str, str] = {
    "us-east-1": "US East (N. Virginia)",
    "us-east-2": "US East (Ohio)",
    "us-west-2": "US West (Oregon)",
    "eu-west-1": "EU (Ireland)",
    "eu-central-1": "EU (Frankfurt)",
}

SPOT_FRACTION_BY_ZONE_LETTER: dict[str, float] = {"a": 0.30, "b": 0.34, "c": 0.38, "d": 0.42}
"""Fixture: Spot price = on-demand times this fraction, per availability zone letter."""

SPOT_PRODUCT_DESCRIPTIONS = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")

# The term codes AWS uses for on-demand hourly prices ("Price List Query API", offer files:
# `JRTCKXETXF` is the on-demand offer term, `6YS6EN2CT7` its hourly rate code).
_ON_DEMAND_TERM = "JRTCKXETXF"
_RATE_CODE = "6YS6EN2CT7"
PUBLICATION_DATE = "2024-06-01T00:00:00Z"


def on_demand_price(region: str, instance_type: str) -> Optional[str]:
    """The fixture on-demand USD/hour of `instance_type` in `region`, or None."""
    base = ON_DEMAND_USD_PER_HOUR_US_EAST_1.get(instance_type)
    factor = REGION_FACTOR.get(region)
    if base is None or factor is None:
        return None
    return f"{float(base) * factor:.10f}"


def spot_price(region: str, availability_zone: str, instance_type: str) -> Optional[str]:
    """The fixture Spot USD/hour of one pool, or None."""
    base = on_demand_price(region, instance_type)
    fraction = SPOT_FRACTION_BY_ZONE_LETTER.get(availability_zone[-1:])
    if base is None or fraction is None or not availability_zone.startswith(region):
        return None
    return f"{float(base) * fraction:.6f}"


# --- The Price List Query API (service `pricing`, JSON 1.1, target AWSPriceListService) ---------


def _product(region: str, instance_type: str, price: str) -> dict[str, Any]:
    """One price list item in the `aws_v1` format ("GetProducts", PriceList element)."""
    sku = uuid.uuid5(uuid.NAMESPACE_URL, f"{region}/{instance_type}").hex[:16].upper()
    term = f"{sku}.{_ON_DEMAND_TERM}"
    return {
        "product": {
            "productFamily": "Compute Instance",
            "attributes": {
                "servicecode": "AmazonEC2",
                "servicename": "Amazon Elastic Compute Cloud",
                "instanceType": instance_type,
                "instanceFamily": "General purpose",
                "location": REGION_LOCATION[region],
                "locationType": "AWS Region",
                "regionCode": region,
                "operatingSystem": "Linux",
                "tenancy": "Shared",
                "preInstalledSw": "NA",
                "licenseModel": "No License required",
                "capacitystatus": "Used",
                "operation": "RunInstances",
                "usagetype": f"BoxUsage:{instance_type}",
            },
            "sku": sku,
        },
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": {
                term: {
                    "priceDimensions": {
                        f"{term}.{_RATE_CODE}": {
                            "unit": "Hrs",
                            "endRange": "Inf",
                            "description": f"${float(price):.4f} per On Demand Linux "
                            f"{instance_type} Instance Hour",
                            "appliesTo": [],
                            "rateCode": f"{term}.{_RATE_CODE}",
                            "beginRange": "0",
                            "pricePerUnit": {"USD": price},
                        }
                    },
                    "sku": sku,
                    "effectiveDate": PUBLICATION_DATE,
                    "offerTermCode": _ON_DEMAND_TERM,
                    "termAttributes": {},
                }
            }
        },
        "version": "20240601000000",
        "publicationDate": PUBLICATION_DATE,
    }


def _variants(region: str, instance_type: str, price: str) -> Iterable[dict[str, Any]]:
    """The product and the look-alikes a too-loose filter would also match.

    A real price list has, per instance type and region, Windows/RHEL/... products, dedicated
    tenancy, reserved-capacity rows with `capacitystatus` `UnusedCapacityReservation` and SQL
    pre-installs: a query without the right filters gets several prices back, not one.
    """
    yield _product(region, instance_type, price)
    for attribute, value, factor in (
        ("operatingSystem", "Windows", 1.9),
        ("tenancy", "Dedicated", 1.1),
        ("capacitystatus", "UnusedCapacityReservation", 1.0),
        ("preInstalledSw", "SQL Web", 1.4),
    ):
        other = _product(region, instance_type, f"{float(price) * factor:.10f}")
        other["product"]["attributes"][attribute] = value
        other["product"]["sku"] = (
            uuid.uuid5(uuid.NAMESPACE_URL, f"{region}/{instance_type}/{attribute}").hex[:16].upper()
        )
        yield other


def _matches(attributes: Mapping[str, str], product_family: str, flt: Mapping[str, Any]) -> bool:
    field = str(flt.get("Field", ""))
    kind = str(flt.get("Type", "TERM_MATCH"))
    value = str(flt.get("Value", ""))
    actual = product_family if field == "productFamily" else attributes.get(field)
    if actual is None:
        return False
    # "Filter" (Price List API reference): TERM_MATCH and EQUALS are exact (case-insensitive),
    # CONTAINS a substring, ANY_OF / NONE_OF a comma-separated list.
    if kind in ("TERM_MATCH", "EQUALS"):
        return actual.lower() == value.lower()
    if kind == "CONTAINS":
        return value.lower() in actual.lower()
    options = {v.strip().lower() for v in value.split(",")}
    if kind == "ANY_OF":
        return actual.lower() in options
    if kind == "NONE_OF":
        return actual.lower() not in options
    raise PricingError("InvalidParameterException", f"unknown filter type {kind}")


class PricingError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


MAX_RESULTS = 100


def get_products(body: Mapping[str, Any]) -> dict[str, Any]:
    """`GetProducts` for `ServiceCode=AmazonEC2` over the fixture prices (paginated)."""
    service = body.get("ServiceCode")
    if not service:
        raise PricingError("InvalidParameterException", "ServiceCode is required")
    fmt = body.get("FormatVersion", "aws_v1")
    if fmt != "aws_v1":
        raise PricingError("InvalidParameterException", f"unsupported FormatVersion {fmt}")
    filters = list(body.get("Filters") or [])
    items: list[dict[str, Any]] = []
    if service == "AmazonEC2":
        for region in REGION_FACTOR:
            for instance_type in ON_DEMAND_USD_PER_HOUR_US_EAST_1:
                price = on_demand_price(region, instance_type)
                assert price is not None
                for item in _variants(region, instance_type, price):
                    attrs = item["product"]["attributes"]
                    family = item["product"]["productFamily"]
                    if all(_matches(attrs, family, f) for f in filters):
                        items.append(item)
    elif service not in ("AmazonS3", "AWSLambda"):
        raise PricingError("NotFoundException", f"unknown service code {service}")
    size = int(body.get("MaxResults") or MAX_RESULTS)
    start = int(body.get("NextToken") or 0)
    page = items[start : start + size]
    answer: dict[str, Any] = {
        "FormatVersion": "aws_v1",
        # Each element is a JSON document as a STRING (the API's own shape).
        "PriceList": [json.dumps(item) for item in page],
    }
    if start + size < len(items):
        answer["NextToken"] = str(start + size)
    return answer


def pricing_response(operation: str, body: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """(status, headers, body) of one Price List Query API call."""
    request_id = str(uuid.uuid4())
    headers = [("x-amzn-RequestId", request_id), ("Content-Type", "application/x-amz-json-1.1")]
    try:
        args = json.loads(body or b"{}")
        if operation == "GetProducts":
            payload = get_products(args)
        elif operation == "DescribeServices":
            payload = {
                "FormatVersion": "aws_v1",
                "Services": [{"ServiceCode": "AmazonEC2", "AttributeNames": ["instanceType"]}],
            }
        else:
            raise PricingError("InvalidParameterException", f"{operation} is not emulated")
    except PricingError as error:
        headers.append(("x-amzn-ErrorType", error.code))
        doc = {"__type": error.code, "Message": error.message}
        return "400 Bad Request", headers, json.dumps(doc).encode()
    return "200 OK", headers, json.dumps(payload).encode()


# --- DescribeSpotPriceHistory -------------------------------------------------------------------


@dataclass(frozen=True)
class SpotPricePoint:
    availability_zone: str
    instance_type: str
    product_description: str
    spot_price: str
    timestamp: datetime


def spot_price_history(
    region: str,
    zones: Iterable[str],
    *,
    instance_types: Optional[Iterable[str]] = None,
    product_descriptions: Optional[Iterable[str]] = None,
    now: Optional[datetime] = None,
) -> list[SpotPricePoint]:
    """The current price of every fixture pool: one point per (zone, type, product), an hour old.

    "DescribeSpotPriceHistory": with a start time the answer also holds the last price change
    before it (the price in effect at that time), so asking for "now" yields the current prices.
    """
    moment = (now or datetime.now(timezone.utc)) - timedelta(hours=1)
    wanted_types = set(instance_types or ()) or set(ON_DEMAND_USD_PER_HOUR_US_EAST_1)
    products = set(product_descriptions or ()) or set(SPOT_PRODUCT_DESCRIPTIONS)
    out: list[SpotPricePoint] = []
    for zone in sorted(zones):
        for instance_type in sorted(wanted_types):
            price = spot_price(region, zone, instance_type)
            if price is None:
                continue
            for product in sorted(products & set(SPOT_PRODUCT_DESCRIPTIONS)):
                out.append(SpotPricePoint(zone, instance_type, product, price, moment))
    return out
