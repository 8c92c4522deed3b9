"""IAM policy evaluation fidelity fixes (used when IAM enforcement is on)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from moto.iam.access_control import IAMPolicyStatement

_ACCOUNT_PRINCIPAL = re.compile(r"^(?:arn:aws[a-z-]*:iam::(\d{12}):root|(\d{12}))$")


def iam_trust_policy_account_principals() -> None:
    """A trust policy naming an account (`arn:aws:iam::<id>:root` or `<id>`) trusts its principals.

    "AWS JSON policy elements: Principal" / "AWS account principals" (IAM User Guide,
    https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_principal.html):
    naming an account in a role trust policy delegates to the account, so any of its users and
    roles whose identity policy allows `sts:AssumeRole` may assume the role. moto only matches
    the exact principal ARN, and fails with HTTP 500 when the policy names only a Service.
    """
    original: Callable[[IAMPolicyStatement, str], bool] = IAMPolicyStatement._check_principal

    def _check_principal(self: IAMPolicyStatement, principal: str) -> bool:
        expected: Any = self._statement.get("Principal")
        if not expected:
            return True
        aws = expected.get("AWS") if isinstance(expected, dict) else expected
        if aws is None:
            return False  # only Service / Federated principals: no IAM user or role matches
        if original(self, principal):
            return True
        parts = principal.split(":")
        caller_account = parts[4] if len(parts) > 4 else None
        for entry in aws if isinstance(aws, list) else [aws]:
            match = _ACCOUNT_PRINCIPAL.match(str(entry))
            if match and caller_account in (match.group(1), match.group(2)):
                return True
        return False

    IAMPolicyStatement._check_principal = _check_principal  # type: ignore[method-assign]


def iam_authorizes_against_resource_arns() -> None:
    """IAM actions are authorized against the instance profile or policy they name.

    "Actions, resources, and condition keys for AWS Identity and Access Management"
    (Service Authorization Reference,
    https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsidentityandaccessmanagementiam.html):
    GetInstanceProfile (and the other instance-profile actions) act on the `instance-profile`
    resource, GetPolicy/GetPolicyVersion on the `policy` resource. moto checks them against `*`,
    so a policy scoped to those ARNs (least privilege) is denied.
    """
    from moto.iam.models import iam_backends
    from moto.iam.responses import IamResponse

    original: Callable[[IamResponse], str] = IamResponse._determine_resource

    def _determine_resource(self: IamResponse) -> str:
        data: Any = self.data
        if "InstanceProfileName" in data:
            name = data["InstanceProfileName"][0]
            backend = iam_backends[self.current_account][self.partition]
            for profile in backend.instance_profiles.values():
                if profile.name == name:
                    return str(profile.arn)
            return "*"
        resource = original(self)
        if resource == "*" and "PolicyArn" in data:
            return str(data["PolicyArn"][0])
        return resource

    IamResponse._determine_resource = _determine_resource  # type: ignore[method-assign]


def iam_inline_policies_stored_as_json() -> None:
    """Inline policies CloudFormation writes (a Role's `Policies`) are stored as JSON documents.

    "GetRolePolicy" (IAM API Reference,
    https://docs.aws.amazon.com/IAM/latest/APIReference/API_GetRolePolicy.html): the document
    comes back as URL-encoded JSON, whoever wrote it. moto stores the template's dict as is, so
    GetRolePolicy returns a Python repr and policy evaluation under IAM enforcement fails with
    HTTP 500 (KeyError 'policy_document').
    """
    import json

    from moto.iam.models import Group, Role, User

    for model in (Role, Group, User):
        original: Callable[[Any, str, Any], None] = model.put_policy

        def put_policy(
            self: Any,
            policy_name: str,
            policy_json: Any,
            _original: Callable[[Any, str, Any], None] = original,
        ) -> None:
            if not isinstance(policy_json, str):
                policy_json = json.dumps(policy_json)
            _original(self, policy_name, policy_json)

        model.put_policy = put_policy  # type: ignore[method-assign]


def cloudformation_roles_attach_managed_policy_arns() -> None:
    """A CloudFormation `AWS::IAM::Role`'s `ManagedPolicyArns` are attached to it.

    "AWS::IAM::Role" (AWS CloudFormation User Guide,
    https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-iam-role.html):
    `ManagedPolicyArns` lists the managed policies (customer or AWS managed) attached to the role;
    deleting the role detaches them. moto ignores the property, so a role made by a stack (the
    Spot Fleet role, the CDK's deploy role with `AWSCloudFormationReadOnlyAccess`) has none of
    its managed policies and the IAM engine would judge it without them.
    """
    import json

    from moto.iam.aws_managed_policies import aws_managed_policies_data
    from moto.iam.models import AWSManagedPolicy, Role, iam_backends
    from moto.utilities.utils import get_partition

    create: Any = Role.create_from_cloudformation_json
    delete: Any = Role.delete_from_cloudformation_json

    def managed_policy(backend: Any, arn: str, account_id: str, region_name: str) -> Any:
        if arn in backend.managed_policies:
            return backend.managed_policies[arn]
        name = arn.rsplit("/", 1)[-1]
        data = (
            json.loads(aws_managed_policies_data).get(name) if ":iam::aws:policy/" in arn else None
        )
        if data is None:
            return None
        policy = AWSManagedPolicy.from_data(name, account_id, region_name, data)
        backend.managed_policies[policy.arn] = policy
        return policy

    def create_from_cloudformation_json(
        cls: type[Role],
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Role:
        role: Role = create(resource_name, cloudformation_json, account_id, region_name, **kwargs)
        backend = iam_backends[account_id][get_partition(region_name)]
        for arn in cloudformation_json.get("Properties", {}).get("ManagedPolicyArns", []) or []:
            policy = managed_policy(backend, str(arn), account_id, region_name)
            if policy is not None:
                policy.attach_to(role)
        return role

    def delete_from_cloudformation_json(
        cls: type[Role],
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
    ) -> None:
        backend = iam_backends[account_id][get_partition(region_name)]
        for role in list(backend.roles.values()):
            if role.name == resource_name:
                for policy in list(role.managed_policies.values()):
                    policy.detach_from(role)
        delete(resource_name, cloudformation_json, account_id, region_name)

    Role.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)  # type: ignore[method-assign,assignment,arg-type]
    Role.delete_from_cloudformation_json = classmethod(delete_from_cloudformation_json)  # type: ignore[method-assign,assignment]


SERVICE_LINKED_ROLE_NAMES = {
    "spotfleet.amazonaws.com": "AWSServiceRoleForEC2SpotFleet",
    "spot.amazonaws.com": "AWSServiceRoleForEC2Spot",
    "ec2fleet.amazonaws.com": "AWSServiceRoleForEC2Fleet",
}
"""The names AWS gives the EC2 fleets' service-linked roles ("Spot Fleet permissions",
https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-fleet-prerequisites.html; "Service-linked
role for EC2 Fleet", https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-prerequisites.html)."""


def iam_service_linked_roles_named_and_unique_like_aws() -> None:
    """CreateServiceLinkedRole names EC2's roles as AWS does and refuses a second one.

    AWS names them `AWSServiceRoleForEC2SpotFleet`, `AWSServiceRoleForEC2Spot` and
    `AWSServiceRoleForEC2Fleet` (moto derives `AWSServiceRoleForspotfleet` from the host name).
    Creating one that exists fails with `InvalidInput` ("Create Amazon EC2 spot fleet roles with
    the AWS CLI", AWS Batch User Guide,
    https://docs.aws.amazon.com/batch/latest/userguide/spot-fleet-roles-cli.html: "An error
    occurred (InvalidInput) when calling the CreateServiceLinkedRole operation: Service role name
    AWSServiceRoleForEC2Spot has been taken in this account, please try a different suffix.");
    moto raises `EntityAlreadyExists` (or, for the names it mangles, nothing useful).
    """
    from moto.iam.exceptions import InvalidInput
    from moto.iam.models import IAMBackend

    original: Callable[..., Any] = IAMBackend.create_service_linked_role

    def create_service_linked_role(
        self: IAMBackend, service_name: str, description: str, suffix: str
    ) -> Any:
        name = SERVICE_LINKED_ROLE_NAMES.get(service_name)
        if name is None or suffix:
            return original(self, service_name, description, suffix)
        if any(role.name == name for role in self.roles.values()):
            raise InvalidInput(
                f"Service role name {name} has been taken in this account, "
                "please try a different suffix."
            )
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Action": ["sts:AssumeRole"],
                    "Effect": "Allow",
                    "Principal": {"Service": [service_name]},
                }
            ],
        }
        return self.create_role(
            name,
            json.dumps(trust),
            f"/aws-service-role/{service_name}/",
            permissions_boundary=None,
            description=description,
            tags=[],
            max_session_duration="3600",
            linked_service=service_name,
        )

    IAMBackend.create_service_linked_role = create_service_linked_role  # type: ignore[method-assign]
