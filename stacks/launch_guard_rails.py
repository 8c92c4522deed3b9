"""What any annex launch may use: the statements both launchers (operator, Spot Fleet role) share.

docs/RULES.md, "Least privilege for day-to-day use": an instance launches only with the setup's
instance profile, IMDSv2 required and the annex tag; only into the setup's security group and
subnets of the setup's VPC; only from annex-tagged launch templates. The Service Authorization
Reference lists, per launch action, which resource types it authorizes and which condition keys
each carries (`ec2:Vpc` on `subnet`/`network-interface`, `ec2:InstanceProfile` and
`ec2:MetadataHttpTokens` on `instance`). Launch template *contents* are not authorized when a
template is created ("You can't use resource-level permissions to restrict the resources that
users can specify in a launch template", EC2 User Guide, "Control the use of launch templates"),
so the guard rails sit on the launches, which see the template's values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aws_cdk import Aws
from aws_cdk import aws_iam as iam

from condor_annex import contract


def ec2_arn(resource: str, *, account: bool = True) -> str:
    """`arn:<partition>:ec2:<region>:<account>:<resource>` (no account for public images)."""
    return f"arn:{Aws.PARTITION}:ec2:{Aws.REGION}:{Aws.ACCOUNT_ID if account else ''}:{resource}"


ANNEX_LAUNCH_TEMPLATES = ec2_arn("launch-template/*")
"""Launch templates get generated ids; every grant on them is conditioned on the annex tag."""
CHOSEN_IMAGES = ec2_arn("image/*", account=False)
"""The user picks the image per annex (`-aws-ami-id`); images may be owned by other accounts."""
REQUEST_TAGGED = {"Null": {f"aws:RequestTag/{contract.TAG_ANNEX_NAME}": "false"}}
RESOURCE_TAGGED = {"Null": {f"aws:ResourceTag/{contract.TAG_ANNEX_NAME}": "false"}}


@dataclass(frozen=True)
class LaunchGuardRails:
    """The setup's own security group, VPC and instance profile, as ARNs."""

    security_group_arn: str
    vpc_arn: str
    instance_profile_arn: str

    def instance_conditions(self, *, tagged: bool = True) -> dict[str, Any]:
        """On `instance`: the setup's profile, IMDSv2 required (and the annex tag)."""
        return {
            **(REQUEST_TAGGED if tagged else {}),
            "ArnEquals": {"ec2:InstanceProfile": self.instance_profile_arn},
            "StringEquals": {"ec2:MetadataHttpTokens": "required"},
        }

    def launch_resources(self, sid: str, actions: Sequence[str]) -> list[iam.PolicyStatement]:
        """`actions` on what a launch names besides the instance and its volumes: annex-tagged
        launch templates, the setup's security group, subnets and interfaces in the setup's VPC,
        any image or key pair. One statement per guard rail, naming the actions that authorize
        any of its resource types and the types some action authorizes (`AUTHORIZES`)."""
        in_setup_vpc = [ec2_arn(f"{kind}/*") for kind in ("subnet", "network-interface")]
        grants: list[tuple[str, list[str], dict[str, Any]]] = [
            ("FromAnnexLaunchTemplates", [ANNEX_LAUNCH_TEMPLATES], RESOURCE_TAGGED),
            ("InSetupSecurityGroup", [self.security_group_arn], {}),
            ("InSetupVpc", in_setup_vpc, {"ArnEquals": {"ec2:Vpc": self.vpc_arn}}),
            ("WithChosenImageOrKey", [CHOSEN_IMAGES, ec2_arn("key-pair/*")], {}),
        ]
        statements = []
        for suffix, resources, conditions in grants:
            kinds = {_resource_type(r) for r in resources}
            granted = [a for a in actions if kinds & AUTHORIZES[a]]
            authorized = set().union(*(AUTHORIZES[a] for a in granted)) if granted else set()
            kept = [r for r in resources if _resource_type(r) in authorized]
            if granted:
                statements.append(
                    iam.PolicyStatement(
                        sid=f"{sid}{suffix}",
                        actions=granted,
                        resources=kept,
                        conditions=conditions or None,
                    )
                )
        return statements


AUTHORIZES: dict[str, frozenset[str]] = {
    "ec2:RunInstances": frozenset(
        {"launch-template", "security-group", "subnet", "network-interface", "image", "key-pair"}
    ),
    "ec2:RequestSpotFleet": frozenset(
        {"launch-template", "security-group", "subnet", "image", "key-pair"}
    ),
    "ec2:CreateFleet": frozenset({"launch-template", "subnet", "image"}),
    "ec2:RequestSpotInstances": frozenset(
        {"security-group", "subnet", "network-interface", "image", "key-pair"}
    ),
}
"""Which of the guarded resource types each launch action authorizes (Service Authorization
Reference, "Actions defined by Amazon EC2": the resource types column of each action)."""


def _resource_type(arn: str) -> str:
    """`security-group` of `arn:...:security-group/sg-1` (tokens keep the literal `kind/` part)."""
    for kind in set().union(*AUTHORIZES.values()):
        if f":{kind}/" in arn:
            return kind
    raise ValueError(f"not a launch resource: {arn}")
