"""Fidelity fix: `AWS::NoValue` from `Fn::If` removes a list item, as it removes a property."""

from __future__ import annotations

import json

from annex_sandbox.principals import create_administrator

_SAME_ACCOUNT = {
    "Effect": "Allow",
    "Principal": {"AWS": {"Ref": "AWS::AccountId"}},
    "Action": "sts:AssumeRole",
}
_TRUSTED_ACCOUNTS = {
    "Effect": "Allow",
    "Principal": {"AWS": "arn:aws:iam::210987654321:root"},
    "Action": "sts:AssumeRole",
}
TEMPLATE = {
    # The CDK bootstrap stack's shape: optional trust statements behind a condition.
    "Parameters": {"TrustedAccounts": {"Type": "String", "Default": ""}},
    "Conditions": {"HasTrusted": {"Fn::Not": [{"Fn::Equals": [{"Ref": "TrustedAccounts"}, ""]}]}},
    "Resources": {
        "DeployRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "RoleName": "deploy-role",
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        _SAME_ACCOUNT,
                        {"Fn::If": ["HasTrusted", _TRUSTED_ACCOUNTS, {"Ref": "AWS::NoValue"}]},
                    ],
                },
            },
        }
    },
}


def _trust(aws) -> dict:
    document = aws.client("iam").get_role(RoleName="deploy-role")["Role"][
        "AssumeRolePolicyDocument"
    ]
    return json.loads(document) if isinstance(document, str) else document


def test_a_no_value_statement_is_removed_and_the_role_can_be_assumed(aws) -> None:
    """AWS::NoValue "removes the corresponding resource property when specified as a return
    value in the Fn::If intrinsic function" (CloudFormation User Guide, pseudo parameters); in
    a list it removes the item. moto kept a `null` statement, which no policy engine reads, so
    the CDK CLI could not assume its bootstrap roles."""
    aws.client("cloudformation").create_stack(StackName="nv", TemplateBody=json.dumps(TEMPLATE))

    statements = _trust(aws)["Statement"]
    assert None not in statements
    assert [s["Principal"]["AWS"] for s in statements] == [aws.account_id]

    administrator = create_administrator(aws.client("iam"))
    sts = aws.client("sts", **administrator.client_credentials())
    arn = f"arn:aws:iam::{aws.account_id}:role/deploy-role"
    session = sts.assume_role(RoleArn=arn, RoleSessionName="deploy")["AssumedRoleUser"]["Arn"]
    assert session.endswith(":assumed-role/deploy-role/deploy")


def test_the_item_stays_when_the_condition_holds(aws) -> None:
    aws.client("cloudformation").create_stack(
        StackName="nv",
        TemplateBody=json.dumps(TEMPLATE),
        Parameters=[{"ParameterKey": "TrustedAccounts", "ParameterValue": "210987654321"}],
    )

    principals = [s["Principal"]["AWS"] for s in _trust(aws)["Statement"]]
    assert principals == [aws.account_id, "arn:aws:iam::210987654321:root"]
