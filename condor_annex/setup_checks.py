"""What `-setup` makes sure of beyond its stack, and what `-check-setup` asks AWS about it.

- The fleets' service-linked roles (`contract.SERVICE_LINKED_ROLES`): `-setup` creates them,
  `-check-setup` reports each one missing with the command that creates it.
- The operator's launch path, as `DryRun` requests with the setup's own launch parameters
  (instance profile, security group, a subnet of its VPC, IMDSv2 required, annex tags):
  `DryRunOperation` means allowed, `UnauthorizedOperation` is reported with the action and
  resources refused. `CreateSchedule` has no dry run: `GetSchedule` on an unused annex schedule
  name tells the same policy statement apart (`ResourceNotFoundException` = may, `AccessDenied`
  = may not) without creating anything.
- The account and region the setup was recorded for, against the credentials in use.

Nothing here prints or exits: results are `Problem`s and "checked" lines for `setup.check_setup`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

import botocore.exceptions

from condor_annex import contract
from condor_annex.annex_settings import Settings, region_prefix, regional_macros
from condor_annex.aws import ACCESS_DENIED_CODES, error_code
from condor_annex.errors import AnnexError, translate_aws_error
from condor_annex.target import AwsTarget, check_recorded

PROBE_ANNEX_NAME = "check-setup-probe"
"""The annex name the dry runs and the schedule probe use; nothing is ever created under it."""
PROBE_LAUNCH_TEMPLATE_ID = "lt-00000000000000000"
"""A launch template id no template has: the fleet probes name one, as every fleet annex does;
the grants on annex-tagged templates themselves are exercised by the first real fleet annex."""
_DRY_RUN_ALLOWED = "DryRunOperation"
_NOT_FOUND = frozenset({"NoSuchEntity", "ResourceNotFoundException"})


@dataclass(frozen=True)
class Problem:
    what: str
    next_step: str


Progress = Callable[[str], None]


def create_role_command(role: contract.ServiceLinkedRole) -> str:
    return f"aws iam create-service-linked-role --aws-service-name {role.service}"


def _message(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


def _already_exists(exc: botocore.exceptions.ClientError) -> bool:
    """IAM's answer when the role is there: InvalidInput "Service role name ... has been taken
    in this account, please try a different suffix." (AWS Batch User Guide, "Create Amazon EC2
    spot fleet roles with the AWS CLI")."""
    code = error_code(exc)
    return code == "EntityAlreadyExists" or (
        code == "InvalidInput" and "has been taken" in _message(exc)
    )


# --- Service-linked roles ---------------------------------------------------------------------


def ensure_service_linked_roles(
    iam: Any, progress: Progress = lambda s: None
) -> tuple[list[str], list[Problem]]:
    """Create each fleet service-linked role the account lacks: (names created, problems for
    those that could not be, typically because the credentials may not
    iam:CreateServiceLinkedRole).

    Not a resource of the CDK stack on purpose: a service-linked role is one per account, shared
    by every region's setup, by other tools' fleets and by the console, and a stack-owned one
    would be deleted by `-destroy-setup` (or a failed first deploy's rollback) while they still
    use it. Creating one that exists is answered "has been taken", which counts as success.
    """
    created: list[str] = []
    problems: list[Problem] = []
    for role in contract.SERVICE_LINKED_ROLES:
        try:
            iam.create_service_linked_role(AWSServiceName=role.service)
        except botocore.exceptions.ClientError as exc:
            if _already_exists(exc):
                progress(f"service-linked role {role.role_name} already exists")
                continue
            problems.append(
                Problem(
                    f"the service-linked role {role.role_name} could not be created "
                    f"({error_code(exc)}: {_message(exc)})",
                    f"have an administrator of the account run `{create_role_command(role)}` "
                    "(once per account), then run `condor_annex -check-setup`",
                )
            )
            continue
        except botocore.exceptions.BotoCoreError as exc:
            raise translate_aws_error(
                exc, action="create the fleets' service-linked roles"
            ) from exc
        progress(f"created service-linked role {role.role_name}")
        created.append(role.role_name)
    return created, problems


