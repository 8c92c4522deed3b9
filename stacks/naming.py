"""Names of the IAM resources the setup stack creates, known before the resources exist.

A role's policy that names the role's own ARN (or its instance profile's) cannot use `GetAtt`
without a circular dependency, so the roles and the profile get explicit names built from the
stack name and region (IAM is global: two regions' setups must not collide) under one IAM path.
"""

from __future__ import annotations

from aws_cdk import Aws, Fn, Stack, Token
from constructs import Construct

from stacks.settings import CTX_STACK_NAME, SettingsError

ROLE_PATH = "/condor-annex/"
"""IAM path of the roles and the instance profile the setup stack creates."""

ROLE_NAME_LIMIT = 64
"""IAM role names: at most 64 characters (IAM quotas, "IAM name requirements"; the
`AWS::IAM::Role.RoleName` schema). Instance profile names may have 128, so the role's limit binds."""
MANAGED_POLICY_NAME_LIMIT = 128
"""IAM managed policy names: at most 128 characters (same quota page)."""
LONGEST_REGION_NAME = "ap-southeast-2"
"""A region name as long as any AWS has (14 characters): a template synthesized without a region
may be deployed in any of them."""


def iam_name(scope: Construct, suffix: str, *, limit: int = ROLE_NAME_LIMIT) -> str:
    """`<stack>-<region>-<suffix>` (a token until deploy), refused at synth when the stack name
    would make it longer than IAM's `limit` in the stack's region (or the longest region)."""
    stack = Stack.of(scope)
    region = LONGEST_REGION_NAME if Token.is_unresolved(stack.region) else stack.region
    if not Token.is_unresolved(stack.stack_name):
        longest = len(f"{stack.stack_name}-{region}-{suffix}")
        if longest > limit:
            room = limit - len(f"-{region}-{suffix}")
            raise SettingsError(
                f"context {CTX_STACK_NAME} {stack.stack_name!r} ({len(stack.stack_name)} "
                f"characters) makes the IAM name {stack.stack_name}-{region}-{suffix} "
                f"{longest} characters long, over IAM's limit of {limit}: choose a "
                f"{CTX_STACK_NAME} of at most {room} characters"
            )
    return Fn.join("-", [Aws.STACK_NAME, Aws.REGION, suffix])


def iam_arn(stack: Stack, kind: str, name: str) -> str:
    """ARN of the IAM `kind` (`role`, `instance-profile`) called `name` under `ROLE_PATH`."""
    return stack.format_arn(
        service="iam", region="", resource=kind, resource_name=f"{ROLE_PATH.strip('/')}/{name}"
    )
