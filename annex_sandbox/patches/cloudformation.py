"""CloudFormation fidelity fixes: change sets as stack updates use them, S3 template URLs."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlparse

import moto.cloudformation.models as cfn_models
import moto.cloudformation.responses as cfn_responses
import moto.cloudformation.utils as cfn_utils
from moto.cloudformation.exceptions import CloudFormationError, ValidationError
from moto.cloudformation.models import CloudFormationBackend
from moto.cloudformation.responses import CloudFormationResponse
from moto.core.responses import ActionResult, EmptyResult


def cloudformation_stack_outputs_from_change_sets() -> None:
    """A stack created or updated through a change set reports its template's Outputs.

    "Updating stacks using change sets" / "DescribeStacks" (AWS CloudFormation User Guide and API
    Reference, https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_Stack.html):
    executing a change set makes its template the stack's template, Outputs included. moto
    applies the resources but keeps the outputs of the (empty) template the stack was created
    with, so `cdk deploy` in its default change-set mode sees no outputs.
    """
    original: Callable[..., None] = CloudFormationBackend.execute_change_set

    def execute_change_set(
        self: CloudFormationBackend, change_set_name: str, stack_name: str | None = None
    ) -> None:
        original(self, change_set_name, stack_name)
        change_set = self.change_sets.get(change_set_name) or next(
            (c for c in self.change_sets.values() if c.change_set_name == change_set_name), None
        )
        if change_set is None:
            return
        stack: Any = self.stacks[change_set.stack_id]
        stack._parse_template()
        stack.description = stack.template_dict.get("Description")
        stack.output_map = stack._create_output_map()

    CloudFormationBackend.execute_change_set = execute_change_set  # type: ignore[method-assign]


def _s3_location_candidates(template_url: str) -> list[tuple[str, str]]:
    """(bucket, key) readings of an S3 URL: s3://, virtual-hosted and path-style, any host."""
    if template_url.startswith("s3://"):
        bucket, _, key = template_url[len("s3://") :].partition("/")
        return [(bucket, key)]
    parts = urlparse(template_url)
    host = (parts.hostname or "").lower()
    path = unquote(parts.path).lstrip("/")
    candidates = []
    first_label, _, rest_of_host = host.partition(".")
    # Virtual-hosted: <bucket>.s3[.-]<region>.amazonaws.com, <bucket>.localhost, ...
    is_ip_address = host.replace(".", "").isdigit()
    if (
        rest_of_host
        and not is_ip_address
        and first_label not in ("s3", "localhost")
        and not first_label.startswith("s3-")
    ):
        candidates.append((host.split(".s3", 1)[0] if ".s3" in host else first_label, path))
    # Path-style: <host>/<bucket>/<key>
    bucket, _, key = path.partition("/")
    if key:
        candidates.append((bucket, key))
    return candidates


def cloudformation_resolves_s3_template_urls() -> None:
    """TemplateURL may be any S3 object URL; moto resolves it against its own S3.

    "CreateStack" / "CreateChangeSet", parameter TemplateURL (AWS CloudFormation API Reference,
    https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_CreateStack.html):
    the URL of a template in an S3 bucket, virtual-hosted or path-style, with or without a
    region. moto reads `<bucket>` from the first host label unless the URL says `localhost`, so
    the CDK CLI's URLs fail with NoSuchBucket when the endpoint is 127.0.0.1 or the URL is
    virtual-hosted with a region.
    """
    original: Callable[[str, str, str], str] = cfn_utils.get_stack_from_s3_url

    def get_stack_from_s3_url(template_url: str, account_id: str, partition: str) -> str:
        from moto.s3.models import s3_backends

        backend = s3_backends[account_id][partition]
        for bucket, key in _s3_location_candidates(template_url):
            if bucket in backend.buckets:
                found: Any = backend.get_object(bucket, key)
                if found is not None:
                    return str(found.value.decode("utf-8"))
        return original(template_url, account_id, partition)

    cfn_utils.get_stack_from_s3_url = get_stack_from_s3_url
    cfn_models.get_stack_from_s3_url = get_stack_from_s3_url  # type: ignore[attr-defined]
    cfn_responses.get_stack_from_s3_url = get_stack_from_s3_url  # type: ignore[attr-defined]