def check_service_linked_roles(iam: Any) -> tuple[list[str], list[Problem]]:
    """(roles present, problems): each missing role by name with the command that creates it."""
    checked: list[str] = []
    problems: list[Problem] = []
    for role in contract.SERVICE_LINKED_ROLES:
        command = create_role_command(role)
        try:
            iam.get_role(RoleName=role.role_name)
        except botocore.exceptions.ClientError as exc:
            code = error_code(exc)
            if code in _NOT_FOUND:
                problems.append(
                    Problem(
                        f"the service-linked role {role.role_name} does not exist (Spot and "
                        "EC2 Fleet annexes need it)",
                        f"re-run `condor_annex -setup` (it creates it), or run `{command}`",
                    )
                )
            elif code in ACCESS_DENIED_CODES:
                problems.append(
                    Problem(
                        f"cannot tell whether the service-linked role {role.role_name} exists: "
                        f"iam:GetRole was refused ({code})",
                        "attach the setup's operator policy to these credentials, or have an "
                        f'administrator run `{command}` ("has been taken" means it exists)',
                    )
                )
            else:
                raise translate_aws_error(exc, action=f"check {role.role_name}") from exc
        else:
            checked.append(f"service-linked role {role.role_name} exists")
    return checked, problems


# --- The launch path, dry-run -------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchProbe:
    """One dry-run request: `action` as the operator's create would make it."""

    action: str
    resources: str
    """What the request names, for the report."""
    call: Callable[[], Any]
    allowed_codes: frozenset[str] = frozenset({_DRY_RUN_ALLOWED})


def _probe_tags() -> list[dict[str, str]]:
    from condor_annex.create_request import CreateRequest, annex_tags

    return annex_tags(CreateRequest(annex_name=PROBE_ANNEX_NAME, collector="", owner="check-setup"))


def launch_probes(
    ec2: Any,
    scheduler: Any,
    settings: Settings,
    *,
    image_id: str,
    instance_type: str,
    subnet_id: str,
) -> list[LaunchProbe]:
    """The operator's launch path as dry runs, with the setup's own launch parameters."""
    from condor_annex import spot
    from condor_annex.create_request import CreateRequest
    from condor_annex.launch_spec import METADATA_OPTIONS, build_ec2_fleet_request

    tags = _probe_tags()
    profile = {"Arn": settings.instance_profile_arn}
    groups = list(settings.security_group_ids)
    launched_tags = [
        {"ResourceType": "instance", "Tags": tags},
        {"ResourceType": "volume", "Tags": tags},
    ]
    where = (
        f"image {image_id}, {instance_type}, subnet {subnet_id}, security group "
        f"{','.join(groups)}, instance profile {settings.instance_profile_arn}, IMDSv2 required, "
        f"tag {contract.TAG_ANNEX_NAME}"
    )
    token = contract.new_client_token(PROBE_ANNEX_NAME)
    until = datetime.now(timezone.utc) + timedelta(hours=1)
    plan = spot.SpotPlan(overrides=[{"InstanceType": instance_type}])
    fleet_config = spot.build_spot_fleet_request_config(
        plan,
        launch_template_id=PROBE_LAUNCH_TEMPLATE_ID,
        launch_template_version="1",
        client_token=token,
        slots=1,
        fleet_role_arn=settings.spot_fleet_role_arn,
        valid_until=contract.utc_iso(until),
        tags=tags,
        subnet_ids=(subnet_id,),
    )
    ec2_fleet = build_ec2_fleet_request(
        CreateRequest(
            annex_name=PROBE_ANNEX_NAME,
            collector="",
            slots=1,
            aws_fleet=True,
            ec2_fleet_type="maintain",
        ),
        plan,
        launch_template_id=PROBE_LAUNCH_TEMPLATE_ID,
        launch_template_version="1",
        client_token=token,
        subnet_ids=(subnet_id,),
        valid_until=until,
        tags=tags,
    )
    schedule = contract.schedule_name(PROBE_ANNEX_NAME)
    return [
        LaunchProbe(
            "ec2:RunInstances",
            where,
            lambda: ec2.run_instances(
                DryRun=True,
                ImageId=image_id,
                InstanceType=instance_type,
                MinCount=1,
                MaxCount=1,
                SubnetId=subnet_id,
                SecurityGroupIds=groups,
                IamInstanceProfile=profile,
                MetadataOptions=METADATA_OPTIONS,
                TagSpecifications=launched_tags,
                InstanceInitiatedShutdownBehavior="terminate",
            ),
        ),
        LaunchProbe(
            "ec2:CreateLaunchTemplate",
            f"launch template {contract.launch_template_name(PROBE_ANNEX_NAME)} tagged "
            f"{contract.TAG_ANNEX_NAME}",
            lambda: ec2.create_launch_template(
                DryRun=True,
                LaunchTemplateName=contract.launch_template_name(PROBE_ANNEX_NAME),
                LaunchTemplateData={
                    "ImageId": image_id,
                    "IamInstanceProfile": profile,
                    "SecurityGroupIds": groups,
                    "MetadataOptions": METADATA_OPTIONS,
                    "TagSpecifications": launched_tags,
                },
                TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags}],
            ),
        ),
        LaunchProbe(
            "ec2:RequestSpotFleet",
            f"Spot Fleet tagged {contract.TAG_ANNEX_NAME}, subnet {subnet_id}, fleet role "
            f"{settings.spot_fleet_role_arn}",
            lambda: ec2.request_spot_fleet(DryRun=True, SpotFleetRequestConfig=fleet_config),
        ),
        LaunchProbe(
            "ec2:CreateFleet",
            f"EC2 Fleet tagged {contract.TAG_ANNEX_NAME}, subnet {subnet_id}",
            lambda: ec2.create_fleet(DryRun=True, **ec2_fleet),
        ),
        # CreateSchedule has no dry run; GetSchedule is granted on the same annex schedule names
        # (the operator policy's ManageLeaseSchedules), and an unused name is "not found".
        LaunchProbe(
            "scheduler:GetSchedule",
            f"schedule {schedule} (for scheduler:CreateSchedule, which has no dry run)",
            lambda: scheduler.get_schedule(Name=schedule),
            allowed_codes=frozenset({"ResourceNotFoundException"}),
        ),
    ]


