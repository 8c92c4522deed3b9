"""The policy evaluator (the local AWS's IAM engine) checked on the rules the privilege tests rely on."""

from __future__ import annotations

import pytest

from tests.reliability.policy_eval import (
    ALLOW,
    EXPLICIT_DENY,
    IMPLICIT_DENY,
    Request,
    evaluate,
)

BUCKET_READ = {
    "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/config-*.tar.gz"}
    ]
}
TAGGED_TERMINATE = {
    "Statement": [
        {
            "Effect": "Allow",
            "Action": "ec2:TerminateInstances",
            "Resource": "arn:aws:ec2:us-east-1:123456789012:instance/*",
            "Condition": {"Null": {"aws:ResourceTag/htcondor:AnnexName": "false"}},
        }
    ]
}


def test_resource_wildcard_matches_only_its_pattern() -> None:
    assert (
        evaluate([BUCKET_READ], Request("s3:GetObject", "arn:aws:s3:::b/config-x.tar.gz")) == ALLOW
    )
    assert (
        evaluate([BUCKET_READ], Request("s3:GetObject", "arn:aws:s3:::b/leases/x.json"))
        == IMPLICIT_DENY
    )
    assert (
        evaluate([BUCKET_READ], Request("s3:PutObject", "arn:aws:s3:::b/config-x.tar.gz")) != ALLOW
    )


def test_actions_are_case_insensitive() -> None:
    assert (
        evaluate([BUCKET_READ], Request("S3:getobject", "arn:aws:s3:::b/config-x.tar.gz")) == ALLOW
    )


def test_null_condition_needs_the_tag_present() -> None:
    arn = "arn:aws:ec2:us-east-1:123456789012:instance/i-1"
    assert evaluate([TAGGED_TERMINATE], Request("ec2:TerminateInstances", arn)) == IMPLICIT_DENY
    tagged = Request("ec2:TerminateInstances", arn, {"aws:ResourceTag/htcondor:AnnexName": "a"})
    assert evaluate([TAGGED_TERMINATE], tagged) == ALLOW


def test_explicit_deny_wins_over_allow() -> None:
    deny = {"Statement": [{"Effect": "Deny", "Action": "s3:*", "Resource": "*"}]}
    request = Request("s3:GetObject", "arn:aws:s3:::b/config-x.tar.gz")
    assert evaluate([BUCKET_READ, deny], request) == EXPLICIT_DENY


def test_missing_key_fails_positive_and_passes_negated_operators() -> None:
    def doc(operator: str) -> dict[str, object]:
        return {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "iam:PassRole",
                    "Resource": "*",
                    "Condition": {operator: {"iam:PassedToService": "ec2.amazonaws.com"}},
                }
            ]
        }

    bare = Request("iam:PassRole", "arn:aws:iam::123456789012:role/r")
    assert evaluate([doc("StringEquals")], bare) == IMPLICIT_DENY
    assert evaluate([doc("StringNotEquals")], bare) == ALLOW
    assert evaluate([doc("StringEqualsIfExists")], bare) == ALLOW
    to_lambda = Request(
        "iam:PassRole",
        "arn:aws:iam::123456789012:role/r",
        {"iam:PassedToService": "lambda.amazonaws.com"},
    )
    assert evaluate([doc("StringEquals")], to_lambda) == IMPLICIT_DENY


def test_arn_equals_compares_the_whole_arn() -> None:
    document = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "ec2:RunInstances",
                "Resource": "*",
                "Condition": {
                    "ArnEquals": {"ec2:InstanceProfile": "arn:aws:iam::1:instance-profile/p"}
                },
            }
        ]
    }
    instance = "arn:aws:ec2:us-east-1:123456789012:instance/*"
    ok = Request(
        "ec2:RunInstances", instance, {"ec2:InstanceProfile": "arn:aws:iam::1:instance-profile/p"}
    )
    other = Request(
        "ec2:RunInstances",
        instance,
        {"ec2:InstanceProfile": "arn:aws:iam::1:instance-profile/admin"},
    )
    assert evaluate([document], ok) == ALLOW
    assert evaluate([document], other) == IMPLICIT_DENY


def test_what_the_engine_cannot_evaluate_is_refused_not_guessed() -> None:
    """A malformed policy (an Effect AWS does not have) raises instead of deciding."""
    document = {
        "Statement": [
            {
                "Effect": "Perhaps",
                "Action": "*",
                "Resource": "*",
                "Condition": {"StringSortOf": {"aws:CurrentTime": "x"}},
            }
        ]
    }
    with pytest.raises(ValueError, match="cannot evaluate"):
        evaluate([document], Request("s3:GetObject", "arn:aws:s3:::b/x"))