def cloudformation_ssm_parameter_generated_name() -> None:
    """An `AWS::SSM::Parameter` without `Name` gets a generated name instead of failing.

    "AWS::SSM::Parameter", property Name (AWS CloudFormation User Guide,
    https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-ssm-parameter.html):
    "If you don't specify a name, AWS CloudFormation generates a unique physical ID and uses that
    ID for the parameter name" (of the form `CFN-<LogicalId>-<random>`). moto passes None on to
    PutParameter and the stack fails (the CDK's `ssm.StringParameter` omits the name by default).
    """
    from moto.cloudformation.utils import random_suffix
    from moto.ssm.models import Parameter

    original: Callable[..., Any] = Parameter.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create_from_cloudformation_json(
        cls: type[Parameter],
        /,
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Any:
        properties = cloudformation_json.setdefault("Properties", {})
        if not properties.get("Name"):
            # CloudFormation's own form, CFN-<logical id>-<random>: never "aws"/"ssm"-prefixed.
            logical_id = kwargs.get("LogicalId") or "Parameter"
            properties["Name"] = f"CFN-{logical_id}-{random_suffix()}"
        return original(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)

    Parameter.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)  # type: ignore[method-assign,assignment]


def cloudformation_deletes_managed_policies() -> None:
    """Deleting a stack deletes its `AWS::IAM::ManagedPolicy`, detaching it first.

    "AWS::IAM::ManagedPolicy" (AWS CloudFormation User Guide,
    https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-iam-managedpolicy.html)
    is a deletable resource: on stack deletion CloudFormation detaches it from the roles, users
    and groups it names and deletes it, before the roles it depends on. moto has no delete for it,
    so the policy stays attached and deleting the role fails with DeleteConflict.
    """
    from moto.iam.models import ManagedPolicy, iam_backends
    from moto.utilities.utils import get_partition

    def delete_from_cloudformation_json(
        cls: type[ManagedPolicy],
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
    ) -> None:
        backend = iam_backends[account_id][get_partition(region_name)]
        arn = resource_name
        if arn not in backend.managed_policies:
            return
        for role in backend.roles.values():
            if arn in role.managed_policies:
                backend.detach_role_policy(arn, role.name)
        for user in backend.users.values():
            if arn in user.managed_policies:
                backend.detach_user_policy(arn, user.name)
        for group in backend.groups.values():
            if arn in group.managed_policies:
                backend.detach_group_policy(arn, group.name)
        backend.delete_policy(arn)

    ManagedPolicy.delete_from_cloudformation_json = classmethod(delete_from_cloudformation_json)  # type: ignore[method-assign,assignment]


class ChangeSetNotFound(CloudFormationError):
    """CloudFormation's 404 for a change set name or ARN the stack does not have.

    "ChangeSetNotFoundException" (AWS CloudFormation API Reference, Common errors of
    DescribeChangeSet/ExecuteChangeSet): "The specified change set name or ID doesn't exist."
    """

    code = "ChangeSetNotFound"

    def __init__(self, change_set_name: str) -> None:
        super().__init__(f"ChangeSet [{change_set_name}] does not exist")


class InvalidChangeSetStatus(CloudFormationError):
    """ExecuteChangeSet of a change set that is not AVAILABLE (FAILED, already executed, ...)."""

    code = "InvalidChangeSetStatus"

    def __init__(self, change_set_id: str, status: str) -> None:
        super().__init__(
            f"ChangeSet [{change_set_id}] cannot be executed in its current status of [{status}]"
        )


