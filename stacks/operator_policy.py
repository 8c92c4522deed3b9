"""The "annex operator" managed policy: day-to-day `condor_annex` use without admin rights.

docs/RULES.md, "Least privilege for day-to-day use": launch only annex-tagged instances and fleets with this setup's instance profile,
terminate and cancel only annex-tagged ones, create, launch from and delete only annex-tagged
launch templates (each Spot Fleet annex has its own, `contract.launch_template_name`, because a
Spot Fleet launch specification cannot require IMDSv2), pass exactly the instance and Spot Fleet roles
(and the Scheduler role for lease schedules), manage tarballs and lease records, schedules
named for annexes, invoke the connectivity and lease functions, and read the setup stack.
Attach it to the users' group or role; credentials come from the standard boto3 chain.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Aws
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from constructs import Construct

from condor_annex import contract
from stacks.config_bucket import annex_object_arns
from stacks.lease import schedule_arn_pattern
from stacks.nag import acknowledge_wildcard_resources
from stacks.spot_fleet_role import ec2_arn

_ANNEX_TAG = contract.TAG_ANNEX_NAME
EXISTING_LAUNCH_RESOURCES = [
    ec2_arn("image/*", account=False),
    *(
        ec2_arn(f"{kind}/*")
        for kind in ("network-interface", "security-group", "subnet", "key-pair")
    ),
]
LAUNCH_TEMPLATES = ec2_arn("launch-template/*")
"""Annex launch templates get generated ids; every grant on them is conditioned on the annex tag."""
SERVICE_LINKED_ROLE_ARNS = [
    f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:{role.arn_path()}"
    for role in contract.SERVICE_LINKED_ROLES
]
DEFAULT_IMAGE_PARAMETERS = (
    f"arn:{Aws.PARTITION}:ssm:{Aws.REGION}::parameter/aws/service/ami-amazon-linux-latest/*"
)
"""The public SSM parameters naming the region's default images (condor_annex.images)."""


