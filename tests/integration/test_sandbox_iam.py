"""IAM enforcement, switchable per test: credentials get exactly what their policies grant."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

ACCOUNT = "123456789012"
BUCKET = "annex-config"


@pytest.fixture
def instance_role(aws) -> dict[str, Any]:
    """An instance-like role (the policy shape of docs/RULES.md, "Configuration transport") and credentials of a user who may assume it."""
    iam, s3 = aws.client("iam"), aws.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="config-a1.tar.gz", Body=b"tarball")
    s3.put_object(Bucket=BUCKET, Key="notes.txt", Body=b"secret")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = iam.create_role(RoleName="annex-instance", AssumeRolePolicyDocument=json.dumps(trust))[
        "Role"
    ]
    iam.create_instance_profile(InstanceProfileName="annex-instance")
    iam.add_role_to_instance_profile(
        InstanceProfileName="annex-instance", RoleName="annex-instance"
    )
    profile = iam.get_instance_profile(InstanceProfileName="annex-instance")["InstanceProfile"]
    managed = iam.create_policy(
        PolicyName="annex-extra",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "ec2:DescribeTags", "Resource": "*"}],
            }
        ),
    )["Policy"]
    iam.attach_role_policy(RoleName="annex-instance", PolicyArn=managed["Arn"])
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{BUCKET}/config-*.tar.gz",
            },
            {
                "Effect": "Allow",
                "Action": ["ec2:DescribeInstances", "ec2:DescribeSpotFleetRequests"],
                "Resource": "*",
            },
            {"Effect": "Allow", "Action": "iam:GetInstanceProfile", "Resource": profile["Arn"]},
            {
                "Effect": "Allow",
                "Action": [
                    "iam:ListRolePolicies",
                    "iam:GetRolePolicy",
                    "iam:ListAttachedRolePolicies",
                ],
                "Resource": role["Arn"],
            },
            {
                "Effect": "Allow",
                "Action": ["iam:GetPolicy", "iam:GetPolicyVersion"],
                "Resource": managed["Arn"],
            },
        ],
    }
    iam.put_role_policy(
        RoleName="annex-instance",
        PolicyName="HTCondorAnnexConfigRead",
        PolicyDocument=json.dumps(policy),
    )
    iam.create_user(UserName="launcher")
    iam.put_user_policy(
        UserName="launcher",
        PolicyName="assume",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role["Arn"]}
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName="launcher")["AccessKey"]
    return {"role": role, "profile": profile, "managed": managed, "key": key}


def _assumed(aws, instance_role) -> dict[str, Any]:
    key = instance_role["key"]
    sts = aws.client(
        "sts", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"]
    )
    creds = sts.assume_role(RoleArn=instance_role["role"]["Arn"], RoleSessionName="i-0123456789")[
        "Credentials"
    ]
    return {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }


def _denied(call) -> str:
    with pytest.raises(ClientError) as raised:
        call()
    return str(raised.value.response["Error"]["Code"])


def test_assumed_role_gets_the_config_tarball_and_nothing_else_in_s3(aws, instance_role):
    """Identity-based policy evaluation ("Policy evaluation logic",
    https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html):
    allowed object readable, any other object AccessDenied."""
    aws.enforce_iam(True)
    s3 = aws.client("s3", **_assumed(aws, instance_role))

    assert s3.get_object(Bucket=BUCKET, Key="config-a1.tar.gz")["Body"].read() == b"tarball"
    assert _denied(lambda: s3.get_object(Bucket=BUCKET, Key="notes.txt")) == "AccessDenied"


def test_assumed_role_may_describe_but_not_terminate_instances(aws, instance_role):
    aws.enforce_iam(True)
    ec2 = aws.client("ec2", **_assumed(aws, instance_role))

    ec2.describe_instances()
    assert _denied(lambda: ec2.terminate_instances(InstanceIds=["i-0123456789abcdef0"])) in (
        "AccessDenied",
        "UnauthorizedOperation",
    )


def test_iam_reads_scoped_to_own_profile_role_and_policy_are_allowed(aws, instance_role):
    """GetInstanceProfile / role reads / GetPolicyVersion authorized against the resource ARNs
    ("Actions, resources, and condition keys for AWS Identity and Access Management",
    https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsidentityandaccessmanagementiam.html)."""
    aws.enforce_iam(True)
    iam = aws.client("iam", **_assumed(aws, instance_role))
    managed_arn = instance_role["managed"]["Arn"]

    profile = iam.get_instance_profile(InstanceProfileName="annex-instance")["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == ["annex-instance"]
    assert iam.list_role_policies(RoleName="annex-instance")["PolicyNames"] == [
        "HTCondorAnnexConfigRead"
    ]
    document = iam.get_role_policy(RoleName="annex-instance", PolicyName="HTCondorAnnexConfigRead")[
        "PolicyDocument"
    ]
    assert document["Statement"][0]["Resource"] == f"arn:aws:s3:::{BUCKET}/config-*.tar.gz"
    attached = iam.list_attached_role_policies(RoleName="annex-instance")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [managed_arn]
    version = iam.get_policy(PolicyArn=managed_arn)["Policy"]["DefaultVersionId"]
    assert iam.get_policy_version(PolicyArn=managed_arn, VersionId=version)["PolicyVersion"][
        "Document"
    ]
    assert _denied(iam.list_roles) == "AccessDenied"
    assert (
        _denied(lambda: iam.get_role_policy(RoleName="launcher-role", PolicyName="x"))
        == "AccessDenied"
    )


def test_unknown_credentials_are_rejected_while_enforcing(aws):
    """An access key AWS never issued: EC2 answers AuthFailure, IAM InvalidClientTokenId, S3
    InvalidAccessKeyId. The sandbox's own key is the account root and is allowed."""
    aws.enforce_iam(True)
    stranger = {"aws_access_key_id": "AKIANOBODYKNOWS00000"}

    assert _denied(aws.client("ec2", **stranger).describe_instances) == "AuthFailure"
    assert _denied(aws.client("iam", **stranger).list_roles) == "InvalidClientTokenId"
    assert _denied(aws.client("s3", **stranger).list_buckets) == "InvalidAccessKeyId"
    aws.client("ec2").describe_instances()


