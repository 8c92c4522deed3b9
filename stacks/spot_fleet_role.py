"""The role Spot Fleet assumes to launch, tag and terminate an annex's instances.

Modelled on the AWS managed `AmazonEC2SpotFleetTaggingRole` (v5: `ec2:RunInstances`,
`ec2:RequestSpotInstances`, `ec2:CreateTags`, `ec2:TerminateInstances` on `*`, `iam:PassRole` to
EC2; https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AmazonEC2SpotFleetTaggingRole.html),
as a customer-managed policy so the permissions are visible here and narrower: launches keep the
operator's guard rails (stacks/launch_guard_rails.py), `iam:PassRole` names only the annex
instance role, termination only annex-tagged instances. Every Spot Fleet annex launches from its
own launch template (`contract.launch_template_name`), so the role launches from annex-tagged
templates only.

Tagging: the managed role may tag anything at any time, because Spot Fleet tags the instances it
launches in calls of its own as well as at launch ("Spot Fleet permissions", EC2 User Guide:
without `ec2:CreateTags` on the fleet role "some of the instances launched by the fleet might not
be tagged"). This role may tag the instances, volumes and Spot requests it creates whenever the
tags carry the annex name: the tag that makes them an annex's, which `off` and the lease
functions select by.
"""

from __future__ import annotations

from aws_cdk import Aws
from aws_cdk import aws_iam as iam
from constructs import Construct

from stacks.launch_guard_rails import (
    ANNEX_LAUNCH_TEMPLATES,
    CHOSEN_IMAGES,
    REQUEST_TAGGED,
    RESOURCE_TAGGED,
    LaunchGuardRails,
    ec2_arn,
)
from stacks.nag import acknowledge_wildcard_resources
from stacks.naming import ROLE_PATH, iam_name

CREATED_BY_SPOT_FLEET = [
    ec2_arn(f"{kind}/*") for kind in ("instance", "volume", "spot-instances-request")
]
"""What Spot Fleet creates for an annex, with generated ids."""


class SpotFleetRole(Construct):
    """`role` trusting spotfleet.amazonaws.com, with `policy` attached."""

    role: iam.Role
    policy: iam.ManagedPolicy
    role_arn: str

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        instance_role: iam.IRole,
        guard_rails: LaunchGuardRails,
    ) -> None:
        super().__init__(scope, id)
        launch = ["ec2:RunInstances", "ec2:RequestSpotInstances"]
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
                # The tags at launch come from the annex's template; whether Spot Fleet's own
                # launch carries them is not documented, so only the profile and IMDSv2 are
                # required here (the tags are TagAnnexLaunches' business).
                iam.PolicyStatement(
                    sid="LaunchSetupInstances",
                    actions=["ec2:RunInstances"],
                    resources=[ec2_arn("instance/*")],
                    conditions=guard_rails.instance_conditions(tagged=False),
                ),
                iam.PolicyStatement(
                    sid="LaunchVolumesAndSpotRequests",
                    actions=launch,
                    resources=[ec2_arn("volume/*"), ec2_arn("spot-instances-request/*")],
                ),
                *guard_rails.launch_resources("Launch", launch),
                iam.PolicyStatement(
                    sid="TagAnnexLaunches",
                    actions=["ec2:CreateTags"],
                    resources=CREATED_BY_SPOT_FLEET,
                    conditions=REQUEST_TAGGED,
                ),
                iam.PolicyStatement(
                    sid="TerminateAnnexInstances",
                    actions=["ec2:TerminateInstances"],
                    resources=[ec2_arn("instance/*")],
                    conditions=RESOURCE_TAGGED,
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
            role_name=iam_name(self, "spot-fleet"),
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
            [*CREATED_BY_SPOT_FLEET, ec2_arn("subnet/*"), ec2_arn("network-interface/*")],
            "Spot Fleet creates instances, volumes, interfaces and spot requests with "
            "generated ids, in subnets of the setup's VPC only (ec2:Vpc); instances only with "
            "the setup's profile and IMDSv2, tagging only with the htcondor:AnnexName tag, "
            "termination only of annex-tagged instances.",
        )
        acknowledge_wildcard_resources(
            self.policy,
            [CHOSEN_IMAGES, ec2_arn("key-pair/*")],
            "The image and key pair are chosen per annex; limited to this account and region "
            "(images may be owned by others).",
        )
        acknowledge_wildcard_resources(
            self.policy,
            [ANNEX_LAUNCH_TEMPLATES],
            "Each Spot Fleet annex has its own launch template with a generated id; Spot Fleet "
            "may launch only from templates carrying the htcondor:AnnexName tag.",
        )
