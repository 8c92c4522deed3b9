"""The launch parameters every launch path shares: what `create` sends to EC2, and what
`-check-setup` dry-runs with the same values (`setup_checks`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from condor_annex import cost, spot
from condor_annex.annex_settings import Settings
from condor_annex.create_request import CreateRequest
from condor_annex.errors import InvalidInput

METADATA_OPTIONS: dict[str, Any] = {
    # IMDSv2 only, and one hop: a container on the instance cannot reach the metadata service
    # through the host's network stack (EC2 User Guide, "Configure the instance metadata options").
    "HttpTokens": "required",
    "HttpPutResponseHopLimit": 1,
    "HttpEndpoint": "enabled",
    # The agent reads the Spot Fleet tag from instance metadata instead of polling EC2.
    "InstanceMetadataTags": "enabled",
}

MAX_EC2_FLEET_OVERRIDES = 300
"""CreateFleet: at most 300 launch template overrides per request (EC2 Fleet quotas)."""
SPOT_ALLOCATION_STRATEGY = "price-capacity-optimized"
"""EC2 Fleet's recommended Spot strategy: the lowest-priced pools among those most likely to
keep their capacity ("Allocation strategies for EC2 Fleet")."""


def vpc_subnets(ec2: Any, settings: Settings) -> tuple[str, ...]:
    """Every subnet of the setup's VPC (EC2 Fleet spreads over all of them); () without one."""
    if not settings.vpc_id:
        return ()
    found: list[str] = []
    for page in ec2.get_paginator("describe_subnets").paginate(
        Filters=[{"Name": "vpc-id", "Values": [settings.vpc_id]}]
    ):
        found.extend(str(s["SubnetId"]) for s in page.get("Subnets", []))
    return tuple(sorted(found))


def build_ec2_fleet_request(
    request: CreateRequest,
    plan: spot.SpotPlan,
    *,
    launch_template_id: str,
    launch_template_version: str,
    client_token: str,
    subnet_ids: Sequence[str],
    valid_until: datetime,
    tags: Sequence[Mapping[str, str]],
) -> dict[str, Any]:
    """The `CreateFleet` arguments: the annex's template, one override per (type, subnet).

    The price cap goes into `SpotOptions`/`OnDemandOptions.MaxTotalPrice`, so EC2 Fleet itself
    stops launching at it; a `maintain` fleet ends with the lease (`ValidUntil`,
    `TerminateInstancesWithExpiration`) even if the lease schedule were lost.
    """
    overrides = [
        {**o, **({"SubnetId": s} if s else {})}
        for o in plan.overrides
        for s in (subnet_ids or (None,))
    ]
    if len(overrides) > MAX_EC2_FLEET_OVERRIDES:
        raise InvalidInput(
            f"{len(overrides)} instance type/subnet combinations exceed EC2 Fleet's limit of "
            f"{MAX_EC2_FLEET_OVERRIDES}",
            next_step="name fewer instance types or pass -aws-subnet-id",
        )
    options: dict[str, Any]
    if request.market == "spot":
        options = {
            "AllocationStrategy": SPOT_ALLOCATION_STRATEGY,
            "InstanceInterruptionBehavior": "terminate",
        }
    else:
        options = {"AllocationStrategy": request.on_demand_allocation_strategy}
    if request.max_price_per_hour is not None:
        options["MaxTotalPrice"] = cost.format_aws_price(request.max_price_per_hour)
    fleet: dict[str, Any] = {
        "ClientToken": client_token,
        "Type": request.fleet_type,
        "TargetCapacitySpecification": {
            "TotalTargetCapacity": request.size,
            "DefaultTargetCapacityType": request.market,
        },
        "SpotOptions" if request.market == "spot" else "OnDemandOptions": options,
        "LaunchTemplateConfigs": [
            {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateId": launch_template_id,
                    "Version": launch_template_version,
                },
                "Overrides": overrides,
            }
        ],
        "TagSpecifications": [{"ResourceType": "fleet", "Tags": list(tags)}],
    }
    if request.fleet_type == "maintain":
        # ValidUntil is not supported for instant fleets (CreateFleet API reference).
        fleet["ValidUntil"] = valid_until
        fleet["TerminateInstancesWithExpiration"] = True
    return fleet
