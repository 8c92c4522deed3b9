"""Spot Fleet request building: from instance types on the command line or a console-exported file.

A Spot Fleet `LaunchSpecification` has no `MetadataOptions` (EC2 API reference,
SpotFleetLaunchSpecification), so IMDSv2 cannot be required through it. Every Spot Fleet annex
therefore launches from a per-annex launch template that carries what the setup dictates
(instance profile, security groups, `HttpTokens=required`, hop limit 1, annex tags); the instance
types, weights and subnets become the template config's `Overrides`. A user's file in the console's
export format (`LaunchSpecifications`) is validated and folded into that shape; settings that would
escape the setup (another fleet role, instance profile or security group) are refused, not merged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from condor_annex.errors import InvalidInput
from condor_annex.files import read_input_text

MAX_CONFIG_FILE_BYTES = 256 * 1024
MAX_OVERRIDES = 50
"""AWS: a launch template config takes at most 50 overrides per fleet request."""

ALLOCATION_STRATEGIES = (
    "priceCapacityOptimized",
    "capacityOptimized",
    "capacityOptimizedPrioritized",
    "diversified",
    "lowestPrice",
)
DEFAULT_ALLOCATION_STRATEGY = "priceCapacityOptimized"
FLEET_TYPES = ("maintain", "request")
DEFAULT_FLEET_TYPE = "maintain"

_INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")

# Top-level keys of SpotFleetRequestConfigData we accept from a file; the rest is refused by name.
_FLEET_KEYS_KEPT = frozenset(
    {
        "AllocationStrategy",
        "OnDemandAllocationStrategy",
        "SpotMaintenanceStrategies",
        "ExcessCapacityTerminationPolicy",
        "SpotPrice",
        "OnDemandTargetCapacity",
        "OnDemandMaxTotalPrice",
        "SpotMaxTotalPrice",
        "Type",
        "ReplaceUnhealthyInstances",
        "InstanceInterruptionBehavior",
        "InstancePoolsToUseCount",
        "TargetCapacityUnitType",
        "Context",
    }
)
# Keys condor_annex sets itself (the file's values are ignored: capacity is -slots, the expiry is
# the lease, the token is ours). IamFleetRole is checked separately.
_FLEET_KEYS_REPLACED = frozenset(
    {
        "ClientToken",
        "TargetCapacity",
        "FulfilledCapacity",
        "OnDemandFulfilledCapacity",
        "ValidFrom",
        "ValidUntil",
        "TerminateInstancesWithExpiration",
        "TagSpecifications",
    }
)
# Per-launch-specification keys that become launch template data (must agree across specs).
_SHARED_SPEC_KEYS = (
    "ImageId",
    "KeyName",
    "UserData",
    "BlockDeviceMappings",
    "EbsOptimized",
    "Monitoring",
    "KernelId",
    "RamdiskId",
)
# Per-launch-specification keys that become an override.
_OVERRIDE_SPEC_KEYS = ("InstanceType", "SubnetId", "SpotPrice", "WeightedCapacity", "Priority")


@dataclass(frozen=True)
class InstanceTypeWeight:
    """One instance type and how many slots one instance of it counts for."""

    instance_type: str
    weight: float = 1.0


@dataclass
class SpotPlan:
    """What a Spot Fleet annex launches, before the setup's settings are applied."""

    overrides: list[dict[str, Any]]
    template_data: dict[str, Any] = field(default_factory=dict)
    fleet_options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """What of the file was replaced by the setup's own settings (shown to the user)."""

    @property
    def instance_types(self) -> list[str]:
        return sorted({str(o["InstanceType"]) for o in self.overrides})


