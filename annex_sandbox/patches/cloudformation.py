"""CloudFormation fidelity fixes: outputs after change sets, S3 template URLs of every form."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlparse

import moto.cloudformation.models as cfn_models
import moto.cloudformation.responses as cfn_responses
import moto.cloudformation.utils as cfn_utils
from moto.cloudformation.models import CloudFormationBackend


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