def _change_set_stack(backend: CloudFormationBackend, stack_name: str | None) -> Any:
    """The stack a change set is named in (by name, live stacks only, or by stack ID)."""
    if not stack_name:
        raise ValidationError(
            message="StackName must be specified if ChangeSetName is not specified as an ARN."
        )
    try:
        return backend.get_stack(stack_name)
    except ValidationError:
        raise ValidationError(message=f"Stack [{stack_name}] does not exist") from None


def _find_change_set(
    backend: CloudFormationBackend, change_set_name: str, stack_name: str | None
) -> Any:
    """The change set `change_set_name` (a name within `stack_name`, or an ARN), else None.

    A name is unique within its stack only (`cdk-deploy-change-set` exists once per stack), so
    a name is looked up in the named stack; an ARN identifies the change set on its own.
    """
    if change_set_name.startswith("arn:"):
        return backend.change_sets.get(change_set_name)
    stack = _change_set_stack(backend, stack_name)
    return next(
        (
            c
            for c in backend.change_sets.values()
            if c.stack_id == stack.stack_id and c.change_set_name == change_set_name
        ),
        None,
    )


def cloudformation_change_sets_belong_to_their_stack() -> None:
    """Change sets are found in the stack they name; a missing one answers as CloudFormation does.

    AWS CloudFormation API Reference: "DescribeChangeSet" — StackName: "If you specified the
    name of a change set, specify the stack name or ID (ARN) of the change set"; an unknown
    change set is `ChangeSetNotFound` (HTTP 404), which the CDK CLI waits for after deleting
    the previous `cdk-deploy-change-set`. "DeleteChangeSet" lists no not-found error: deleting a
    change set the (existing) stack does not have succeeds, and the CDK CLI relies on it before
    every update ("The delete request is successful as long as the stack exists"). "ExecuteChangeSet":
    `ChangeSetNotFound`, and `InvalidChangeSetStatus` for a change set that is not AVAILABLE.
    "ListChangeSets" lists the change sets of the stack named. moto looks names up across every
    stack (the CDK bootstrap stack's `cdk-deploy-change-set` was found, or deleted, for the
    setup stack), answers a missing change set with ValidationError "Stack with id … does not
    exist", fails DeleteChangeSet of a missing one with HTTP 500 and lists every stack's.
    """

    def describe_change_set(self: CloudFormationResponse) -> ActionResult:
        name = self._get_param("ChangeSetName")
        change_set = _find_change_set(
            self.cloudformation_backend, name, self._get_param("StackName")
        )
        if change_set is None:
            raise ChangeSetNotFound(name)
        return ActionResult(change_set)

    def delete_change_set(self: CloudFormationResponse) -> ActionResult:
        backend = self.cloudformation_backend
        name = self._get_param("ChangeSetName")
        change_set = _find_change_set(backend, name, self._get_param("StackName"))
        if change_set is not None:
            del backend.change_sets[change_set.change_set_id]
        elif name.startswith("arn:"):
            raise ChangeSetNotFound(name)
        return EmptyResult()

    def execute_change_set(self: CloudFormationResponse) -> ActionResult:
        backend = self.cloudformation_backend
        name = self._get_param("ChangeSetName")
        stack_name = self._get_param("StackName")
        change_set = _find_change_set(backend, name, stack_name)
        if change_set is None:
            raise ChangeSetNotFound(name)
        if change_set.execution_status != "AVAILABLE":
            raise InvalidChangeSetStatus(change_set.change_set_id, str(change_set.execution_status))
        backend.execute_change_set(
            change_set_name=change_set.change_set_id, stack_name=change_set.stack_id
        )
        return EmptyResult()

    def list_change_sets(self: CloudFormationResponse) -> ActionResult:
        stack = _change_set_stack(self.cloudformation_backend, self._get_param("StackName"))
        summaries = [
            c
            for c in self.cloudformation_backend.change_sets.values()
            if c.stack_id == stack.stack_id
        ]
        return ActionResult({"Summaries": summaries})

    CloudFormationResponse.describe_change_set = describe_change_set  # type: ignore[method-assign]
    CloudFormationResponse.delete_change_set = delete_change_set  # type: ignore[method-assign]
    CloudFormationResponse.execute_change_set = execute_change_set  # type: ignore[method-assign]
    CloudFormationResponse.list_change_sets = list_change_sets  # type: ignore[method-assign]