def parse_instance_types(values: Sequence[str]) -> tuple[InstanceTypeWeight, ...]:
    """Parse `-aws-spot-instance-types` values: `TYPE[:WEIGHT]`, comma-separated or repeated."""
    out: list[InstanceTypeWeight] = []
    seen: set[str] = set()
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            itype, _, weight_text = item.partition(":")
            itype = itype.strip()
            if not _INSTANCE_TYPE_RE.fullmatch(itype):
                raise InvalidInput(
                    f"{itype!r} is not an EC2 instance type",
                    next_step="write types as FAMILY.SIZE[:WEIGHT], e.g. m5.large:2,c5.xlarge:4",
                )
            weight = 1.0
            if weight_text:
                try:
                    weight = float(weight_text)
                except ValueError:
                    weight = -1.0
                if not 0 < weight <= 1000:
                    raise InvalidInput(
                        f"weight {weight_text!r} of {itype} is not a number in (0, 1000]",
                        next_step="give each type the number of slots one instance provides",
                    )
            if itype in seen:
                raise InvalidInput(f"instance type {itype} is listed twice")
            seen.add(itype)
            out.append(InstanceTypeWeight(itype, weight))
    return tuple(out)


def plan_from_instance_types(
    types: Sequence[InstanceTypeWeight],
    *,
    subnet_ids: Sequence[str] = (),
    allocation_strategy: str = DEFAULT_ALLOCATION_STRATEGY,
    fleet_type: str = DEFAULT_FLEET_TYPE,
) -> SpotPlan:
    """One override per (type, subnet); weights become `WeightedCapacity`."""
    if not types:
        raise InvalidInput(
            "a Spot Fleet annex needs instance types",
            next_step="pass -aws-spot-instance-types TYPE[:WEIGHT],... "
            "or -aws-spot-fleet-config-file FILE",
        )
    _check_choice("allocation strategy", allocation_strategy, ALLOCATION_STRATEGIES)
    _check_choice("fleet type", fleet_type, FLEET_TYPES)
    overrides: list[dict[str, Any]] = []
    for t in types:
        for subnet in subnet_ids or (None,):
            override: dict[str, Any] = {"InstanceType": t.instance_type}
            override["WeightedCapacity"] = t.weight
            if subnet:
                override["SubnetId"] = subnet
            overrides.append(override)
    _check_override_count(overrides)
    return SpotPlan(
        overrides=overrides,
        fleet_options={"AllocationStrategy": allocation_strategy, "Type": fleet_type},
    )


def _check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise InvalidInput(f"{what} {value!r} is not one of {', '.join(allowed)}")


def _check_override_count(overrides: Sequence[Any]) -> None:
    if len(overrides) > MAX_OVERRIDES:
        raise InvalidInput(
            f"{len(overrides)} instance type/subnet combinations exceed the Spot Fleet limit "
            f"of {MAX_OVERRIDES}",
            next_step="name fewer instance types or subnets",
        )


def load_spot_fleet_config(
    path: Path,
    *,
    fleet_role_arn: str,
    instance_profile_arn: str,
    security_group_ids: Sequence[str],
) -> SpotPlan:
    """Read and validate a Spot Fleet config file (console export or a bare config).

    The file is refused, with the reason, when it is too big, not JSON, or uses launch
    templates. A fleet role, instance profile or security groups of its own (as the old
    condor_annex's files name) are replaced by the setup's, with a note.
    """
    # Kind, size and readability first (a directory or a FIFO is refused, not read).
    text = read_input_text(
        path,
        flag="-aws-spot-fleet-config-file",
        what="Spot Fleet config file",
        max_bytes=MAX_CONFIG_FILE_BYTES,
    )
    raw = text.encode("utf-8")
    return parse_spot_fleet_config(
        raw,
        source=str(path),
        fleet_role_arn=fleet_role_arn,
        instance_profile_arn=instance_profile_arn,
        security_group_ids=security_group_ids,
    )


