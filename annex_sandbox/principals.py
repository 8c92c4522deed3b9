"""IAM users in the local AWS that stand for the people who run condor_annex.

AWS allows the account root everything, so a flow run as root proves nothing about the policies
the setup deploys. The demo and the tests run `-setup` with an administrator and everything after
it as an operator who holds exactly the setup's operator policies, so the local AWS's IAM engine
judges the CLI's real requests against them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from condor_annex import contract

ADMINISTRATOR_DOCUMENT: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
"""AWS's AdministratorAccess managed policy, word for word (what `cdk deploy` is run with)."""


@dataclass(frozen=True)
class UserKeys:
    """An IAM user and one access key of it."""

    user_name: str
    arn: str
    access_key_id: str
    secret_access_key: str

    def sdk_environment(self) -> dict[str, str]:
        """The standard SDK variables that make a process sign as this user."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }

    def client_credentials(self) -> dict[str, str]:
        """Keywords for `boto3.Session` / `LocalAws.client`."""
        return {
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
        }


def operator_policy_arns(outputs: Mapping[str, str]) -> list[str]:
    """The setup's operator policies, from its stack outputs."""
    return [outputs[output.key] for output in contract.OPERATOR_POLICY_OUTPUTS]


def create_user(
    iam: Any,
    user_name: str,
    *,
    managed_policy_arns: Iterable[str] = (),
    inline_documents: Mapping[str, Mapping[str, Any]] | None = None,
) -> UserKeys:
    """A new IAM user with these policies and an access key (the user must not exist)."""
    arn = str(iam.create_user(UserName=user_name)["User"]["Arn"])
    for policy_arn in managed_policy_arns:
        iam.attach_user_policy(UserName=user_name, PolicyArn=policy_arn)
    for policy_name, document in (inline_documents or {}).items():
        iam.put_user_policy(
            UserName=user_name, PolicyName=policy_name, PolicyDocument=json.dumps(document)
        )
    key = iam.create_access_key(UserName=user_name)["AccessKey"]
    return UserKeys(user_name, arn, str(key["AccessKeyId"]), str(key["SecretAccessKey"]))


def create_operator(
    iam: Any, outputs: Mapping[str, str], user_name: str = "annex-operator"
) -> UserKeys:
    """A user holding exactly the setup's operator policies, as the README tells admins to make."""
    return create_user(iam, user_name, managed_policy_arns=operator_policy_arns(outputs))


def create_administrator(iam: Any, user_name: str = "annex-administrator") -> UserKeys:
    """A user with AdministratorAccess's grants, who runs `-setup` and `-destroy-setup`."""
    return create_user(
        iam, user_name, inline_documents={"AdministratorAccess": ADMINISTRATOR_DOCUMENT}
    )


def delete_user(iam: Any, user_name: str) -> None:
    """Remove a user made by `create_user`, with its keys and policies (IAM refuses otherwise)."""
    for key in iam.list_access_keys(UserName=user_name)["AccessKeyMetadata"]:
        iam.delete_access_key(UserName=user_name, AccessKeyId=key["AccessKeyId"])
    for policy in iam.list_attached_user_policies(UserName=user_name)["AttachedPolicies"]:
        iam.detach_user_policy(UserName=user_name, PolicyArn=policy["PolicyArn"])
    for policy_name in iam.list_user_policies(UserName=user_name)["PolicyNames"]:
        iam.delete_user_policy(UserName=user_name, PolicyName=policy_name)
    iam.delete_user(UserName=user_name)