def cloudformation_executing_a_change_set_clears_the_stacks_change_sets() -> None:
    """After a change set executes, the stack has no change sets and takes its parameters.

    "Execute a change set for a CloudFormation stack" (AWS CloudFormation User Guide,
    https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/using-cfn-updating-stacks-changesets-execute.html):
    "After you execute a change set, CloudFormation deletes any additional change sets that are
    associated with the stack because they're no longer valid for the updated stack"; the
    executed one leaves the stack's list too ("Unless you delete them, CloudFormation retains all
    change sets until you update the stack", "Delete a change set"). The stack's parameters are
    the executed change set's, so an unchanged re-submission is recognised as no change. moto
    keeps every change set forever, and keeps the parameters the stack was created with.
    """
    original: Callable[..., None] = CloudFormationBackend.execute_change_set

    def execute_change_set(
        self: CloudFormationBackend, change_set_name: str, stack_name: str | None = None
    ) -> None:
        original(self, change_set_name, stack_name)
        change_set = self.change_sets.get(change_set_name)
        if change_set is None:
            return
        stack: Any = self.stacks[change_set.stack_id]
        stack.parameters = dict(change_set.parameters)
        for change_set_id in [
            i for i, c in self.change_sets.items() if c.stack_id == change_set.stack_id
        ]:
            del self.change_sets[change_set_id]

    CloudFormationBackend.execute_change_set = execute_change_set  # type: ignore[method-assign]


def cloudformation_change_set_without_changes_fails() -> None:
    """A change set that changes nothing is created FAILED, not refused.

    "CreateChangeSet" / "Update CloudFormation stacks using change sets" (AWS CloudFormation User
    Guide): submitting the stack's own template and parameters yields a change set with Status
    FAILED, ExecutionStatus UNAVAILABLE and StatusReason "The submitted information didn't contain
    changes. Submit different information to create a change set." — the answer the CDK CLI
    treats as "no changes" (it then deletes that change set). Only UpdateStack answers
    ValidationError "No updates are to be performed."; moto gives CreateChangeSet that error too
    when the template comes as TemplateBody.
    """
    original: Callable[..., None] = CloudFormationResponse._validate_different_update

    def _validate_different_update(
        self: CloudFormationResponse,
        incoming_params: list[dict[str, Any]] | None,
        stack_body: str,
        old_stack: Any,
    ) -> None:
        if self._get_action() == "CreateChangeSet":
            return  # moto's backend marks the change set FAILED with AWS's StatusReason
        original(self, incoming_params, stack_body, old_stack)

    CloudFormationResponse._validate_different_update = _validate_different_update  # type: ignore[method-assign]


def cloudformation_use_previous_value_of_ssm_parameters() -> None:
    """`UsePreviousValue` of an SSM-typed parameter reuses its Parameter Store name.

    "Parameter" / "UsePreviousValue" (AWS CloudFormation API Reference) and "Specify existing
    resources at runtime with CloudFormation-supplied parameter types" (User Guide): for
    `AWS::SSM::Parameter::Value<…>` parameters the parameter's value is the Parameter Store
    key, resolved anew on every update (DescribeStacks shows it as ParameterValue, the value as
    ResolvedValue). `cdk deploy` updates pass the CDK's `BootstrapVersion` that way. moto
    reuses the resolved value ("30") as the key and ExecuteChangeSet fails with HTTP 500.
    """
    from moto.cloudformation.models import Stack

    def stack_parameters(self: Any) -> dict[str, Any]:
        values = dict(self.resource_map.resolved_parameters)
        slots = self.resource_map._template.get("Parameters", {})
        given = self.resource_map.input_parameters
        for key, slot in slots.items():
            if str(slot.get("Type", "")).startswith("AWS::SSM::Parameter::"):
                key_in_store = given.get(key, slot.get("Default"))
                if key_in_store is not None:
                    values[key] = key_in_store
        return values

    Stack.stack_parameters = property(stack_parameters)  # type: ignore[method-assign,assignment]


