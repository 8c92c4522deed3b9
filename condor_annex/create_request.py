"""What an admin asks `create` for, and every check of it that needs no AWS call.

`validate_request` runs before anything else (and before the CLI asks for confirmation): a bad
value is refused naming the flag and what to do, with nothing changed in AWS.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

from condor_annex import contract, inputs, spot
from condor_annex.collector import parse_collector
from condor_annex.errors import InvalidInput
from condor_annex.files import read_input_bytes

DEFAULT_INSTANCE_TYPE = "m5.large"
MAX_COUNT = 1000
"""A sanity cap on -count/-slots: a typo must not start ten thousand instances."""
MIN_LEASE_SECONDS = 60
MIN_IDLE_SECONDS = 60
MAX_USER_DATA_BYTES = 16 * 1024
"""EC2: user data is limited to 16 KB before base64 encoding."""
MAX_USER_TAGS = 40
"""EC2 allows 50 tags per resource; condor_annex adds three of its own and keeps headroom."""
RESERVED_TAG_PREFIXES = ("aws:", "htcondor:")
_METADATA_TAG_KEY = re.compile(r"^[A-Za-z0-9+\-=._:@,]+$")


@dataclass(frozen=True)
class CreateRequest:
    """Everything the admin asked for; `count` (on-demand) xor `slots` (Spot Fleet)."""

    annex_name: str
    collector: str
    count: Optional[int] = None
    slots: Optional[int] = None
    duration_seconds: int = contract.LEASE_DEFAULT_SECONDS
    idle_seconds: int = contract.IDLE_DEFAULT_SECONDS
    instance_type: str = DEFAULT_INSTANCE_TYPE
    ami_id: Optional[str] = None
    spot_instance_types: tuple[spot.InstanceTypeWeight, ...] = ()
    spot_fleet_config_file: Optional[Path] = None
    spot_allocation_strategy: str = spot.DEFAULT_ALLOCATION_STRATEGY
    spot_fleet_type: str = spot.DEFAULT_FLEET_TYPE
    key_name: Optional[str] = None
    subnet_ids: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    owner: str = ""
    """Recorded on the annex (tag, lease record, AnnexOwner): the owners, comma-separated."""
    start_owners: Optional[tuple[str, ...]] = None
    """Whose jobs may run: None = `owner`; () = anyone's (`-no-owner`)."""
    config_files: tuple[tuple[str, bytes], ...] = ()
    """`-config-dir` files, already read and checked (`tarball.read_config_dir`)."""
    spot_fleet_config_data: Optional[bytes] = None
    """A Spot Fleet config read from stdin (`-aws-spot-fleet-config-file -`)."""
    user_data: Optional[bytes] = None
    start_expression: Optional[str] = None
    token_file: Optional[Path] = None
    signing_key_file: Optional[Path] = None
    trust_domain: Optional[str] = None
    fallback_instance_types: tuple[str, ...] = ()
    """On-demand: further instance types tried, in order, when `instance_type` has no capacity."""
    max_price_per_hour: Optional[float] = None
    """USD/hour cap: refused before anything is created if the preview exceeds it; fleets
    carry it into AWS (`SpotMaxTotalPrice` / `MaxTotalPrice`)."""
    aws_fleet: bool = False
    """Launch through EC2 Fleet (`CreateFleet`): Spot with -slots, on-demand with -count."""
    ec2_fleet_type: Optional[str] = None
    """`instant` (one-shot) or `maintain` (refilled after interruptions); default: `maintain`
    for Spot, `instant` for on-demand."""
    on_demand_allocation_strategy: str = "lowest-price"
    """EC2 Fleet on-demand: `lowest-price`, or `prioritized` (the order of the types given)."""

    @property
    def on_demand_instance_types(self) -> tuple[str, ...]:
        return (self.instance_type, *self.fallback_instance_types)

    @property
    def market(self) -> str:
        """`on-demand` (-count) or `spot` (-slots)."""
        return "on-demand" if self.count is not None else "spot"

    @property
    def size(self) -> int:
        """Instances (-count) or weighted capacity (-slots)."""
        return int(self.count if self.count is not None else self.slots or 0)

    @property
    def fleet_type(self) -> str:
        """The EC2 Fleet request type this annex uses."""
        if self.ec2_fleet_type:
            return self.ec2_fleet_type
        return "instant" if self.market == "on-demand" else "maintain"

    @property
    def kind(self) -> str:
        if self.aws_fleet:
            return contract.FLEET_KIND_EC2_FLEET
        return (
            contract.FLEET_KIND_SPOT_FLEET
            if self.slots is not None
            else contract.FLEET_KIND_ON_DEMAND
        )