def parse_spot_fleet_config(
    raw: bytes,
    *,
    source: str,
    fleet_role_arn: str,
    instance_profile_arn: str,
    security_group_ids: Sequence[str],
) -> SpotPlan:
    """`load_spot_fleet_config` for bytes already read (e.g. from stdin)."""
    if len(raw) > MAX_CONFIG_FILE_BYTES:
        raise InvalidInput(
            f"the Spot Fleet config {source} has {len(raw)} bytes; at most "
            f"{MAX_CONFIG_FILE_BYTES} are accepted"
        )
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"the Spot Fleet config {source} is not JSON: {exc}") from None
    return plan_from_config(
        data,
        source=source,
        fleet_role_arn=fleet_role_arn,
        instance_profile_arn=instance_profile_arn,
        security_group_ids=security_group_ids,
    )


def plan_from_config(
    data: Any,
    *,
    source: str,
    fleet_role_arn: str,
    instance_profile_arn: str,
    security_group_ids: Sequence[str],
) -> SpotPlan:
    """Validate a decoded Spot Fleet config (see `load_spot_fleet_config`)."""

    def bad(problem: str, fix: str = "correct the file and retry") -> InvalidInput:
        return InvalidInput(f"Spot Fleet config {source}: {problem}", next_step=fix)

    if isinstance(data, Mapping) and "SpotFleetRequestConfig" in data:
        data = data["SpotFleetRequestConfig"]  # console export / DescribeSpotFleetRequests shape
    if not isinstance(data, Mapping):
        raise bad("expected a JSON object (SpotFleetRequestConfig)")
    if data.get("LaunchTemplateConfigs"):
        raise bad(
            "LaunchTemplateConfigs are not accepted: condor_annex makes its own launch template "
            "to enforce IMDSv2 and the setup's instance profile",
            "use LaunchSpecifications, or -aws-spot-instance-types on the command line",
        )
    unknown = sorted(
        set(data)
        - _FLEET_KEYS_KEPT
        - _FLEET_KEYS_REPLACED
        - {"IamFleetRole", "LaunchSpecifications", "LaunchTemplateConfigs"}
    )
    if unknown:
        raise bad(f"unknown key(s) {', '.join(unknown)}")
    notes: list[str] = []
    role = data.get("IamFleetRole")
    if role and role != fleet_role_arn:
        notes.append(f"{source}: IamFleetRole {role} replaced by the setup's {fleet_role_arn}")
    specs = data.get("LaunchSpecifications")
    if not isinstance(specs, list) or not specs:
        raise bad("LaunchSpecifications must be a non-empty list")

    shared: dict[str, Any] = {}
    overrides: list[dict[str, Any]] = []
    allowed_spec_keys = {
        *_SHARED_SPEC_KEYS,
        *_OVERRIDE_SPEC_KEYS,
        "IamInstanceProfile",
        "SecurityGroups",
        "Placement",
        "TagSpecifications",
    }
    for i, spec in enumerate(specs):
        where = f"LaunchSpecifications[{i}]"
        if not isinstance(spec, Mapping):
            raise bad(f"{where} is not an object")
        unknown = sorted(set(spec) - allowed_spec_keys)
        if unknown:
            raise bad(
                f"{where} has key(s) condor_annex does not accept: {', '.join(unknown)}",
                "remove them (network interfaces and instance requirements are not supported)",
            )
        # The instances must carry the setup's profile (the agent finds the config bucket
        # through it) and groups (they open the pool's port only): the file's own are replaced.
        profile = spec.get("IamInstanceProfile") or {}
        profile_name = (
            profile.get("Arn") or profile.get("Name") if isinstance(profile, Mapping) else profile
        )
        if profile and profile_name != instance_profile_arn:
            notes.append(
                f"{source}: {where}.IamInstanceProfile {profile_name} replaced by the setup's "
                f"{instance_profile_arn}"
            )
        groups = spec.get("SecurityGroups") or []
        foreign = sorted(
            str(g.get("GroupId") or g.get("GroupName")) if isinstance(g, Mapping) else str(g)
            for g in groups
            if not isinstance(g, Mapping) or g.get("GroupId") not in security_group_ids
        )
        if foreign:
            notes.append(
                f"{source}: {where}.SecurityGroups {', '.join(foreign)} replaced by the setup's "
                f"{', '.join(security_group_ids)}"
            )
        itype = spec.get("InstanceType")
        if not isinstance(itype, str) or not _INSTANCE_TYPE_RE.fullmatch(itype):
            raise bad(f"{where}.InstanceType is missing or not an instance type")
        for key in _SHARED_SPEC_KEYS:
            if key in spec:
                if key in shared and shared[key] != spec[key]:
                    raise bad(
                        f"{where}.{key} differs from an earlier launch specification",
                        f"use one {key} for every launch specification",
                    )
                shared[key] = spec[key]
        override = {k: spec[k] for k in _OVERRIDE_SPEC_KEYS if k in spec}
        weight = override.get("WeightedCapacity", 1)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
            raise bad(f"{where}.WeightedCapacity must be a positive number")
        placement = spec.get("Placement")
        if isinstance(placement, Mapping) and placement.get("AvailabilityZone"):
            override["AvailabilityZone"] = placement["AvailabilityZone"]
        overrides.append(override)
    _check_override_count(overrides)

    options = {k: v for k, v in data.items() if k in _FLEET_KEYS_KEPT}
    options.setdefault("AllocationStrategy", DEFAULT_ALLOCATION_STRATEGY)
    options.setdefault("Type", DEFAULT_FLEET_TYPE)
    try:
        _check_choice(
            "allocation strategy", str(options["AllocationStrategy"]), ALLOCATION_STRATEGIES
        )
        _check_choice("fleet type", str(options["Type"]), FLEET_TYPES)
    except InvalidInput as exc:
        raise bad(exc.message) from None
    if "Monitoring" in shared:
        shared["Monitoring"] = {"Enabled": bool((shared["Monitoring"] or {}).get("Enabled"))}
    return SpotPlan(overrides=overrides, template_data=shared, fleet_options=options, notes=notes)


