"""Names of the IAM resources the setup stack creates, known before the resources exist.

A role's policy that names the role's own ARN (or its instance profile's) cannot use `GetAtt`
without a circular dependency, so the roles and the profile get explicit names built from the
stack name and region (IAM is global: two regions' setups must not collide) under one IAM path.
"""

from __future__ import annotations

from aws_cdk import Aws, Fn, Stack

ROLE_PATH = "/condor-annex/"
"""IAM path of the roles and the instance profile the setup stack creates."""


def iam_name(suffix: str) -> str:
    """`<stack>-<region>-<suffix>` (a token until deploy)."""
    return Fn.join("-", [Aws.STACK_NAME, Aws.REGION, suffix])


def iam_arn(stack: Stack, kind: str, name: str) -> str:
    """ARN of the IAM `kind` (`role`, `instance-profile`) called `name` under `ROLE_PATH`."""
    return stack.format_arn(
        service="iam", region="", resource=kind, resource_name=f"{ROLE_PATH.strip('/')}/{name}"
    )
