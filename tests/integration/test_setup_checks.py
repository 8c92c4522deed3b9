"""`setup_checks` against the local AWS's IAM engine: what -setup does without the permission."""

from __future__ import annotations

import json

from condor_annex import contract
from condor_annex.setup_checks import ensure_service_linked_roles


def test_setup_credentials_without_create_service_linked_role_get_the_command(aws):
    """A deployer that may not iam:CreateServiceLinkedRole (the CDK CLI deploys through the
    bootstrap's roles) gets one problem per role, naming the command an administrator runs."""
    iam = aws.client("iam")
    iam.create_user(UserName="deployer")
    iam.put_user_policy(
        UserName="deployer",
        PolicyName="no-iam",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "iam:GetRole", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="deployer")["AccessKey"]
    deployer = aws.client(
        "iam", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"]
    )

    created, problems = ensure_service_linked_roles(deployer)

    assert created == []
    assert len(problems) == len(contract.SERVICE_LINKED_ROLES)
    for role, problem in zip(contract.SERVICE_LINKED_ROLES, problems):
        assert role.role_name in problem.what and "AccessDenied" in problem.what
        assert (
            f"`aws iam create-service-linked-role --aws-service-name {role.service}`"
            in problem.next_step
        )
    assert [r["RoleName"] for r in iam.list_roles(PathPrefix="/aws-service-role/")["Roles"]] == []
