"""Capacity and price fidelity: injectable capacity errors per pool, fixture Spot price history.

EC2 answers a launch it has no capacity for with `InsufficientInstanceCapacity` (HTTP 500, a
server error the SDKs retry) and an instance type an availability zone does not offer with
`Unsupported` (HTTP 400) ("Error codes for the Amazon EC2 API":
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html). moto never does;
tests tell the local AWS which pools (instance type, optionally availability zone) answer which
error with `CAPACITY_ERRORS.add(...)` (control endpoint `POST /_sandbox/capacity-errors`).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Optional

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.responses.instances import InstanceResponse
from moto.ec2.responses.spot_instances import SpotInstances
from werkzeug.exceptions import HTTPException

from annex_sandbox import pricing

CAPACITY_ERROR_CODES = ("InsufficientInstanceCapacity", "Unsupported")


@dataclass(frozen=True)
class CapacityRule:
    """One pool that answers a capacity error: a type, in one zone or (None) in every zone."""

    instance_type: str
    availability_zone: Optional[str] = None
    code: str = "InsufficientInstanceCapacity"

    def __post_init__(self) -> None:
        if self.code not in CAPACITY_ERROR_CODES:
            raise ValueError(f"capacity error code must be one of {CAPACITY_ERROR_CODES}")

    def matches(self, instance_type: str, availability_zone: Optional[str]) -> bool:
        return self.instance_type == instance_type and (
            self.availability_zone is None or self.availability_zone == availability_zone
        )


class CapacityErrors:
    """The injected capacity rules of this process (cleared by the local AWS's reset)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[CapacityRule] = []

    def add(self, rule: CapacityRule) -> None:
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(r) for r in self._rules]

    def answer(self, instance_type: str, availability_zone: Optional[str]) -> Optional[str]:
        """The error code a launch into this pool gets, or None when it has capacity."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(instance_type, availability_zone):
                    return rule.code
        return None


CAPACITY_ERRORS = CapacityErrors()


class InsufficientInstanceCapacity(HTTPException):
    """EC2's 500 server error, in the EC2 XML error shape (moto's own errors are all 400)."""

    code = 500

    def __init__(self, instance_type: str, availability_zone: Optional[str]) -> None:
        where = availability_zone or "the Availability Zone you requested"
        message = (
            f"We currently do not have sufficient {instance_type} capacity in the Availability "
            f"Zone you requested ({where}). Our system will be working on provisioning "
            f"additional capacity."
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>InsufficientInstanceCapacity</Code><Message>{message}</Message>"
            f"</Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
        )
        super().__init__(description=body)

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        return [("Content-Type", "text/xml")]


def capacity_error(code: str, instance_type: str, availability_zone: Optional[str]) -> Exception:
    """The exception moto's response layer turns into EC2's answer for `code`."""
    if code == "InsufficientInstanceCapacity":
        return InsufficientInstanceCapacity(instance_type, availability_zone)
    return EC2ClientError(
        "Unsupported",
        f"Your requested instance type ({instance_type}) is not supported in your requested "
        f"Availability Zone ({availability_zone or 'unspecified'}).",
    )


def zone_of_subnet(backend: Any, subnet_id: Optional[str]) -> Optional[str]:
    if not subnet_id:
        return None
    try:
        return str(backend.get_subnet(subnet_id).availability_zone)
    except Exception:  # an unknown subnet: moto's own launch answers that error
        return None


def run_instances_answers_injected_capacity_errors() -> None:
    """RunInstances into an injected pool fails as EC2 does, launching nothing."""
    original: Callable[[InstanceResponse], ActionResult] = InstanceResponse.run_instances

    def run_instances(self: InstanceResponse) -> ActionResult:
        instance_type = self._get_param("InstanceType") or "m1.small"
        zone = zone_of_subnet(self.ec2_backend, self._get_param("SubnetId")) or self._get_param(
            "Placement.AvailabilityZone"
        )
        code = CAPACITY_ERRORS.answer(instance_type, zone)
        if code is not None:
            raise capacity_error(code, instance_type, zone)
        return original(self)

    InstanceResponse.run_instances = run_instances  # type: ignore[method-assign]


def describe_spot_price_history_fixture_prices() -> None:
    """DescribeSpotPriceHistory answers the fixture prices of `annex_sandbox.pricing`.

    AWS ("DescribeSpotPriceHistory",
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSpotPriceHistory.html)
    answers per pool (availability zone, instance type, product description) with real prices
    and timestamps, filters by `availability-zone`, `instance-type`, `product-description`
    (and the `InstanceTypes`, `ProductDescriptions`, `AvailabilityZone` parameters), and pages
    with `NextToken`. moto answers `0.00001` with a 2006 timestamp for every offering and drops
    every pool when any other filter (e.g. `product-description`) is given.
    """

    def describe_spot_price_history(self: SpotInstances) -> ActionResult:
        filters = self._filters_from_querystring()
        types = set(self._get_param("InstanceTypes", []) or [])
        types |= set(filters.get("instance-type", []))
        products = set(self._get_param("ProductDescriptions", []) or [])
        products |= set(filters.get("product-description", []))
        zones = [z.name for z in self.ec2_backend.describe_availability_zones()]
        wanted_zones = set(filters.get("availability-zone", []))
        if self._get_param("AvailabilityZone"):
            wanted_zones.add(self._get_param("AvailabilityZone"))
        if wanted_zones:
            zones = [z for z in zones if z in wanted_zones]
        points = pricing.spot_price_history(
            self.region,
            zones,
            instance_types=types or None,
            product_descriptions=products or None,
        )
        size = int(self._get_param("MaxResults") or 1000)
        start = int(self._get_param("NextToken") or 0)
        page = points[start : start + size]
        result: dict[str, Any] = {
            "SpotPriceHistory": [
                {
                    "AvailabilityZone": p.availability_zone,
                    "InstanceType": p.instance_type,
                    "ProductDescription": p.product_description,
                    "SpotPrice": p.spot_price,
                    "Timestamp": p.timestamp,
                }
                for p in page
            ]
        }
        if start + size < len(points):
            result["NextToken"] = str(start + size)
        return ActionResult(result)

    SpotInstances.describe_spot_price_history = describe_spot_price_history  # type: ignore[method-assign]