def _authorize_ingress(backend: Any, group: Any, rules: list[dict[str, Any]]) -> None:
    """Add a template's `SecurityGroupIngress` rules (IPv4, IPv6 or group sources) to `group`."""
    for rule in rules:
        source = {
            key: rule[field]
            for key, field in (
                ("GroupId", "SourceSecurityGroupId"),
                ("GroupName", "SourceSecurityGroupName"),
            )
            if rule.get(field)
        }
        ranges = [{key: rule[key]} for key in ("CidrIp", "CidrIpv6") if rule.get(key)]
        backend.authorize_security_group_ingress(
            group_name_or_id=group.id,
            ip_protocol=str(rule["IpProtocol"]),
            from_port=rule.get("FromPort"),
            to_port=rule.get("ToPort"),
            ip_ranges=ranges,
            source_groups=[source] if source else [],
            vpc_id=group.vpc_id,
        )


def cloudformation_security_groups_admit_ipv6_ranges() -> None:
    """A template's `SecurityGroupIngress` rule with `CidrIpv6` admits that IPv6 range.

    "AWS::EC2::SecurityGroup Ingress" (AWS CloudFormation User Guide,
    https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-properties-ec2-security-group-ingress.html):
    a rule names its source as `CidrIp`, `CidrIpv6`, a source group or a prefix list; the CDK
    writes IPv6 `-pool-cidr`s as `CidrIpv6`. moto reads `CidrIp` only, so IPv6 pool ranges
    became rules admitting nothing.
    """
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.security_groups import SecurityGroup

    original: Callable[..., Any] = SecurityGroup.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create_from_cloudformation_json(
        cls: type[SecurityGroup],
        /,
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Any:
        properties = cloudformation_json.get("Properties", {})
        rules = properties.get("SecurityGroupIngress", [])
        ipv6 = [r for r in rules if r.get("CidrIpv6")]
        if not ipv6:
            return original(
                cls, resource_name, cloudformation_json, account_id, region_name, **kwargs
            )
        others = [r for r in rules if not r.get("CidrIpv6")]
        template = {
            **cloudformation_json,
            "Properties": {**properties, "SecurityGroupIngress": others},
        }
        group = original(cls, resource_name, template, account_id, region_name, **kwargs)
        _authorize_ingress(ec2_backends[account_id][region_name], group, ipv6)
        return group

    SecurityGroup.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)  # type: ignore[method-assign,assignment]


def cloudformation_updates_security_group_rules_in_place() -> None:
    """A stack update that changes only a security group's rules keeps the group.

    "AWS::EC2::SecurityGroup" (AWS CloudFormation User Guide,
    https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-ec2-securitygroup.html):
    `SecurityGroupIngress` (and `Tags`) update with "No interruption"; only `GroupDescription`,
    `GroupName` and `VpcId` require replacement. Re-running `-setup` with another `-pool-cidr`
    must keep the group annex instances run in. moto deletes the group and makes a new one on
    every change (a new ID; against AWS the delete would fail while instances use it).
    """
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.security_groups import SecurityGroup

    original: Callable[..., Any] = SecurityGroup.update_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def update_from_cloudformation_json(
        cls: type[SecurityGroup],
        original_resource: Any,
        new_resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
    ) -> Any:
        properties = cloudformation_json.get("Properties", {})
        replaced = (
            properties.get("GroupDescription") != original_resource.description
            or properties.get("VpcId") != original_resource.vpc_id
            or properties.get("GroupName", original_resource.name) != original_resource.name
        )
        if replaced:
            return original(
                cls, original_resource, new_resource_name, cloudformation_json, account_id,
                region_name,
            )  # fmt: skip
        backend = ec2_backends[account_id][region_name]
        original_resource.ingress_rules = []
        _authorize_ingress(backend, original_resource, properties.get("SecurityGroupIngress", []))
        for tag in properties.get("Tags", []):
            original_resource.add_tag(tag["Key"], tag["Value"])
        return original_resource

    SecurityGroup.update_from_cloudformation_json = classmethod(update_from_cloudformation_json)  # type: ignore[method-assign,assignment]


