"""EC2 Fleet fidelity fixes: client tokens, launching from launch templates, allocation across
pools with capacity errors and price caps, the fleet-id tag, and deleting fleets.

moto 5.2.5's CreateFleet ignores `ClientToken` (a retry makes a second fleet, DescribeFleets has
no token), launches on-demand instances without the template's instance profile, security
groups or metadata options, gives instances no `aws:ec2:fleet-id` tag and no fleet-generated
client token, fills every target from one pool whatever the allocation strategy, never fails
a pool for capacity, ignores `MaxTotalPrice`, and DeleteFleets leaves weighted instances running
(it counts one unit per instance) and answers HTTP 500 for an unknown fleet id.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from moto.core.responses import ActionResult
from moto.ec2.models.fleets import Fleet, FleetsBackend
from moto.ec2.models.instances import MetadataOptions
from moto.ec2.responses.fleets import Fleets
from moto.ec2.utils import convert_tag_spec

from annex_sandbox import pricing
from annex_sandbox.patches._util import IdempotentParameterMismatch, fingerprint
from annex_sandbox.patches.capacity import CAPACITY_ERRORS, zone_of_subnet
from annex_sandbox.patches.spot_fleet import FLEET_TAG_CLOCK, _template_version_data
from condor_annex.contract import EC2_FLEET_ID_TAG

_LOCK = threading.Lock()
_NOT_PART_OF_REQUEST = frozenset({"ClientToken", "Action", "Version"})


@dataclass
class _Pool:
    """One launch pool: a launch template version with one override."""

    template: dict[str, Any]
    data: dict[str, Any]
    override: dict[str, Any]
    order: int

    @property
    def instance_type(self) -> str:
        return str(self.override.get("InstanceType") or self.data.get("InstanceType") or "m1.small")

    @property
    def subnet_id(self) -> Optional[str]:
        value = self.override.get("SubnetId")
        return str(value) if value else None

    @property
    def weight(self) -> float:
        return float(self.override.get("WeightedCapacity") or 1)

    @property
    def priority(self) -> float:
        value = self.override.get("Priority")
        return float(value) if value is not None else math.inf


def _pools(fleet: Fleet) -> list[_Pool]:
    backend: Any = fleet.ec2_backend
    out: list[_Pool] = []
    for config in fleet.launch_template_configs or []:
        spec = dict(config["LaunchTemplateSpecification"])
        data = _template_version_data(backend, spec)
        template = (
            backend.get_launch_template(template_id=spec["LaunchTemplateId"])
            if spec.get("LaunchTemplateId")
            else backend.get_launch_template_by_name(name=spec["LaunchTemplateName"])
        )
        version = spec.get("Version", "$Default")
        if version == "$Latest":
            version = str(template.latest_version_number)
        elif version == "$Default":
            version = str(template.default_version_number)
        resolved = {"LaunchTemplateId": template.id, "Version": str(version)}
        for override in config.get("Overrides") or [{}]:
            out.append(_Pool(resolved, data, dict(override), len(out)))
    return out


def _unit_price(fleet: Fleet, pool: _Pool, market: str) -> float:
    region = fleet.ec2_backend.region_name
    if market == "spot":
        zone = zone_of_subnet(fleet.ec2_backend, pool.subnet_id) or f"{region}a"
        text = pricing.spot_price(region, zone, pool.instance_type)
    else:
        text = pricing.on_demand_price(region, pool.instance_type)
    return float(text) if text is not None else math.inf


def _ordered(fleet: Fleet, pools: list[_Pool], market: str) -> list[_Pool]:
    """Pools in the order the allocation strategy fills them ("Allocation strategies for EC2
    Fleet": lowest-price and price-capacity-optimized prefer the cheapest per unit of capacity,
    prioritized and capacity-optimized-prioritized the lowest Priority, others the order given)."""
    options = fleet.spot_options if market == "spot" else fleet.on_demand_options
    strategy = str((options or {}).get("AllocationStrategy") or "lowest-price")
    if strategy in ("lowest-price", "lowestPrice", "price-capacity-optimized"):
        return sorted(pools, key=lambda p: (_unit_price(fleet, p, market) / p.weight, p.order))
    if strategy in ("prioritized", "capacity-optimized-prioritized"):
        return sorted(pools, key=lambda p: (p.priority, p.order))
    return pools


def _launch(fleet: Fleet, pool: _Pool, count: int, market: str) -> list[Any]:
    backend: Any = fleet.ec2_backend
    data = pool.data
    tags = convert_tag_spec(data.get("TagSpecifications", []))
    if fleet.fleet_type == "instant":
        # Instant fleets may tag instances in the request itself (CreateFleet TagSpecifications).
        tags["instance"] = {
            **tags.get("instance", {}),
            **fleet.__dict__.get("_sandbox_instance_tags", {}),
        }
    zone = zone_of_subnet(backend, pool.subnet_id)
    reservation = backend.run_instances(
        image_id=pool.override.get("ImageId") or data.get("ImageId"),
        count=count,
        user_data=data.get("UserData"),
        security_group_names=[],
        security_group_ids=list(data.get("SecurityGroupIds", [])),
        instance_type=pool.instance_type,
        is_instance_type_default=False,
        subnet_id=pool.subnet_id,
        placement=zone,
        key_name=data.get("KeyName"),
        tags=tags,
        fleet_id=fleet.id,
        client_token=f"fleet-{uuid.uuid4()}",
        lifecycle="spot" if market == "spot" else None,
        metadata_options=data.get("MetadataOptions") or {},
        instance_initiated_shutdown_behavior=data.get("InstanceInitiatedShutdownBehavior"),
    )
    profile = (data.get("IamInstanceProfile") or {}).get("Arn")
    for instance in reservation.instances:
        if data.get("MetadataOptions"):
            instance.metadata_options = MetadataOptions(data["MetadataOptions"])
        if profile:
            backend.associate_iam_instance_profile(
                instance_id=instance.id, iam_instance_profile_arn=profile
            )
        fleet.on_demand_instances.append(
            {
                "id": reservation.id,
                "instance": instance,
                "launch_spec": None,
                "market": market,
                "pool": pool,
            }
        )
    return list(reservation.instances)


def _fill(fleet: Fleet, units: float, market: str) -> None:
    """Launch `units` of capacity from the pools in allocation order, skipping pools without
    capacity (their errors are kept for the CreateFleet answer) and stopping at MaxTotalPrice."""
    if units <= 0:
        return
    options = (fleet.spot_options if market == "spot" else fleet.on_demand_options) or {}
    cap_text = options.get("MaxTotalPrice")
    cap = float(cap_text) if cap_text else math.inf
    errors: list[dict[str, Any]] = fleet.__dict__.setdefault("_sandbox_errors", [])
    remaining = units
    launched_ids: list[str] = []
    for pool in _ordered(fleet, _pools(fleet), market):
        if remaining <= 0:
            break
        zone = zone_of_subnet(fleet.ec2_backend, pool.subnet_id)
        code = CAPACITY_ERRORS.answer(pool.instance_type, zone)
        if code is not None:
            errors.append(
                {
                    "LaunchTemplateAndOverrides": {
                        "LaunchTemplateSpecification": pool.template,
                        "Overrides": pool.override,
                    },
                    "Lifecycle": market,
                    "ErrorCode": code,
                    "ErrorMessage": f"There is no {market} capacity for {pool.instance_type}"
                    f" in {zone or 'the requested zone'}.",
                }
            )
            continue
        count = math.ceil(remaining / pool.weight)
        price = _unit_price(fleet, pool, market)
        spent = float(fleet.__dict__.get(f"_sandbox_spent_{market}", 0.0))
        if math.isfinite(cap) and math.isfinite(price):
            # "MaxTotalPrice": the fleet stops launching once the next instance would pass it.
            count = min(count, int((cap - spent + 1e-9) // price))
        if count <= 0:
            break
        launched = _launch(fleet, pool, count, market)
        launched_ids.extend(i.id for i in launched)
        fleet.__dict__[f"_sandbox_spent_{market}"] = spent + count * (
            price if math.isfinite(price) else 0.0
        )
        remaining -= count * pool.weight
        fleet.fulfilled_capacity += count * pool.weight
        if market == "spot":
            fleet.fulfilled_spot_capacity += count * pool.weight
        else:
            fleet.fulfilled_on_demand_capacity += count * pool.weight
    backend: Any = fleet.ec2_backend
    fleet_id = fleet.id

    def tag() -> None:
        present = {i.id for r in backend.reservations.values() for i in r.instances}
        alive = [i for i in launched_ids if i in present]
        if alive:
            backend.create_tags(alive, {EC2_FLEET_ID_TAG: fleet_id})

    if launched_ids:
        FLEET_TAG_CLOCK.schedule(tag)


def ec2_fleet_launches_from_templates_across_pools() -> None:
    """CreateFleet launches from the template version, pool by pool, as EC2 Fleet does.

    "Launch template configuration" and "Allocation strategies for EC2 Fleet" (Amazon EC2 User
    Guide, https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-allocation-strategy.html),
    "CreateFleet" (EC2 API Reference): instances get the template's instance profile, security
    groups, metadata options and instance tags; each override is a launch pool with its own type,
    subnet, weight and priority; pools without capacity are skipped and reported in `Errors`;
    `MaxTotalPrice` (SpotOptions / OnDemandOptions) stops launching at the cap; instances carry a
    fleet-generated client token and the tag `aws:ec2:fleet-id` ("Tag an EC2 Fleet"), added after
    the same delay as Spot Fleet's tag (`fleet_tag_delay`).
    """

    def create_spot_requests(self: Fleet, weight_to_add: float) -> list[Any]:
        _fill(self, weight_to_add, "spot")
        return []

    def create_on_demand_requests(self: Fleet, weight_to_add: float) -> None:
        _fill(self, weight_to_add, "on-demand")

    def instances(self: Fleet) -> Optional[list[dict[str, Any]]]:
        if self.fleet_type != "instant":
            return None
        out = []
        for item in self.on_demand_instances:
            pool: _Pool = item["pool"]
            out.append(
                {
                    "Lifecycle": item["market"],
                    "InstanceIds": [item["instance"].id],
                    "InstanceType": item["instance"].instance_type,
                    "LaunchTemplateAndOverrides": {
                        "LaunchTemplateSpecification": pool.template,
                        "Overrides": pool.override,
                    },
                }
            )
        return out

    Fleet.create_spot_requests = create_spot_requests  # type: ignore[method-assign]
    Fleet.create_on_demand_requests = create_on_demand_requests  # type: ignore[method-assign]
    Fleet.instances = property(instances)  # type: ignore[assignment,method-assign]


def ec2_fleet_idempotent_on_client_token() -> None:
    """CreateFleet keeps its ClientToken, answers a retry with the same fleet, reports `Errors`.

    "Ensure idempotency in Amazon EC2 API requests": same token and parameters → the original
    answer, nothing launched; different parameters → `IdempotentParameterMismatch`. DescribeFleets
    returns `ClientToken` ("FleetData"). Instant fleets answer the pools that failed in `Errors`
    ("CreateFleet" response elements).
    """
    original: Callable[[Fleets], ActionResult] = Fleets.create_fleet

    def create_fleet(self: Fleets) -> ActionResult:
        token = self._get_param("ClientToken")
        params = {k: v for k, v in self.querystring.items() if k not in _NOT_PART_OF_REQUEST}
        digest = fingerprint(params)
        backend: Any = self.ec2_backend
        tag_specs = self._get_param("TagSpecifications", [])
        with _LOCK:
            ledger: dict[str, tuple[str, Any]] = backend.__dict__.setdefault(
                "_sandbox_create_fleet_tokens", {}
            )
            if token and token in ledger:
                if ledger[token][0] != digest:
                    raise IdempotentParameterMismatch()
                return ActionResult(ledger[token][1])
            _PENDING.instance_tags = convert_tag_spec(tag_specs).get("instance", {})
            _PENDING.token = token
            try:
                result = original(self)
            finally:
                _PENDING.instance_tags = {}
                _PENDING.token = None
            answer: dict[str, Any] = dict(result.result)  # type: ignore[call-overload]
            fleet = backend.get_fleet(answer["FleetId"])
            errors = fleet.__dict__.get("_sandbox_errors", []) if fleet else []
            if fleet is not None and fleet.fleet_type == "instant":
                answer["Errors"] = errors
            if token:
                ledger[token] = (digest, answer)
            return ActionResult(answer)

    original_init: Callable[..., None] = Fleet.__init__

    def __init__(self: Fleet, *args: Any, **kwargs: Any) -> None:
        # Set before moto's constructor, which launches the first instances itself.
        self.__dict__["_sandbox_instance_tags"] = dict(_PENDING.instance_tags)
        self.__dict__["client_token"] = _PENDING.token
        original_init(self, *args, **kwargs)

    Fleets.create_fleet = create_fleet  # type: ignore[method-assign]
    Fleet.__init__ = __init__  # type: ignore[method-assign]


class _Pending(threading.local):
    """What the CreateFleet answer being built hands to the Fleet constructor (per thread)."""

    def __init__(self) -> None:
        self.instance_tags: dict[str, str] = {}
        self.token: Optional[str] = None


_PENDING = _Pending()


def delete_fleets_ends_every_instance() -> None:
    """DeleteFleets with TerminateInstances ends ALL of the fleet's instances.

    "DeleteFleets" (EC2 API Reference): `deleted_terminating` with TerminateInstances, else
    `deleted_running`; then `deleted` once no instance is left; an instant fleet can only be
    deleted with its instances (`NoTerminateInstancesNotSupported`); unknown ids come back in
    `UnsuccessfulFleetDeletions` (`fleetIdDoesNotExist`). moto terminates one instance per unit
    of capacity (weighted instances survive) and answers HTTP 500 for an unknown id.
    """

    def delete_fleets(self: FleetsBackend, fleet_ids: list[str], terminate_instances: bool) -> Any:
        deleted, failed = [], []
        for fleet_id in fleet_ids:
            fleet = self.fleets.get(fleet_id)
            if fleet is None or (
                fleet.state.startswith("deleted") and fleet.state != "deleted_running"
            ):
                failed.append(
                    (fleet_id, "fleetIdDoesNotExist", f"The fleet ID '{fleet_id}' does not exist")
                )
                continue
            if fleet.fleet_type == "instant" and not terminate_instances:
                failed.append(
                    (
                        fleet_id,
                        "NoTerminateInstancesNotSupported",
                        "An instant fleet can only be deleted with TerminateInstances=true",
                    )
                )
                continue
            previous = fleet.state
            fleet.target_capacity = 0
            # Deleted first: a deleted maintain fleet replaces none of the instances it ends.
            fleet.state = "deleted_terminating" if terminate_instances else "deleted_running"
            if terminate_instances:
                ids = [
                    item["instance"].id
                    for item in fleet.on_demand_instances
                    if item["instance"].state not in ("terminated", "shutting-down")
                ]
                if ids:
                    self.terminate_instances(ids)  # type: ignore[attr-defined]
                fleet.state = "deleted_terminating"
                fleet.__dict__["_sandbox_answer_state"] = "deleted_terminating"
                # moto terminates at once: nothing is left, so the fleet is `deleted` from now on.
                fleet.state = "deleted"
            else:
                fleet.state = "deleted_running"
                fleet.__dict__["_sandbox_answer_state"] = "deleted_running"
            deleted.append((fleet, previous))
        fleet_states = [
            (f, p, f.__dict__.get("_sandbox_answer_state", f.state)) for f, p in deleted
        ]
        return fleet_states, failed

    def delete_fleets_response(self: Fleets) -> ActionResult:
        fleet_ids = self._get_param("FleetIds", [])
        terminate = self._get_bool_param("TerminateInstances")
        done, failed = self.ec2_backend.delete_fleets(fleet_ids, terminate)
        return ActionResult(
            {
                "SuccessfulFleetDeletions": [
                    {"CurrentFleetState": state, "PreviousFleetState": previous, "FleetId": f.id}
                    for f, previous, state in done
                ],
                "UnsuccessfulFleetDeletions": [
                    {"Error": {"Code": code, "Message": message}, "FleetId": fid}
                    for fid, code, message in failed
                ],
            }
        )

    FleetsBackend.delete_fleets = delete_fleets  # type: ignore[method-assign]
    Fleets.delete_fleets = delete_fleets_response  # type: ignore[method-assign]


def maintain_fleets_replace_lost_instances() -> None:
    """A `maintain` fleet launches a replacement when one of its instances ends.

    "EC2 Fleet request types" (Amazon EC2 User Guide,
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-request-type.html): a maintain
    fleet keeps its target capacity — it replaces Spot instances that are interrupted and
    instances that are terminated — until it is deleted or expires. moto never replaces one.
    A deleted fleet (DeleteFleets sets the state first) replaces nothing.
    """
    from moto.ec2.models.instances import InstanceBackend

    original: Callable[..., Any] = InstanceBackend.terminate_instances

    def terminate_instances(self: Any, instance_ids: list[str]) -> Any:
        wanted = set(instance_ids)
        # moto's Instance.terminate drops the instance from its fleet (and its capacity), so
        # what each maintain fleet is about to lose is noted first.
        losing = [
            (fleet, [i for i in fleet.on_demand_instances if i["instance"].id in wanted])
            for fleet in list(getattr(self, "fleets", {}).values())
            if fleet.fleet_type == "maintain" and fleet.state == "active"
        ]
        result = original(self, instance_ids)
        ended = {instance.id for instance, _ in result}
        for fleet, items in losing:
            lost: dict[str, float] = {}
            for item in items:
                if item["instance"].id not in ended:
                    continue
                market, pool = item["market"], item["pool"]
                lost[market] = lost.get(market, 0.0) + pool.weight
                price = _unit_price(fleet, pool, market)
                if math.isfinite(price):
                    key = f"_sandbox_spent_{market}"
                    fleet.__dict__[key] = float(fleet.__dict__.get(key, 0.0)) - price
            for market, units in lost.items():
                _fill(fleet, units, market)
        return result

    def describe_fleet_instances(self: FleetsBackend, fleet_id: str) -> list[Any]:
        """ActiveInstances: the fleet's instances that have not ended."""
        fleet = self.get_fleet(fleet_id)
        if fleet is None:
            return []
        return [
            item
            for item in fleet.on_demand_instances
            if item["instance"].state not in ("terminated", "shutting-down")
        ]

    InstanceBackend.terminate_instances = terminate_instances  # type: ignore[method-assign]
    FleetsBackend.describe_fleet_instances = describe_fleet_instances  # type: ignore[method-assign]
