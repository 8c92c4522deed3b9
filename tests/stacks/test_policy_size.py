"""Every managed policy the stack creates fits IAM's size limit, measured as IAM measures it.

IAM quotas ("IAM and AWS STS quotas", https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html):
a managed policy document may hold 6,144 characters, white space not counted. The template holds
references, so each is replaced by the longest value it can take at deploy time (the longest
partition, region, generated ids and the names the stack allows) before counting.
"""

from __future__ import annotations

import json
import re
from typing import Any

from stacks.naming import LONGEST_REGION_NAME, ROLE_NAME_LIMIT
from tests.stacks.policies import logical_ids

MANAGED_POLICY_LIMIT = 6_144
MARGIN = 600
"""Room left for a statement or two added later (a service-linked role grant is ~250)."""

PARTITION = "aws-us-gov"
ACCOUNT = "123456789012"
STACK_NAME = "S" * (ROLE_NAME_LIMIT - len(f"-{LONGEST_REGION_NAME}-annex-instance"))
PSEUDO = {
    "AWS::Partition": PARTITION,
    "AWS::Region": LONGEST_REGION_NAME,
    "AWS::AccountId": ACCOUNT,
    "AWS::StackName": STACK_NAME,
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackId": (
        f"arn:{PARTITION}:cloudformation:{LONGEST_REGION_NAME}:{ACCOUNT}:stack/"
        f"{STACK_NAME}/01234567-89ab-cdef-0123-456789abcdef"
    ),
}


def _longest(template: dict[str, Any], logical_id: str, attribute: str = "Ref") -> str:
    """The longest value `Ref`/`GetAtt` of `logical_id` resolves to at deploy time."""
    if logical_id in PSEUDO:
        return PSEUDO[logical_id]
    if logical_id in template.get("Parameters", {}):
        return "vpc-" + "0" * 17
    kind = template["Resources"][logical_id]["Type"]
    iam = f"arn:{PARTITION}:iam::{ACCOUNT}"
    name = "n" * ROLE_NAME_LIMIT
    values = {
        ("AWS::S3::Bucket", "Ref"): "b" * 63,
        ("AWS::S3::Bucket", "Arn"): f"arn:{PARTITION}:s3:::" + "b" * 63,
        ("AWS::IAM::Role", "Arn"): f"{iam}:role/condor-annex/{name}",
        ("AWS::IAM::Role", "Ref"): name,
        ("AWS::IAM::InstanceProfile", "Arn"): f"{iam}:instance-profile/condor-annex/{name}",
        ("AWS::Lambda::Function", "Arn"): (
            f"arn:{PARTITION}:lambda:{LONGEST_REGION_NAME}:{ACCOUNT}:function:{name}"
        ),
        ("AWS::EC2::SecurityGroup", "GroupId"): "sg-" + "0" * 17,
    }
    return values[(kind, attribute)]


def resolve(template: dict[str, Any], value: Any) -> Any:
    """`value` with every reference replaced by its longest deploy-time value."""
    if isinstance(value, list):
        return [resolve(template, v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Ref":
            return _longest(template, arg)
        if key == "Fn::GetAtt":
            return _longest(template, arg[0], arg[1])
        if key == "Fn::Join":
            return str(arg[0]).join(str(resolve(template, p)) for p in arg[1])
    return {k: resolve(template, v) for k, v in value.items()}


def iam_size(document: dict[str, Any]) -> int:
    """Characters IAM counts: the JSON text without white space."""
    return len(re.sub(r"\s", "", json.dumps(document)))


def managed_policy_sizes(template: dict[str, Any]) -> dict[str, int]:
    return {
        logical_id: iam_size(
            resolve(template, template["Resources"][logical_id]["Properties"]["PolicyDocument"])
        )
        for logical_id in logical_ids(template, "AWS::IAM::ManagedPolicy")
    }


def test_every_managed_policy_fits_iams_limit_with_a_margin(synthesized_setup):
    sizes = managed_policy_sizes(synthesized_setup.template)
    assert any(logical_id.startswith("OperatorPolicy") for logical_id in sizes), sizes
    too_big = {k: v for k, v in sizes.items() if v > MANAGED_POLICY_LIMIT - MARGIN}
    assert too_big == {}, f"over {MANAGED_POLICY_LIMIT} - {MARGIN} characters: {sizes}"


def test_the_measure_counts_what_iam_counts():
    document = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*"}]}
    assert iam_size(document) == len(
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*"}]}'
    )