def _parsed_template(template: str) -> dict[str, Any]:
    """A JSON template's document; {} for YAML (not checked here: the CDK writes JSON)."""
    try:
        parsed: Any = json.loads(template)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _refuse_missing_vpcs(
    backend: CloudFormationBackend, template: str, parameters: dict[str, Any]
) -> None:
    from moto.ec2.models import ec2_backends

    slots = _parsed_template(template).get("Parameters") or {}
    vpcs = ec2_backends[backend.account_id][backend.region_name].vpcs
    for name, slot in slots.items():
        if not isinstance(slot, dict) or slot.get("Type") != "AWS::EC2::VPC::Id":
            continue
        value = parameters.get(name, slot.get("Default"))
        if value and value not in vpcs:
            raise ValidationError(
                message=(
                    f"Parameter validation failed: parameter value {value} for parameter name "
                    f"{name} does not exist"
                )
            )


def cloudformation_validates_vpc_id_parameters() -> None:
    """An `AWS::EC2::VPC::Id` parameter naming no VPC is refused before anything changes.

    "Specify existing resources at runtime with CloudFormation-supplied parameter types" (AWS
    CloudFormation User Guide,
    https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/cloudformation-supplied-parameter-types.html):
    AWS-specific parameter types are validated "against existing values in the user's account"
    when the stack or change set is created; a missing VPC is ValidationError "Parameter
    validation failed: parameter value vpc-… for parameter name … does not exist". moto accepts
    any string and fails while executing: a re-run of `-setup -vpc-id` with a typo deleted the
    security group and then answered an EC2 error, leaving the stack half-updated.
    """
    original_change_set: Callable[..., tuple[str, str]] = CloudFormationBackend.create_change_set
    original_stack: Callable[..., Any] = CloudFormationBackend.create_stack

    def create_change_set(
        self: CloudFormationBackend, stack_name: str, change_set_name: str, template: str,
        parameters: dict[str, str], *args: Any, **kwargs: Any,
    ) -> tuple[str, str]:  # fmt: skip
        _refuse_missing_vpcs(self, template, parameters)
        return original_change_set(
            self, stack_name, change_set_name, template, parameters, *args, **kwargs
        )

    def create_stack(
        self: CloudFormationBackend, name: str, template: str, parameters: dict[str, Any],
        *args: Any, **kwargs: Any,
    ) -> Any:  # fmt: skip
        _refuse_missing_vpcs(self, template, parameters)
        return original_stack(self, name, template, parameters, *args, **kwargs)

    CloudFormationBackend.create_change_set = create_change_set  # type: ignore[method-assign]
    CloudFormationBackend.create_stack = create_stack  # type: ignore[method-assign]


