"""Acknowledging cdk-nag findings next to the resource they concern, each with its reason.

cdk-nag 3 matches an acknowledgment by exact finding id, e.g.
`AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:instance/*]`.
`acknowledge_wildcard_resources` renders those ids from the very resource values granted, so an
acknowledgment names exactly the wildcard it accepts and follows a logical-id change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aws_cdk import Acknowledgment, Stack, Validations
from constructs import IConstruct

IAM5 = "AwsSolutions-IAM5"


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Accept `rule` (a rule id or one finding id) on `scope` and everything below it."""
    Validations.of(scope).acknowledge(Acknowledgment(id=rule, reason=reason))


def _flatten(value: Any) -> str:
    """A resolved CloudFormation value in cdk-nag's notation (`<Logical>`, `<Logical.Attr>`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Ref":
            return f"<{arg}>"
        if key == "Fn::GetAtt":
            return f"<{arg[0]}.{arg[1]}>"
        if key == "Fn::Join":
            separator, parts = arg
            return str(separator).join(_flatten(p) for p in parts)
    raise ValueError(f"cannot render {value!r} as a cdk-nag finding")


def wildcard_finding(scope: IConstruct, resource: str) -> str:
    """The IAM5 finding id cdk-nag reports for granting on `resource` inside `scope`'s stack."""
    return f"{IAM5}[Resource::{_flatten(Stack.of(scope).resolve(resource))}]"


def acknowledge_wildcard_resources(
    scope: IConstruct, resources: Iterable[str], reason: str
) -> None:
    """Accept the IAM5 finding of each wildcard resource in `resources`, with one reason."""
    for resource in dict.fromkeys(resources):
        acknowledge(scope, wildcard_finding(scope, resource), reason)