def build_spot_fleet_request_config(
    plan: SpotPlan,
    *,
    launch_template_id: str,
    launch_template_version: str,
    client_token: str,
    slots: int,
    fleet_role_arn: str,
    valid_until: str,
    tags: Sequence[Mapping[str, str]],
    subnet_ids: Sequence[str] = (),
    max_total_price: Optional[str] = None,
) -> dict[str, Any]:
    """The `SpotFleetRequestConfig` for `RequestSpotFleet`.

    The fleet ends with the lease (`ValidUntil` + `TerminateInstancesWithExpiration`), so even a
    lost lease schedule cannot keep spot instances running past it. With `max_total_price` (USD
    per hour) Spot Fleet itself stops launching at the cap (`SpotMaxTotalPrice`), even if prices
    move after the preview.
    """
    overrides = [dict(o) for o in plan.overrides]
    if subnet_ids and not any("SubnetId" in o for o in overrides):
        overrides = [{**o, "SubnetId": s} for o in overrides for s in subnet_ids]
        _check_override_count(overrides)
    config: dict[str, Any] = dict(plan.fleet_options)
    config.update(
        {
            "ClientToken": client_token,
            "IamFleetRole": fleet_role_arn,
            "TargetCapacity": slots,
            "ValidUntil": valid_until,
            "TerminateInstancesWithExpiration": True,
            "LaunchTemplateConfigs": [
                {
                    "LaunchTemplateSpecification": {
                        "LaunchTemplateId": launch_template_id,
                        "Version": launch_template_version,
                    },
                    "Overrides": overrides,
                }
            ],
            "TagSpecifications": [{"ResourceType": "spot-fleet-request", "Tags": list(tags)}],
        }
    )
    if max_total_price is not None:
        file_cap = config.get("SpotMaxTotalPrice")
        # A file's own cap stays when it is the lower one.
        if file_cap is None or float(file_cap) > float(max_total_price):
            config["SpotMaxTotalPrice"] = max_total_price
    return config


def image_id_of(plan: SpotPlan) -> Optional[str]:
    value = plan.template_data.get("ImageId")
    return str(value) if value else None