def cloudformation_failed_update_rolls_back() -> None:
    """A change set whose update fails rolls the stack back to its previous template.

    "Monitor stack progress" / "Stack status codes" (AWS CloudFormation User Guide,
    https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/view-stack-events.html):
    ExecuteChangeSet itself succeeds; when a resource then fails, the stack goes
    UPDATE_ROLLBACK_IN_PROGRESS (the event's reason names the failure) and, once the previous
    resources are restored, UPDATE_ROLLBACK_COMPLETE — the state `cdk deploy` reports as a
    failed deployment. moto has no rollback ("TODO: handle execution errors and implement
    rollback"): ExecuteChangeSet answered the resource's error and left the stack half-updated.
    """
    original: Callable[..., None] = CloudFormationBackend.execute_change_set

    def execute_change_set(
        self: CloudFormationBackend, change_set_name: str, stack_name: str | None = None
    ) -> None:
        change_set = self.change_sets.get(change_set_name)
        if change_set is None or change_set.change_set_type != "UPDATE":
            original(self, change_set_name, stack_name)
            return
        stack: Any = self.stacks[change_set.stack_id]
        previous_template = stack.template
        previous_parameters = dict(stack.resource_map.input_parameters)
        try:
            original(self, change_set_name, stack_name)
        except Exception as exc:
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            stack._add_stack_event(
                "UPDATE_ROLLBACK_IN_PROGRESS",
                resource_status_reason=f"The following resource(s) failed to update: {reason}",
            )
            try:
                with warnings.catch_warnings():
                    # The resource that failed was never made: nothing of it to delete.
                    warnings.filterwarnings("ignore", message=".*as it was never created")
                    stack.resource_map.update(
                        stack.parse_template(previous_template), previous_parameters
                    )
            except Exception as rollback_exc:
                stack.status = "UPDATE_ROLLBACK_FAILED"
                stack._add_stack_event(
                    "UPDATE_ROLLBACK_FAILED", resource_status_reason=str(rollback_exc)
                )
            else:
                stack.template = previous_template
                stack._parse_template()
                stack.output_map = stack._create_output_map()
                stack.status = "UPDATE_ROLLBACK_COMPLETE"
                stack._add_stack_event("UPDATE_ROLLBACK_COMPLETE")
            for change_set_id in [
                i for i, c in self.change_sets.items() if c.stack_id == stack.stack_id
            ]:
                del self.change_sets[change_set_id]

    CloudFormationBackend.execute_change_set = execute_change_set  # type: ignore[method-assign]


def _policy_bytes(document: Any) -> bytes:
    """A template's `PolicyDocument` (object or JSON string) as the bytes PutBucketPolicy stores."""
    return (document if isinstance(document, str) else json.dumps(document)).encode()