class OperatorPolicy(Construct):
    """`policy`: the customer-managed policy to attach to annex operators."""

    policy: iam.ManagedPolicy

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        bucket: s3.IBucket,
        instance_role_arn: str,
        instance_profile_arn: str,
        spot_fleet_role_arn: str,
        scheduler_role_arn: str,
        functions: Sequence[lambda_.IFunction],
    ) -> None:
        super().__init__(scope, id)
        request_tagged = {"Null": {f"aws:RequestTag/{_ANNEX_TAG}": "false"}}
        resource_tagged = {"Null": {f"aws:ResourceTag/{_ANNEX_TAG}": "false"}}
        statements = [
            iam.PolicyStatement(
                sid="LaunchAnnexInstancesTagged",
                actions=["ec2:RunInstances"],
                resources=[ec2_arn("instance/*")],
                # Guard rails the operator cannot bypass: the annex tag, the setup's instance
                # profile and IMDSv2 required (ec2:MetadataHttpTokens, SAR "RunInstances").
                conditions={
                    **request_tagged,
                    "ArnEquals": {"ec2:InstanceProfile": instance_profile_arn},
                    "StringEquals": {"ec2:MetadataHttpTokens": "required"},
                },
            ),
            iam.PolicyStatement(
                sid="LaunchAnnexVolumesTagged",
                actions=["ec2:RunInstances"],
                resources=[ec2_arn("volume/*")],
                conditions=request_tagged,
            ),
            iam.PolicyStatement(
                sid="LaunchWithExistingResources",
                actions=["ec2:RunInstances"],
                resources=EXISTING_LAUNCH_RESOURCES,
            ),
            # A Spot Fleet annex launches from its own template: RunInstances authorizes the
            # template as a resource ("Use launch templates to control launching instances").
            iam.PolicyStatement(
                sid="LaunchFromAnnexLaunchTemplates",
                actions=["ec2:RunInstances"],
                resources=[LAUNCH_TEMPLATES],
                conditions=resource_tagged,
            ),
            # create.py: CreateLaunchTemplate(TagSpecifications=[launch-template: annex tags]).
            iam.PolicyStatement(
                sid="CreateAnnexLaunchTemplatesTagged",
                actions=["ec2:CreateLaunchTemplate"],
                resources=[LAUNCH_TEMPLATES],
                conditions=request_tagged,
            ),
            iam.PolicyStatement(
                sid="TagLaunchTemplatesAtCreationOnly",
                actions=["ec2:CreateTags"],
                resources=[LAUNCH_TEMPLATES],
                conditions={"StringEquals": {"ec2:CreateAction": "CreateLaunchTemplate"}},
            ),
            # create.py rollback and `off`: DeleteLaunchTemplate(LaunchTemplateId=...).
            iam.PolicyStatement(
                sid="DeleteAnnexLaunchTemplates",
                actions=["ec2:DeleteLaunchTemplate"],
                resources=[LAUNCH_TEMPLATES],
                conditions=resource_tagged,
            ),
            iam.PolicyStatement(
                sid="RequestAnnexFleetsTagged",
                actions=["ec2:RequestSpotFleet"],
                resources=[ec2_arn("spot-fleet-request/*")],
                conditions=request_tagged,
            ),
            # EC2 Fleet (launch_spec.py `build_ec2_fleet_request`): the fleet is created tagged; CreateFleet
            # is also authorized against every resource the launch uses (Service Authorization
            # Reference, "ec2:CreateFleet": fleet, instance, volume, launch-template, image,
            # subnet, security-group, network-interface, key-pair), and an instant fleet launches
            # with the caller's own RunInstances permissions (granted above).
            iam.PolicyStatement(
                sid="CreateAnnexEc2FleetsTagged",
                actions=["ec2:CreateFleet"],
                resources=[ec2_arn("fleet/*")],
                conditions=request_tagged,
            ),
            iam.PolicyStatement(
                sid="CreateEc2FleetsFromAnnexLaunchTemplates",
                actions=["ec2:CreateFleet"],
                resources=[LAUNCH_TEMPLATES],
                conditions=resource_tagged,
            ),
            iam.PolicyStatement(
                sid="CreateEc2FleetsWithExistingResources",
                actions=["ec2:CreateFleet"],
                resources=[
                    ec2_arn("instance/*"),
                    ec2_arn("volume/*"),
                    *EXISTING_LAUNCH_RESOURCES,
                ],
            ),
            # RequestSpotFleet also authorizes the launch template, subnets, images, security
            # groups and key pairs the request names (optional resource types in the Service
            # Authorization Reference): the annex's own template, the user's chosen resources.
            iam.PolicyStatement(
                sid="RequestFleetsFromAnnexLaunchTemplates",
                actions=["ec2:RequestSpotFleet"],
                resources=[LAUNCH_TEMPLATES],
                conditions=resource_tagged,
            ),
            iam.PolicyStatement(
                sid="RequestFleetsWithExistingResources",
                actions=["ec2:RequestSpotFleet"],
                resources=EXISTING_LAUNCH_RESOURCES,
            ),
            iam.PolicyStatement(
                sid="TagAtLaunchOnly",
                actions=["ec2:CreateTags"],
                resources=[
                    ec2_arn("instance/*"),
                    ec2_arn("volume/*"),
                    ec2_arn("spot-fleet-request/*"),
                    ec2_arn("fleet/*"),
                ],
                conditions={
                    "StringEquals": {
                        "ec2:CreateAction": ["RunInstances", "RequestSpotFleet", "CreateFleet"]
                    }
                },
            ),
            iam.PolicyStatement(
                sid="EndAnnexInstances",
                actions=["ec2:TerminateInstances"],
                resources=[ec2_arn("instance/*")],
                conditions=resource_tagged,
            ),
            iam.PolicyStatement(
                sid="EndAnnexFleets",
                actions=["ec2:CancelSpotFleetRequests"],
                resources=[ec2_arn("spot-fleet-request/*")],
                conditions=resource_tagged,
            ),
            iam.PolicyStatement(
                sid="EndAnnexEc2Fleets",
                actions=["ec2:DeleteFleets"],
                resources=[ec2_arn("fleet/*")],
                conditions=resource_tagged,
            ),
            iam.PolicyStatement(
                sid="DescribeForStatusAndLaunch",
                actions=[
                    "ec2:DescribeInstances",
                    "ec2:DescribeSpotFleetRequests",
                    "ec2:DescribeSpotFleetInstances",
                    "ec2:DescribeImages",
                    "ec2:DescribeSubnets",
                    "ec2:DescribeSecurityGroups",
                    "ec2:DescribeInstanceTypes",
                    "ec2:DescribeSpotPriceHistory",
                    "ec2:DescribeLaunchTemplates",
                    "ec2:DescribeFleets",
                    "ec2:DescribeFleetInstances",
                ],
                resources=["*"],
            ),
            iam.PolicyStatement(
                # The cost preview; the Price List Query API has no resource types at all.
                sid="ReadPrices",
                actions=["pricing:GetProducts"],
                resources=["*"],
            ),
            iam.PolicyStatement(
                # The default image: Amazon's public parameter naming the region's current AL2023
                # (public parameters have no account in their ARN).
                sid="ReadDefaultImageParameter",
                actions=["ssm:GetParameter"],
                resources=[DEFAULT_IMAGE_PARAMETERS],
            ),
            iam.PolicyStatement(
                sid="PassAnnexRolesToEc2",
                actions=["iam:PassRole"],
                resources=[instance_role_arn, spot_fleet_role_arn],
                conditions={
                    "StringEquals": {
                        "iam:PassedToService": ["ec2.amazonaws.com", "spotfleet.amazonaws.com"]
                    }
                },
            ),
            iam.PolicyStatement(
                sid="PassSchedulerRole",
                actions=["iam:PassRole"],
                resources=[scheduler_role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}},
            ),
            iam.PolicyStatement(
                sid="ManageAnnexObjects",
                actions=["s3:PutObject", "s3:GetObject", "s3:DeleteObject"],
                resources=[
                    *annex_object_arns(bucket),
                ],
            ),
            iam.PolicyStatement(
                sid="ListConfigBucket", actions=["s3:ListBucket"], resources=[bucket.bucket_arn]
            ),
            iam.PolicyStatement(
                sid="ManageLeaseSchedules",
                actions=[
                    "scheduler:CreateSchedule",
                    "scheduler:UpdateSchedule",
                    "scheduler:GetSchedule",
                    "scheduler:DeleteSchedule",
                ],
                resources=[schedule_arn_pattern()],
            ),
            iam.PolicyStatement(
                sid="UseSetupFunctions",
                actions=["lambda:InvokeFunction", "lambda:GetFunction"],
                resources=[f.function_arn for f in functions],
            ),
            # -check-setup confirms the instance profile exists (iam:GetInstanceProfile acts on
            # the `instance-profile` resource, Service Authorization Reference).
            iam.PolicyStatement(
                sid="ReadSetupInstanceProfile",
                actions=["iam:GetInstanceProfile"],
                resources=[instance_profile_arn],
            ),
            # The fleets' service-linked roles (contract.SERVICE_LINKED_ROLES): `-check-setup`
            # reads them, and an operator in an account that lacks one may create exactly those
            # (the grant AWS's "Spot Fleet permissions" user policy makes), nothing else.
            iam.PolicyStatement(
                sid="CreateFleetServiceLinkedRoles",
                actions=["iam:CreateServiceLinkedRole"],
                resources=SERVICE_LINKED_ROLE_ARNS,
                conditions={
                    "StringEquals": {
                        "iam:AWSServiceName": [r.service for r in contract.SERVICE_LINKED_ROLES]
                    }
                },
            ),
            iam.PolicyStatement(
                sid="ReadFleetServiceLinkedRoles",
                actions=["iam:GetRole"],
                resources=SERVICE_LINKED_ROLE_ARNS,
            ),
            iam.PolicyStatement(
                sid="ReadSetupStack",
                actions=["cloudformation:DescribeStacks"],
                resources=[Aws.STACK_ID],
            ),
        ]
        self.policy = iam.ManagedPolicy(
            self,
            "Policy",
            description="condor_annex day-to-day use: launch, inspect and end annexes",
            statements=statements,
        )
        acknowledge_wildcard_resources(
            self.policy,
            ["*"],
            "EC2 Describe* calls support no resource-level permissions (status, images, "
            "subnets, prices, launch templates); pricing:GetProducts has no resource types.",
        )
        acknowledge_wildcard_resources(
            self.policy,
            [
                ec2_arn("instance/*"),
                ec2_arn("volume/*"),
                ec2_arn("spot-fleet-request/*"),
                ec2_arn("fleet/*"),
            ],
            "Instances, volumes and fleets get generated ids: launching requires the "
            "htcondor:AnnexName request tag (and the setup's instance profile), tagging is "
            "limited to launch time, terminating, cancelling and deleting to annex-tagged "
            "resources.",
        )
        acknowledge_wildcard_resources(
            self.policy,
            EXISTING_LAUNCH_RESOURCES,
            "Annexes launch from an image, subnet, security group or key pair the user "
            "chooses per annex; limited to this account and region (images may be owned by "
            "others).",
        )
        acknowledge_wildcard_resources(
            self.policy,
            [DEFAULT_IMAGE_PARAMETERS],
            "Amazon's public parameters naming the current Amazon Linux images (read-only; "
            "one per architecture and kernel).",
        )
        acknowledge_wildcard_resources(
            self.policy,
            [LAUNCH_TEMPLATES],
            "Each Spot Fleet annex gets its own launch template with a generated id: creating "
            "one requires the htcondor:AnnexName request tag, tagging is limited to its "
            "creation, launching from and deleting one require the htcondor:AnnexName tag on it.",
        )
        acknowledge_wildcard_resources(
            self.policy,
            [
                *annex_object_arns(bucket),
                schedule_arn_pattern(),
            ],
            "Per-annex objects (config-<annex>.tar.gz, leases/<annex>.json) and schedules "
            "(condor-annex-lease-<annex>): the `*` is the annex name.",
        )