def test_enforcement_switches_off_at_runtime_and_on_reset(aws):
    aws.enforce_iam(True)
    aws.enforce_iam(False)
    aws.client("ec2").describe_instances()

    aws.enforce_iam(True)
    aws.reset()
    aws.client("ec2").describe_instances()


def test_role_inline_policy_created_by_cloudformation_reads_back_and_is_enforced(aws):
    """A Role's `Policies` written by CloudFormation come back from GetRolePolicy as a JSON
    document ("GetRolePolicy", https://docs.aws.amazon.com/IAM/latest/APIReference/API_GetRolePolicy.html)
    and grant what they say under enforcement."""
    statement = {"Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"}
    template = {
        "Resources": {
            "Role": {
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "RoleName": "stacked-instance",
                    "AssumeRolePolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                                "Action": "sts:AssumeRole",
                            }
                        ],
                    },
                    "Policies": [
                        {
                            "PolicyName": "HTCondorAnnexConfigRead",
                            "PolicyDocument": {"Version": "2012-10-17", "Statement": [statement]},
                        }
                    ],
                },
            }
        }
    }
    aws.client("cloudformation").create_stack(
        StackName="role-stack", TemplateBody=json.dumps(template)
    )
    iam = aws.client("iam")
    document = iam.get_role_policy(
        RoleName="stacked-instance", PolicyName="HTCondorAnnexConfigRead"
    )["PolicyDocument"]
    assert document["Statement"] == [statement]

    iam.create_user(UserName="caller")
    iam.put_user_policy(
        UserName="caller",
        PolicyName="assume",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="caller")["AccessKey"]
    aws.enforce_iam(True)
    sts = aws.client(
        "sts", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"]
    )
    creds = sts.assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/stacked-instance", RoleSessionName="i-1"
    )["Credentials"]
    ec2 = aws.client(
        "ec2",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    ec2.describe_instances()
    assert _denied(ec2.describe_spot_fleet_requests) in ("AccessDenied", "UnauthorizedOperation")


def test_service_linked_roles_get_aws_names_and_a_repeat_is_invalid_input(aws):
    """ "Spot Fleet permissions" (EC2 User Guide): the roles are AWSServiceRoleForEC2SpotFleet,
    AWSServiceRoleForEC2Spot, AWSServiceRoleForEC2Fleet under /aws-service-role/<service>/.
    A second create is InvalidInput ("Create Amazon EC2 spot fleet roles with the AWS CLI", AWS
    Batch User Guide, https://docs.aws.amazon.com/batch/latest/userguide/spot-fleet-roles-cli.html:
    "Service role name AWSServiceRoleForEC2Spot has been taken in this account, please try a
    different suffix.")."""
    iam = aws.client("iam")
    names = {
        "spotfleet.amazonaws.com": "AWSServiceRoleForEC2SpotFleet",
        "spot.amazonaws.com": "AWSServiceRoleForEC2Spot",
        "ec2fleet.amazonaws.com": "AWSServiceRoleForEC2Fleet",
    }
    for service, name in names.items():
        role = iam.create_service_linked_role(AWSServiceName=service)["Role"]
        assert (role["RoleName"], role["Path"]) == (name, f"/aws-service-role/{service}/")
        assert iam.get_role(RoleName=name)["Role"]["Arn"].endswith(
            f":role/aws-service-role/{service}/{name}"
        )

    with pytest.raises(ClientError) as again:
        iam.create_service_linked_role(AWSServiceName="spot.amazonaws.com")

    assert again.value.response["Error"]["Code"] == "InvalidInput"
    assert again.value.response["Error"]["Message"] == (
        "Service role name AWSServiceRoleForEC2Spot has been taken in this account, "
        "please try a different suffix."
    )
