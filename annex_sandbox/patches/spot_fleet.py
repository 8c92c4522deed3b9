"""Spot Fleet fidelity fixes: client tokens, accepted configs, profiles, the fleet tag, cancel,
launching from launch templates, and describing a request as it was sent."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.models.instances import MetadataOptions
from moto.ec2.models.spot_requests import SpotFleetRequest, SpotRequestBackend
from moto.ec2.responses.spot_fleets import SpotFleets

from annex_sandbox.local_aws import DEFAULT_FLEET_TAG_DELAY
from annex_sandbox.patches._util import IdempotentParameterMismatch, fingerprint
from condor_annex.contract import SPOT_FLEET_REQUEST_ID_TAG

_LOCK = threading.Lock()
_CANCELLED_PENDING = ("cancelled_terminating", "cancelled_running")


class FleetTagClock:
    """When Spot Fleet tags its instances: after `delay` seconds, on a timer thread.

    Spot Fleet adds `aws:ec2spot:fleet-request-id` itself some time after launch (minutes on
    AWS); the delay makes the product's wait for the tag observable in tests.
    """

    def __init__(self) -> None:
        self.delay = DEFAULT_FLEET_TAG_DELAY
        self._timers: dict[threading.Timer, Callable[[], None]] = {}
        self._lock = threading.Lock()

    def schedule(self, action: Callable[[], None]) -> None:
        if self.delay <= 0:
            action()
            return

        def run() -> None:
            with self._lock:
                if self._timers.pop(timer, None) is None:
                    return  # cancelled by a reset, or already fired
            action()

        timer = threading.Timer(self.delay, run)
        timer.daemon = True
        with self._lock:
            self._timers[timer] = action
        timer.start()

    def cancel_all(self) -> None:
        with self._lock:
            timers, self._timers = self._timers, {}
        for timer in timers:
            timer.cancel()

    def fire_pending(self) -> int:
        """Tag every fleet instance still waiting for its tag now; returns how many timers fired."""
        with self._lock:
            pending, self._timers = self._timers, {}
        for timer, action in pending.items():
            timer.cancel()
            action()
        return len(pending)


FLEET_TAG_CLOCK = FleetTagClock()


def _fleet_instances(fleet: Any) -> list[Any]:
    instances: list[Any] = fleet.__dict__.setdefault("_sandbox_instances", [])
    return instances


def request_spot_fleet_accepts_aws_configs() -> None:
    """RequestSpotFleet keeps its ClientToken, defaults AllocationStrategy, is idempotent.

    "RequestSpotFleet" / "SpotFleetRequestConfigData" (Amazon EC2 API Reference:
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_SpotFleetRequestConfigData.html):
    `AllocationStrategy` is optional (default `lowestPrice`), `ClientToken` is part of the config
    and makes the request idempotent ("Ensure idempotency in Amazon EC2 API requests"), and
    DescribeSpotFleetRequests returns it in `SpotFleetRequestConfig.ClientToken`.
    moto requires AllocationStrategy (KeyError, HTTP 500) and drops the token.
    """

    def request_spot_fleet(self: SpotFleets) -> ActionResult:
        config: dict[str, Any] = self._get_param("SpotFleetRequestConfig", {})
        token = config.get("ClientToken")
        digest = fingerprint({k: v for k, v in config.items() if k != "ClientToken"})
        backend: Any = self.ec2_backend
        with _LOCK:
            ledger: dict[str, tuple[str, str]] = backend.__dict__.setdefault(
                "_sandbox_spot_fleet_tokens", {}
            )
            if token and token in ledger:
                known_digest, fleet_id = ledger[token]
                if known_digest != digest:
                    raise IdempotentParameterMismatch()
                return ActionResult({"SpotFleetRequestId": fleet_id})
            request = backend.request_spot_fleet(
                spot_price=config.get("SpotPrice"),
                target_capacity=config["TargetCapacity"],
                iam_fleet_role=config["IamFleetRole"],
                allocation_strategy=config.get("AllocationStrategy", "lowestPrice"),
                launch_specs=config.get("LaunchSpecifications") or [],
                launch_template_config=self._get_param(
                    "SpotFleetRequestConfig.LaunchTemplateConfigs", []
                ),
                instance_interruption_behaviour=config.get("InstanceInterruptionBehavior"),
                tag_specifications=config.get("TagSpecifications", []),
            )
            request.client_token = token
            request.request_type = config.get("Type", "maintain")
            if token:
                ledger[token] = (digest, request.id)
        return ActionResult({"SpotFleetRequestId": request.id})

    def spot_fleet_request_config(self: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "TargetCapacity": self.target_capacity,
            "IamFleetRole": self.iam_fleet_role,
            "AllocationStrategy": self.allocation_strategy,
            "FulfilledCapacity": self.fulfilled_capacity,
            "LaunchSpecifications": self.launch_specs,
            "Type": getattr(self, "request_type", "maintain"),
            "InstanceInterruptionBehavior": self.instance_interruption_behaviour,
        }
        if getattr(self, "client_token", None):
            config["ClientToken"] = self.client_token
        if self.spot_price:
            config["SpotPrice"] = self.spot_price
        return config

    SpotFleets.request_spot_fleet = request_spot_fleet  # type: ignore[method-assign]
    SpotFleetRequest.spot_fleet_request_config = property(spot_fleet_request_config)  # type: ignore[assignment,method-assign]


def spot_fleet_instances_get_profile_and_fleet_tag() -> None:
    """Fleet instances get the launch spec's instance profile, then the fleet-request-id tag.

    "Spot Fleet request types / Tag a Spot Fleet" (Amazon EC2 User Guide,
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/work-with-spot-fleets.html): instances are
    launched from the launch specification (including `IamInstanceProfile`) and Spot Fleet tags
    each instance it launches with `aws:ec2spot:fleet-request-id`. Instances carry a client token
    generated by the fleet (not the request's). moto drops the profile and never adds the tag.
    """
    original: Callable[[SpotFleetRequest, float], None] = SpotFleetRequest.create_spot_requests

    def create_spot_requests(self: SpotFleetRequest, weight_to_add: float) -> None:
        before = {request.id for request in self.spot_requests}
        original(self, weight_to_add)
        backend: Any = self.ec2_backend
        launched = [r.instance for r in self.spot_requests if r.id not in before]
        for instance in launched:
            spec = next(
                (
                    s
                    for s in self.launch_specs
                    if s.image_id == instance.image_id and s.instance_type == instance.instance_type
                ),
                None,
            )
            profile_arn = spec._iam_instance_profile_arn if spec is not None else None
            if profile_arn and instance.id not in backend.iam_instance_profile_associations:
                backend.associate_iam_instance_profile(
                    instance_id=instance.id, iam_instance_profile_arn=profile_arn
                )
            instance.client_token = str(uuid.uuid4())
        _fleet_instances(self).extend(launched)
        fleet_id = self.id
        instance_ids = [instance.id for instance in launched]

        def tag() -> None:
            present = {i.id for r in backend.reservations.values() for i in r.instances}
            alive = [i for i in instance_ids if i in present]
            if alive:
                backend.create_tags(alive, {SPOT_FLEET_REQUEST_ID_TAG: fleet_id})

        if instance_ids:
            FLEET_TAG_CLOCK.schedule(tag)

    SpotFleetRequest.create_spot_requests = create_spot_requests  # type: ignore[method-assign]


def cancelled_spot_fleets_stay_visible() -> None:
    """Cancelled Spot Fleet requests stay in DescribeSpotFleetRequests with their state.

    "Spot Fleet request states" (Amazon EC2 User Guide,
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-fleet-states.html):
    `cancelled_terminating` while its instances terminate, `cancelled_running` when they are left
    running, and `cancelled` once none is left; a cancelled request is deleted two days later.
    moto deletes the request at once when TerminateInstances is true.
    """

    def cancel_spot_fleet_requests(
        self: SpotRequestBackend, spot_fleet_request_ids: list[str], terminate_instances: bool
    ) -> list[Any]:
        fleets = []
        for fleet_id in spot_fleet_request_ids:
            fleet: Any = self.spot_fleet_requests[fleet_id]
            fleet.previous_state = fleet.spot_fleet_request_state
            if terminate_instances:
                fleet.target_capacity = 0
                live = [i.id for i in _fleet_instances(fleet) if i.state != "terminated"]
                if live:
                    self.terminate_instances(live)  # type: ignore[attr-defined]
                fleet.state = "cancelled_terminating"
            else:
                fleet.state = "cancelled_running"
            fleets.append(fleet)
        return fleets

    def spot_fleet_request_state(self: Any) -> str:
        if self.state in _CANCELLED_PENDING and all(
            i.state == "terminated" for i in _fleet_instances(self)
        ):
            return "cancelled"
        return str(self.state)

    def cancel_response(self: SpotFleets) -> ActionResult:
        ids: list[str] = self._get_param("SpotFleetRequestIds", [])
        known = [i for i in ids if i in self.ec2_backend.spot_fleet_requests]
        fleets = self.ec2_backend.cancel_spot_fleet_requests(
            known, self._get_bool_param("TerminateInstances")
        )
        successful = [
            {
                "SpotFleetRequestId": fleet.id,
                "CurrentSpotFleetRequestState": fleet.state,
                "PreviousSpotFleetRequestState": fleet.previous_state,
            }
            for fleet in fleets
        ]
        unsuccessful = [
            {
                "SpotFleetRequestId": i,
                "Error": {
                    "Code": "fleetRequestIdDoesNotExist",
                    "Message": f"The Spot Fleet request ID '{i}' does not exist.",
                },
            }
            for i in ids
            if i not in known
        ]
        return ActionResult(
            {"SuccessfulFleetRequests": successful, "UnsuccessfulFleetRequests": unsuccessful}
        )

    SpotRequestBackend.cancel_spot_fleet_requests = cancel_spot_fleet_requests  # type: ignore[method-assign]
    SpotFleetRequest.spot_fleet_request_state = property(spot_fleet_request_state)  # type: ignore[assignment,method-assign]
    SpotFleets.cancel_spot_fleet_requests = cancel_response  # type: ignore[method-assign]


# Launch template data keys moto's SpotFleetLaunchSpec reads (the rest goes through `_extras`).
_TEMPLATE_SPEC_KEYS = (
    "ImageId",
    "InstanceType",
    "KeyName",
    "UserData",
    "EbsOptimized",
    "Monitoring",
)
# LaunchTemplateOverrides members that replace the template's value for one launch pool.
_OVERRIDE_KEYS = ("InstanceType", "SubnetId", "WeightedCapacity", "SpotPrice", "Priority")


def _template_version_data(backend: Any, specification: dict[str, Any]) -> dict[str, Any]:
    if specification.get("LaunchTemplateId"):
        template = backend.get_launch_template(template_id=specification["LaunchTemplateId"])
    else:
        template = backend.get_launch_template_by_name(name=specification["LaunchTemplateName"])
    data: dict[str, Any] = template.get_version(specification.get("Version", "$Default")).data
    return data


def _launch_pool(data: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A moto launch specification for one (template version, override) launch pool."""
    spec: dict[str, Any] = {k: data[k] for k in _TEMPLATE_SPEC_KEYS if k in data}
    groups = [*data.get("SecurityGroupIds", []), *data.get("SecurityGroups", [])]
    if groups:
        spec["SecurityGroups"] = groups  # moto resolves each by id or name
    profile = data.get("IamInstanceProfile") or {}
    if profile.get("Arn"):
        spec["IamInstanceProfile"] = {"Arn": profile["Arn"]}
    if data.get("TagSpecifications"):
        spec["TagSpecifications"] = data["TagSpecifications"]
    spec.update({k: override[k] for k in _OVERRIDE_KEYS if k in override})
    if override.get("AvailabilityZone"):
        spec["Placement"] = {"AvailabilityZone": override["AvailabilityZone"]}
    return spec


def spot_fleet_launches_from_launch_templates() -> None:
    """Fleet instances launched from `LaunchTemplateConfigs` get the template's settings.

    "LaunchTemplateConfig" / "LaunchTemplateOverrides" (Amazon EC2 API Reference:
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_LaunchTemplateConfig.html,
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_LaunchTemplateOverrides.html) and
    "Spot Fleet launch templates" (Amazon EC2 User Guide): the fleet launches instances from the
    given version of the template — security groups, `IamInstanceProfile`, `MetadataOptions`,
    tags included — and each override (InstanceType, SubnetId, WeightedCapacity, SpotPrice,
    AvailabilityZone) is one launch pool that replaces only those values. moto reads the latest
    version, drops the template's security group ids, profile and metadata options, and keeps
    only the first override.
    """
    original_init: Callable[..., None] = SpotFleetRequest.__init__
    inner_create: Callable[[SpotFleetRequest, float], None] = SpotFleetRequest.create_spot_requests

    def __init__(self: SpotFleetRequest, *args: Any, **kwargs: Any) -> None:
        configs: list[dict[str, Any]] = kwargs.get("launch_template_config") or []
        if configs:
            backend: Any = kwargs["ec2_backend"]
            given: list[dict[str, Any]] = list(kwargs.get("launch_specs") or [])
            pools: list[dict[str, Any]] = []
            extras: list[dict[str, Any]] = [{} for _ in given]
            for config in configs:
                data = _template_version_data(backend, config["LaunchTemplateSpecification"])
                for override in config.get("Overrides") or [{}]:
                    pools.append(_launch_pool(data, override))
                    extras.append({"MetadataOptions": data.get("MetadataOptions")})
            # Set before moto's constructor, which launches the first instances itself.
            self.__dict__["_sandbox_launch_extras"] = extras
            kwargs.update(launch_specs=given + pools, launch_template_config=None)
        original_init(self, *args, **kwargs)

    def create_spot_requests(self: SpotFleetRequest, weight_to_add: float) -> None:
        before = {request.id for request in self.spot_requests}
        inner_create(self, weight_to_add)
        extras: list[dict[str, Any]] = self.__dict__.get("_sandbox_launch_extras", [])
        if not extras:
            return  # launched from launch specifications only
        for request in self.spot_requests:
            if request.id in before:
                continue
            launched = request.launch_specification
            index = next(
                (
                    i
                    for i, spec in enumerate(self.launch_specs)
                    if (spec.image_id, spec.instance_type, spec.subnet_id)
                    == (launched.image_id, launched.instance_type, launched.subnet_id)
                ),
                None,
            )
            options = extras[index].get("MetadataOptions") if index is not None else None
            if options:
                request.instance.metadata_options = MetadataOptions(options)

    SpotFleetRequest.__init__ = __init__  # type: ignore[method-assign]
    SpotFleetRequest.create_spot_requests = create_spot_requests  # type: ignore[method-assign]


# SpotFleetRequestConfigData members moto's DescribeSpotFleetRequests leaves out.
_ECHOED_CONFIG_KEYS = (
    "LaunchTemplateConfigs",
    "ValidFrom",
    "ValidUntil",
    "TerminateInstancesWithExpiration",
    "ReplaceUnhealthyInstances",
    "ExcessCapacityTerminationPolicy",
    "OnDemandTargetCapacity",
    "OnDemandAllocationStrategy",
    "OnDemandMaxTotalPrice",
    "SpotMaxTotalPrice",
    "SpotMaintenanceStrategies",
    "InstancePoolsToUseCount",
    "TargetCapacityUnitType",
    "Context",
    "TagSpecifications",
)


def _as_timestamp(value: Any) -> Any:
    if isinstance(value, str):
        text = value.replace("T", " ").rstrip("Z")
        try:
            return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
        except ValueError:
            return value
    return value


def describe_spot_fleet_requests_returns_the_config_as_given() -> None:
    """DescribeSpotFleetRequests returns the request's SpotFleetRequestConfigData as it was sent.

    "DescribeSpotFleetRequests" / "SpotFleetRequestConfigData" (Amazon EC2 API Reference:
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSpotFleetRequests.html,
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_SpotFleetRequestConfigData.html):
    the answer's `SpotFleetRequestConfig` holds the request's `LaunchTemplateConfigs`,
    `ValidUntil`, `TerminateInstancesWithExpiration` and the other members it was given, and
    `LaunchSpecifications` only when the request had them. moto answers none of those and lists
    its internal launch specifications instead.
    """
    inner_request: Callable[[SpotFleets], ActionResult] = SpotFleets.request_spot_fleet
    inner_config: Any = SpotFleetRequest.spot_fleet_request_config

    def request_spot_fleet(self: SpotFleets) -> ActionResult:
        config: dict[str, Any] = self._get_param("SpotFleetRequestConfig", {})
        result = inner_request(self)
        answer: Any = result.result
        fleet: Any = self.ec2_backend.spot_fleet_requests.get(answer["SpotFleetRequestId"])
        if fleet is not None and "_sandbox_config_as_given" not in fleet.__dict__:
            given = {k: config[k] for k in _ECHOED_CONFIG_KEYS if k in config}
            for key in ("ValidFrom", "ValidUntil"):
                if key in given:
                    given[key] = _as_timestamp(given[key])
            fleet.__dict__["_sandbox_config_as_given"] = given
            fleet.__dict__["_sandbox_has_launch_specs"] = bool(config.get("LaunchSpecifications"))
        return result

    def spot_fleet_request_config(self: Any) -> dict[str, Any]:
        config: dict[str, Any] = dict(inner_config.fget(self))
        if "_sandbox_config_as_given" in self.__dict__:
            config.update(self.__dict__["_sandbox_config_as_given"])
            if not self.__dict__["_sandbox_has_launch_specs"]:
                config.pop("LaunchSpecifications", None)
        return config

    SpotFleets.request_spot_fleet = request_spot_fleet  # type: ignore[method-assign]
    SpotFleetRequest.spot_fleet_request_config = property(spot_fleet_request_config)  # type: ignore[assignment,method-assign]
