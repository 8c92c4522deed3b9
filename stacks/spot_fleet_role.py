"""The role Spot Fleet assumes to launch, tag and terminate an annex's instances.

Modelled on the AWS managed `AmazonEC2SpotFleetTaggingRole`, as a customer-managed policy so the
permissions are visible here and `iam:PassRole` names only the annex instance role. Every Spot
Fleet annex launches from its own launch template (`contract.launch_template_name`): Spot Fleet
calls RunInstances with it, so the role may launch from annex-tagged launch templates only.
"""

from __future__ import annotations

from aws_cdk import Aws
from aws_cdk import aws_iam as iam
from constructs import Construct

from condor_annex import contract
from stacks.nag import acknowledge_wildcard_resources
from stacks.naming import ROLE_PATH, iam_name


def ec2_arn(resource: str, *, account: bool = True) -> str:
    """`arn:<partition>:ec2:<region>:<account>:<resource>` (no account for public images)."""
    return f"arn:{Aws.PARTITION}:ec2:{Aws.REGION}:{Aws.ACCOUNT_ID if account else ''}:{resource}"


ANNEX_LAUNCH_TEMPLATES = ec2_arn("launch-template/*")
"""Launch templates with generated ids; the role uses them only when they carry the annex tag."""

LAUNCH_RESOURCES = [
    ec2_arn("image/*", account=False),
    *(
        ec2_arn(f"{kind}/*")
        for kind in (
            "instance",
            "volume",
            "network-interface",
            "security-group",
            "subnet",
            "key-pair",
            "spot-instances-request",
        )
    ),
]


class SpotFleetRole(Construct):
    """`role` trusting spotfleet.amazonaws.com, with `policy` attached."""

    role: iam.Role
    policy: iam.ManagedPolicy
    role_arn: str

    def __init__(self, scope: Construct, id: str, *, instance_role: iam.IRole) -> None:
        super().__init__(scope, id)
        self.policy = iam.ManagedPolicy(
            self,
            "Policy",
            description="What Spot Fleet needs to launch and tag condor_annex instances",
            statements=[
                iam.PolicyStatement(
                    sid="Describe",
                    actions=[
                        "ec2:DescribeImages",
                        "ec2:DescribeSubnets",
                        "ec2:DescribeInstanceStatus",
                        "ec2:DescribeInstances",
                    ],
                    resources=["*"],
                ),
                iam.PolicyStatement(
                    sid="Launch",
                    actions=["ec2:RunInstances", "ec2:RequestSpotInstances"],
                    resources=LAUNCH_RESOURCES,
                ),
                iam.PolicyStatement(
                    sid="LaunchFromAnnexLaunchTemplates",
                    actions=["ec2:RunInstances"],
                    resources=[ANNEX_LAUNCH_TEMPLATES],
                    conditions={"Null": {f"aws:ResourceTag/{contract.TAG_ANNEX_NAME}": "false"}},
                ),
                iam.PolicyStatement(
                    sid="TagAtLaunch",
                    actions=["ec2:CreateTags"],
                    resources=[
                        ec2_arn("instance/*"),
                        ec2_arn("volume/*"),
                        ec2_arn("spot-instances-request/*"),
                    ],
                    conditions={
                        "StringEquals": {
                            "ec2:CreateAction": ["RunInstances", "RequestSpotInstances"]
                        }
                    },
                ),
                iam.PolicyStatement(
                    sid="TerminateAnnexInstances",
                    actions=["ec2:TerminateInstances"],
                    resources=[ec2_arn("instance/*")],
                    conditions={"Null": {f"aws:ResourceTag/{contract.TAG_ANNEX_NAME}": "false"}},
                ),
                iam.PolicyStatement(
                    sid="PassInstanceRole",
                    actions=["iam:PassRole"],
                    resources=[instance_role.role_arn],
                    conditions={"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
                ),
            ],
        )
        # Attached through the role's ManagedPolicyArns: CloudFormation then deletes the role
        # (detaching the policy) before the policy, with no dependency on detach order.
        self.role = iam.Role(
            self,
            "Role",
            role_name=iam_name("spot-fleet"),
            path=ROLE_PATH,
            description="Spot Fleet launches, tags and terminates condor_annex instances",
            assumed_by=iam.ServicePrincipal(
                "spotfleet.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}},
            ),
            managed_policies=[self.policy],
        )
        self.role_arn = self.role.role_arn
        acknowledge_wildcard_resources(
            self.policy,
            ["*"],
            "EC2 Describe* calls support no resource-level permissions.",
        )
        acknowledge_wildcard_resources(
            self.policy,
            LAUNCH_RESOURCES,
            "Spot Fleet launches into resources chosen per annex (image, subnet, security "
            "group, key pair) and creates instances, volumes, interfaces and "
            "spot requests with generated ids; limited to this account and region (images may "
            "be owned by others). Tagging is limited to launch time, termination to "
            "annex-tagged instances.",
        )
        acknowledge_wildcard_resources(
            self.policy,
            [ANNEX_LAUNCH_TEMPLATES],
            "Each Spot Fleet annex has its own launch template with a generated id; Spot Fleet "
            "may launch only from templates carrying the htcondor:AnnexName tag.",
        )
