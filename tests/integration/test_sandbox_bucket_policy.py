"""Fidelity fix: CloudFormation's AWS::S3::BucketPolicy is deployed, updated, deleted and enforced.

"AWS::S3::BucketPolicy" (AWS CloudFormation User Guide): the resource applies its PolicyDocument
to its Bucket; PolicyDocument updates in place, a new Bucket replaces the resource, deleting it
deletes the bucket's policy. moto skipped the type, so the setup stack's config bucket had no
policy. The IAM engine evaluates the deployed policy as the bucket's resource policy.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from condor_annex import contract


def _deny_statement(bucket_ref: str, action: str) -> dict[str, Any]:
    return {
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": action,
        "Resource": {"Fn::Join": ["", [{"Fn::GetAtt": [bucket_ref, "Arn"]}, "/*"]]},
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def _template(policy_bucket: str, action: str) -> str:
    """Two buckets (both kept on stack delete, as the setup's access-log bucket is) and one
    bucket policy on `policy_bucket` denying `action` without TLS."""
    return json.dumps(
        {
            "Resources": {
                "First": {
                    "Type": "AWS::S3::Bucket",
                    "DeletionPolicy": "Retain",
                    "Properties": {"BucketName": "policy-first"},
                },
                "Second": {
                    "Type": "AWS::S3::Bucket",
                    "DeletionPolicy": "Retain",
                    "Properties": {"BucketName": "policy-second"},
                },
                "Policy": {
                    "Type": "AWS::S3::BucketPolicy",
                    "Properties": {
                        "Bucket": {"Ref": policy_bucket},
                        "PolicyDocument": {
                            "Version": "2012-10-17",
                            "Statement": [_deny_statement(policy_bucket, action)],
                        },
                    },
                },
            }
        }
    )


def _policy(s3: Any, bucket: str) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    except ClientError as error:
        assert error.response["Error"]["Code"] == "NoSuchBucketPolicy"
        return None
    return document


def _actions(document: dict[str, Any] | None) -> list[str]:
    assert document is not None
    return [s["Action"] for s in document["Statement"]]


def test_bucket_policy_is_created_updated_replaced_and_deleted_with_the_stack(aws):
    cfn, s3 = aws.client("cloudformation"), aws.client("s3")

    cfn.create_stack(StackName="policy", TemplateBody=_template("First", "s3:GetObject"))
    created = _policy(s3, "policy-first")
    assert _actions(created) == ["s3:GetObject"]
    assert created is not None
    assert created["Statement"][0]["Resource"] == "arn:aws:s3:::policy-first/*"
    assert _policy(s3, "policy-second") is None

    cfn.update_stack(StackName="policy", TemplateBody=_template("First", "s3:PutObject"))
    assert _actions(_policy(s3, "policy-first")) == ["s3:PutObject"]

    # A new Bucket replaces the resource: the old bucket loses its policy.
    cfn.update_stack(StackName="policy", TemplateBody=_template("Second", "s3:PutObject"))
    assert _policy(s3, "policy-first") is None
    assert _actions(_policy(s3, "policy-second")) == ["s3:PutObject"]

    cfn.delete_stack(StackName="policy")
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} >= {"policy-first", "policy-second"}
    assert _policy(s3, "policy-second") is None


def _reader(aws: Any, bucket: str) -> dict[str, str]:
    """Credentials of an IAM user whose identity policy allows reading `bucket`'s objects."""
    iam = aws.client("iam")
    iam.create_user(UserName="reader")
    iam.put_user_policy(
        UserName="reader",
        PolicyName="read",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "s3:GetObject",
                        "Resource": f"arn:aws:s3:::{bucket}/*",
                    }
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    return {
        "aws_access_key_id": key["AccessKeyId"],
        "aws_secret_access_key": key["SecretAccessKey"],
    }


def test_the_setup_stacks_config_bucket_denies_requests_without_tls(aws, setup_outputs):
    """The CDK's `enforceSSL` policy is on the deployed config bucket, and the engine enforces
    it: the local AWS's endpoint stands in for AWS's HTTPS endpoints (aws:SecureTransport
    true), its plain-HTTP listener for AWS's `http://` ones, where the explicit deny wins over
    the caller's identity Allow (IAM policy evaluation logic)."""
    bucket = setup_outputs[contract.OUTPUT_CONFIG_BUCKET.key]
    s3 = aws.client("s3")
    policy = _policy(s3, bucket)
    assert policy is not None
    [statement] = policy["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert sorted(statement["Resource"]) == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    s3.put_object(Bucket=bucket, Key="config-a.tar.gz", Body=b"tarball")
    credentials = _reader(aws, bucket)

    over_tls = aws.client("s3", **credentials)
    assert over_tls.get_object(Bucket=bucket, Key="config-a.tar.gz")["Body"].read() == b"tarball"

    plain = aws.client("s3", endpoint_url=aws.plain_http_endpoint_url, **credentials)
    with pytest.raises(ClientError) as denied:
        plain.get_object(Bucket=bucket, Key="config-a.tar.gz")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert "explicit deny" in denied.value.response["Error"]["Message"]