def _tag_list(pairs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in pairs]


def annex_tags(request: CreateRequest) -> list[dict[str, str]]:
    """The annex's own tags first, then the user's (validated not to collide)."""
    return _tag_list(
        [
            (contract.TAG_ANNEX_NAME, request.annex_name),
            (contract.TAG_ANNEX_OWNER, request.owner),
            (contract.TAG_MANAGED_BY, contract.MANAGED_BY_VALUE),
            *request.tags,
        ]
    )


def validate_request(request: CreateRequest) -> None:
    """Every check that needs no AWS call; raises InvalidInput naming the bad value."""
    try:
        contract.validate_annex_name(request.annex_name)
    except contract.InvalidAnnexName as exc:
        raise InvalidInput(str(exc), next_step="choose another -annex-name") from None
    if (request.count is None) == (request.slots is None):
        raise InvalidInput(
            "say how big the annex is with exactly one of -count (on-demand) or -slots (Spot Fleet)"
        )
    size = request.count if request.count is not None else request.slots
    what = "-count" if request.count is not None else "-slots"
    if size is None or not 1 <= size <= MAX_COUNT:
        raise InvalidInput(f"{what} must be between 1 and {MAX_COUNT}, not {size}")
    validate_duration(request.duration_seconds)
    if not MIN_IDLE_SECONDS <= request.idle_seconds <= contract.LEASE_MAX_SECONDS:
        raise InvalidInput(
            f"-idle must be between {MIN_IDLE_SECONDS} s and {contract.LEASE_MAX_SECONDS} s, "
            f"not {request.idle_seconds} s"
        )
    if request.user_data is not None and len(request.user_data) > MAX_USER_DATA_BYTES:
        raise InvalidInput(
            f"user data has {len(request.user_data)} bytes; EC2 accepts at most {MAX_USER_DATA_BYTES}"
        )
    if len(request.tags) > MAX_USER_TAGS:
        raise InvalidInput(f"{len(request.tags)} tags given; at most {MAX_USER_TAGS} are accepted")
    keys = [k for k, _ in request.tags]
    for key, value in request.tags:
        if not key or len(key) > 128 or len(value) > 256:
            raise InvalidInput(f"tag {key!r}: keys need 1-128 characters and values at most 256")
        if not _METADATA_TAG_KEY.fullmatch(key) or key in (".", ".."):
            # Instance metadata tags are enabled on every annex instance; EC2 then refuses tag
            # keys outside this alphabet (EC2 User Guide, "View tags for your EC2 instances
            # using instance metadata").
            raise InvalidInput(f"tag key {key!r} may only use letters, digits and + - = . , _ : @")
        if key.lower().startswith(RESERVED_TAG_PREFIXES):
            raise InvalidInput(
                f"tag key {key!r} is reserved (prefixes {', '.join(RESERVED_TAG_PREFIXES)})"
            )
    if len(set(keys)) != len(keys):
        raise InvalidInput("a tag key is given twice")
    for subnet in request.subnet_ids:
        if not subnet.startswith("subnet-"):
            raise InvalidInput(f"{subnet!r} is not a subnet ID (subnet-...)")
    if request.max_price_per_hour is not None and not request.max_price_per_hour > 0:
        raise InvalidInput(
            f"-max-price-per-hour must be a positive amount, not {request.max_price_per_hour}"
        )
    if len(set(request.on_demand_instance_types)) != len(request.on_demand_instance_types):
        raise InvalidInput("an -aws-on-demand-instance-type is given twice")
    if request.ami_id is not None and not request.ami_id.startswith("ami-"):
        raise InvalidInput(f"{request.ami_id!r} is not an AMI ID (ami-...)")
    if request.aws_fleet:
        if request.ec2_fleet_type not in (None, *EC2_FLEET_TYPES):
            raise InvalidInput(
                f"EC2 Fleet type {request.ec2_fleet_type!r} is not one of "
                + ", ".join(EC2_FLEET_TYPES)
            )
        if request.on_demand_allocation_strategy not in ON_DEMAND_ALLOCATION_STRATEGIES:
            raise InvalidInput(
                f"on-demand allocation strategy {request.on_demand_allocation_strategy!r} is not "
                "one of " + ", ".join(ON_DEMAND_ALLOCATION_STRATEGIES)
            )
        if request.spot_fleet_config_file is not None or request.spot_fleet_config_data:
            raise InvalidInput(
                "-aws-fleet takes instance types, not a Spot Fleet config file",
                next_step="pass -aws-spot-instance-types TYPE[:WEIGHT],... with -slots",
            )
        if request.market == "spot" and not request.spot_instance_types:
            raise InvalidInput(
                "a Spot annex through EC2 Fleet needs instance types",
                next_step="pass -aws-spot-instance-types TYPE[:WEIGHT],...",
            )
    if request.market == "on-demand":
        if (
            request.spot_instance_types
            or request.spot_fleet_config_file
            or request.spot_fleet_config_data is not None
        ):
            raise InvalidInput("Spot Fleet options need -slots, not -count")
    elif not request.aws_fleet:
        has_file = (
            bool(request.spot_fleet_config_file) or request.spot_fleet_config_data is not None
        )
        if bool(request.spot_instance_types) == has_file:
            raise InvalidInput(
                "a Spot Fleet annex needs exactly one of -aws-spot-instance-types or "
                "-aws-spot-fleet-config-file"
            )
    if not request.owner or len(request.owner) > 256:
        raise InvalidInput("-owner must be 1 to 256 characters", next_step="pass -owner USER")
    _validate_inputs(request)