def _decoded_refusal(sts: Any, message: str) -> Optional[str]:
    """`action on resource` from the encoded authorization message, when the credentials may
    sts:DecodeAuthorizationMessage (operators usually may not: then None)."""
    marker = "Encoded authorization failure message:"
    if sts is None or marker not in message:
        return None
    encoded = message.split(marker, 1)[1].strip().split()[0]
    try:
        decoded = json.loads(
            sts.decode_authorization_message(EncodedMessage=encoded)["DecodedMessage"]
        )
    except (
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        ValueError,
        KeyError,
    ):
        return None
    context = decoded.get("context", {}) if isinstance(decoded, dict) else {}
    if not context.get("action"):
        return None
    return f"{context['action']} on {context.get('resource', '?')}"


def run_launch_probes(
    probes: list[LaunchProbe], *, policy_arn: str, sts: Any = None
) -> tuple[list[str], list[Problem]]:
    """(allowed, problems): each refused call by action and resources, with the next step."""
    checked: list[str] = []
    problems: list[Problem] = []
    attach = (
        (
            f"attach the setup's operator policy {policy_arn} to these credentials"
            if policy_arn
            else "attach the setup's operator policy (ANNEX_DEFAULT_OPERATOR_POLICY_ARN) to these "
            "credentials"
        )
        + " (or ask the account's administrator to); if it is attached, re-run `condor_annex -setup` to update it"
    )
    for probe in probes:
        try:
            probe.call()
        except botocore.exceptions.ClientError as exc:
            code = error_code(exc)
            if code in probe.allowed_codes:
                checked.append(f"{probe.action} would be allowed ({probe.resources})")
            elif code in ACCESS_DENIED_CODES:
                decoded = _decoded_refusal(sts, _message(exc))
                detail = f": refused {decoded}" if decoded else ""
                problems.append(
                    Problem(
                        f"the operator's launch path is refused: {probe.action} ({code}) for "
                        f"{probe.resources}{detail}",
                        attach,
                    )
                )
            else:
                # Not a permission answer (a parameter EC2 rejected): no verdict either way.
                checked.append(
                    f"{probe.action} could not be dry-run ({code}: {_message(exc)[:120]})"
                )
        except botocore.exceptions.BotoCoreError as exc:
            raise translate_aws_error(exc, action=f"dry-run {probe.action}") from exc
        else:
            checked.append(f"{probe.action} answered a dry run without DryRunOperation")
    return checked, problems


# --- Account and region -------------------------------------------------------------------------


def recorded_target_problem(
    target: AwsTarget, macros: Mapping[str, str], config_file: str
) -> Optional[Problem]:
    """The mismatch `check_recorded` refuses destructive verbs for, as a problem to report:
    credentials of another account than `-setup` recorded, or a region with no setup of its own
    (a region set up later is recorded under its per-region names and matches)."""
    upper = {k.upper(): v for k, v in macros.items()}
    regional = any(k.startswith(region_prefix(target.region) + ".") for k in upper)
    recorded_region = upper.get(contract.MACRO_AWS_REGION, "").strip()
    view = regional_macros(upper, target.region)
    try:
        check_recorded(
            target,
            account_id=view.get(contract.MACRO_AWS_ACCOUNT_ID, "").strip(),
            region=target.region if regional else recorded_region,
            config_file=config_file,
            action="check the setup",
        )
    except AnnexError as mismatch:
        return Problem(mismatch.message, mismatch.next_step or "")
    return None