def cloudformation_creates_bucket_policies() -> None:
    """`AWS::S3::BucketPolicy` puts its policy on the bucket, updates it, and deletes it.

    "AWS::S3::BucketPolicy" (AWS CloudFormation User Guide,
    https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-s3-bucketpolicy.html):
    the resource "applies an Amazon S3 bucket policy to an Amazon S3 bucket"; `PolicyDocument`
    updates with no interruption, a new `Bucket` requires replacement (the old bucket loses the
    policy), and deleting the resource deletes the bucket's policy. moto has no model for the
    type and skips it with a warning, so the setup stack's config bucket had no policy at all
    (the CDK's `enforceSSL` deny of non-TLS requests was never enforced).
    """
    from moto.cloudformation import parsing
    from moto.core.common_models import CloudFormationModel
    from moto.s3.exceptions import MissingBucket
    from moto.s3.models import s3_backends
    from moto.utilities.utils import get_partition

    def s3_backend(account_id: str, region_name: str) -> Any:
        return s3_backends[account_id][get_partition(region_name)]

    class FakeBucketPolicy(CloudFormationModel):
        """The stack's record of one bucket's policy (the policy itself lives on the bucket)."""

        def __init__(self, physical_id: str, bucket_name: str, document: Any) -> None:
            self.physical_id = physical_id
            self.bucket_name = bucket_name
            self.document = document

        @property
        def physical_resource_id(self) -> str:
            return self.physical_id

        @staticmethod
        def cloudformation_name_type() -> str:
            return ""  # CloudFormation generates the physical ID; the type has no name property

        @staticmethod
        def cloudformation_type() -> str:
            return "AWS::S3::BucketPolicy"

        @classmethod
        def has_cfn_attr(cls, attr: str) -> bool:
            return False  # the type has no Fn::GetAtt attributes

        @classmethod
        def create_from_cloudformation_json(
            cls,
            resource_name: str,
            cloudformation_json: Any,
            account_id: str,
            region_name: str,
            **kwargs: Any,
        ) -> FakeBucketPolicy:
            properties = cloudformation_json["Properties"]
            bucket, document = str(properties["Bucket"]), properties["PolicyDocument"]
            s3_backend(account_id, region_name).put_bucket_policy(bucket, _policy_bytes(document))
            return cls(resource_name, bucket, document)

        @classmethod
        def update_from_cloudformation_json(
            cls,
            original_resource: Any,
            new_resource_name: str,
            cloudformation_json: Any,
            account_id: str,
            region_name: str,
        ) -> FakeBucketPolicy:
            properties = cloudformation_json["Properties"]
            bucket, document = str(properties["Bucket"]), properties["PolicyDocument"]
            backend = s3_backend(account_id, region_name)
            backend.put_bucket_policy(bucket, _policy_bytes(document))
            if bucket == original_resource.bucket_name:
                original_resource.document = document
                return original_resource  # type: ignore[no-any-return]
            original_resource.delete(account_id, region_name)
            return cls(new_resource_name, bucket, document)

        @classmethod
        def delete_from_cloudformation_json(
            cls,
            resource_name: str,
            cloudformation_json: Any,
            account_id: str,
            region_name: str,
        ) -> None:
            pass  # never reached: the stack deletes the instance it holds (`delete`)

        def delete(self, account_id: str, region_name: str) -> None:
            # A bucket deleted first took its policy with it.
            with contextlib.suppress(MissingBucket):
                s3_backend(account_id, region_name).delete_bucket_policy(self.bucket_name)

    # moto lists its CloudFormation models once (CloudFormationModel.__subclasses__(), cached).
    parsing.get_model_list.cache_clear()
    parsing.get_model_map.cache_clear()
    parsing.get_name_type_map.cache_clear()
    if parsing.resource_class_from_type("AWS::S3::BucketPolicy") is not FakeBucketPolicy:
        raise RuntimeError("moto did not pick up the AWS::S3::BucketPolicy model")


_INTRINSICS = frozenset({"Ref", "Fn::If"})
"""The intrinsics that can resolve to `AWS::NoValue`."""


def _is_intrinsic(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _INTRINSICS


def cloudformation_no_value_removes_list_elements() -> None:
    """`AWS::NoValue` in a list removes the element, as it removes a property.

    "Pseudo parameters reference" (AWS CloudFormation User Guide, AWS::NoValue,
    https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/pseudo-parameter-reference.html):
    "Removes the corresponding resource property when specified as a return value in the Fn::If
    intrinsic function." The CDK bootstrap template relies on it inside lists (its roles' trust
    policies add a `TrustedAccounts` statement with `Fn::If [HasTrustedAccounts, ..., NoValue]`).
    moto drops a property that resolves to nothing but keeps a list element as `null`, so those
    trust policies held `null` statements that no IAM policy engine can evaluate.
    """
    import moto.cloudformation.parsing as parsing

    original: Callable[[Any, Any], Any] = parsing.clean_json

    def clean_json(resource_json: Any, resources_map: Any) -> Any:
        if not isinstance(resource_json, list):
            return original(resource_json, resources_map)
        cleaned = [(raw, clean_json(raw, resources_map)) for raw in resource_json]
        return [value for raw, value in cleaned if not (value is None and _is_intrinsic(raw))]

    # moto's clean_json recurses through the module global, so nested lists are covered too.
    parsing.clean_json = clean_json