def _validate_inputs(request: CreateRequest) -> None:
    """The collector, START, fleet size and the files named, checked before anything is made."""
    parse_collector(request.collector)
    if request.start_expression is not None:
        inputs.check_start_expression(request.start_expression)
    if request.slots is not None and request.spot_instance_types:
        inputs.check_fleet_size(
            request.slots, [t.weight for t in request.spot_instance_types], MAX_COUNT
        )
    if request.signing_key_file is not None:
        read_input_bytes(
            request.signing_key_file,
            flag="-pool-signing-key-file",
            what="pool signing key",
            max_bytes=64 * 1024,
        )
    if request.token_file is not None:
        now = datetime.now(timezone.utc)
        inputs.check_token_file(
            request.token_file,
            lease_expires_at=now + timedelta(seconds=request.duration_seconds),
            now=now,
            trust_domain=request.trust_domain,
        )


def validate_duration(seconds: int) -> None:
    if not MIN_LEASE_SECONDS <= seconds <= contract.LEASE_MAX_SECONDS:
        raise InvalidInput(
            f"-duration must be between {MIN_LEASE_SECONDS} s and {contract.LEASE_MAX_SECONDS} s "
            f"(7 days), not {seconds} s"
        )


EC2_FLEET_TYPES = ("instant", "maintain")
"""`request` is left out: AWS recommends `instant` for one-shot launches instead."""
ON_DEMAND_ALLOCATION_STRATEGIES = ("lowest-price", "prioritized")


def on_demand_pools(request: CreateRequest) -> list[tuple[str, Optional[str]]]:
    """(instance type, subnet) in the order tried: preferred type first, then every subnet."""
    subnets: tuple[Optional[str], ...] = request.subnet_ids or (None,)
    return [(t, s) for t in request.on_demand_instance_types for s in subnets]
