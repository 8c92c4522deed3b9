"""The "annex operator" managed policy: day-to-day `condor_annex` use without admin rights.

docs/RULES.md, "Least privilege for day-to-day use": launch only annex-tagged instances and
fleets with this setup's instance profile and IMDSv2 required, into this setup's security group
and VPC (stacks/launch_guard_rails.py, shared with the Spot Fleet role); terminate and cancel only
annex-tagged ones; create, launch from and delete only annex-tagged launch templates (each Spot
Fleet annex has its own, `contract.launch_template_name`, because a Spot Fleet launch
specification cannot require IMDSv2); pass exactly the instance and Spot Fleet roles (and the
Scheduler role for lease schedules); manage tarballs and lease records, schedules named for
annexes; invoke the connectivity and lease functions; read the setup stack.
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
from stacks.launch_guard_rails import (
    ANNEX_LAUNCH_TEMPLATES,
    CHOSEN_IMAGES,
    REQUEST_TAGGED,
    RESOURCE_TAGGED,
    LaunchGuardRails,
    ec2_arn,
)
from stacks.lease import schedule_arn_pattern
from stacks.nag import acknowledge_wildcard_resources

LAUNCH_ACTIONS = ["ec2:RunInstances", "ec2:RequestSpotFleet", "ec2:CreateFleet"]
"""Every way the operator launches: each also authorizes the template, network and image named."""
LAUNCHED_WITH_GENERATED_IDS = [
    ec2_arn("instance/*"),
    ec2_arn("volume/*"),
    ec2_arn("spot-fleet-request/*"),
    ec2_arn("fleet/*"),
]
SERVICE_LINKED_ROLE_ARNS = [
    f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:{role.arn_path()}"
    for role in contract.SERVICE_LINKED_ROLES
]
DEFAULT_IMAGE_PARAMETERS = (
    f"arn:{Aws.PARTITION}:ssm:{Aws.REGION}::parameter/aws/service/ami-amazon-linux-latest/*"
)
"""The public SSM parameters naming the region's default images (condor_annex.images)."""


class OperatorPolicy(Construct):
    """`policy` and `launch_policy`: the customer-managed policies to attach to annex operators.

    Two documents, split by verb (`launch_policy`: what `create` launches with; `policy`: the
    rest of `create` and every other verb), because one would not fit IAM's 6,144-character
    managed-policy limit with the longest names a deploy can produce
    (tests/stacks/test_policy_size.py).
    """

    policy: iam.ManagedPolicy
    launch_policy: iam.ManagedPolicy

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        bucket: s3.IBucket,
        instance_role_arn: str,
        guard_rails: LaunchGuardRails,
        spot_fleet_role_arn: str,
        scheduler_role_arn: str,
        functions: Sequence[lambda_.IFunction],
    ) -> None:
        super().__init__(scope, id)
        request_tagged, resource_tagged = REQUEST_TAGGED, RESOURCE_TAGGED
        pass_annex_roles = iam.PolicyStatement(
            sid="PassAnnexRolesToEc2",
            actions=["iam:PassRole"],
            resources=[instance_role_arn, spot_fleet_role_arn],
            conditions={
                "StringEquals": {
                    "iam:PassedToService": ["ec2.amazonaws.com", "spotfleet.amazonaws.com"]
                }
            },
        )
        launch_statements = [
            iam.PolicyStatement(
                sid="LaunchAnnexInstancesTagged",
                actions=["ec2:RunInstances"],
                resources=[ec2_arn("instance/*")],
                conditions=guard_rails.instance_conditions(),
            ),
            iam.PolicyStatement(
                sid="LaunchAnnexVolumesTagged",
                actions=["ec2:RunInstances"],
                resources=[ec2_arn("volume/*")],
                conditions=request_tagged,
            ),
            # A Spot Fleet annex launches from its own template: RunInstances authorizes the
            # template as a resource ("Use launch templates to control launching instances").
            *guard_rails.launch_resources("Launch", LAUNCH_ACTIONS),
            # create.py: CreateLaunchTemplate(TagSpecifications=[launch-template: annex tags]).
            # What a template holds cannot be limited here (launch_guard_rails): the launches
            # from it can.
            iam.PolicyStatement(
                sid="CreateAnnexLaunchTemplatesTagged",
                actions=["ec2:CreateLaunchTemplate"],
                resources=[ANNEX_LAUNCH_TEMPLATES],
                conditions=request_tagged,
            ),
            iam.PolicyStatement(
                sid="TagLaunchTemplatesAtCreationOnly",
                actions=["ec2:CreateTags"],
                resources=[ANNEX_LAUNCH_TEMPLATES],
                conditions={"StringEquals": {"ec2:CreateAction": "CreateLaunchTemplate"}},
            ),
            iam.PolicyStatement(
                sid="RequestAnnexFleetsTagged",
                actions=["ec2:RequestSpotFleet"],
                resources=[ec2_arn("spot-fleet-request/*")],
                conditions=request_tagged,
            ),
            # EC2 Fleet (launch_spec.py `build_ec2_fleet_request`): the fleet is created tagged;
            # CreateFleet is also authorized against the instance, volumes, template, subnets and
            # image (Service Authorization Reference, "ec2:CreateFleet"), and an instant fleet
            # launches with the caller's own RunInstances permissions (guarded above). CreateFleet
            # sees no values from the template ("Resource-level permissions for this action do not
            # include the resources specified in a launch template"): the profile is checked where
            # it is seen.
            iam.PolicyStatement(
                sid="CreateAnnexEc2FleetsTagged",
                actions=["ec2:CreateFleet"],
                resources=[ec2_arn("fleet/*")],
                conditions=request_tagged,
            ),
            iam.PolicyStatement(
                sid="CreateEc2FleetsOfSetupInstances",
                actions=["ec2:CreateFleet"],
                resources=[ec2_arn("instance/*")],
                conditions={
                    "ArnEqualsIfExists": {"ec2:InstanceProfile": guard_rails.instance_profile_arn}
                },
            ),
            iam.PolicyStatement(
                sid="CreateEc2FleetsWithVolumes",
                actions=["ec2:CreateFleet"],
                resources=[ec2_arn("volume/*")],
            ),
            iam.PolicyStatement(
                sid="TagAtLaunchOnly",
                actions=["ec2:CreateTags"],
                resources=LAUNCHED_WITH_GENERATED_IDS,
                conditions={
                    "StringEquals": {
                        "ec2:CreateAction": ["RunInstances", "RequestSpotFleet", "CreateFleet"]
                    }
                },
            ),
            # PassRole is checked at RunInstances/RequestSpotFleet (the roles named in the
            # request: the instance profile's, the fleet role).
            pass_annex_roles,
        ]
        statements = [
            # create.py rollback and `off`: DeleteLaunchTemplate(LaunchTemplateId=...).
            iam.PolicyStatement(
                sid="DeleteAnnexLaunchTemplates",
                actions=["ec2:DeleteLaunchTemplate"],
                resources=[ANNEX_LAUNCH_TEMPLATES],
                conditions=resource_tagged,
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
                resources=[guard_rails.instance_profile_arn],
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
            description="condor_annex day-to-day use: inspect, extend and end annexes",
            statements=statements,
        )
        self.launch_policy = iam.ManagedPolicy(
            self,
            "LaunchPolicy",
            description="condor_annex day-to-day use: launch annexes (with the operator policy)",
            statements=launch_statements,
        )
        acknowledge_wildcard_resources(
            self,
            ["*"],
            "EC2 Describe* calls support no resource-level permissions (status, images, "
            "subnets, prices, launch templates); pricing:GetProducts has no resource types.",
        )
        acknowledge_wildcard_resources(
            self,
            LAUNCHED_WITH_GENERATED_IDS,
            "Instances, volumes and fleets get generated ids: launching requires the "
            "htcondor:AnnexName request tag, the setup's instance profile and IMDSv2, tagging "
            "is limited to launch time, terminating, cancelling and deleting to annex-tagged "
            "resources.",
        )
        acknowledge_wildcard_resources(
            self,
            [ec2_arn("subnet/*"), ec2_arn("network-interface/*")],
            "Subnets and network interfaces only in the setup's VPC (ec2:Vpc); the user picks "
            "the subnet per annex, interfaces get generated ids.",
        )
        acknowledge_wildcard_resources(
            self,
            [CHOSEN_IMAGES, ec2_arn("key-pair/*")],
            "Annexes launch from an image or key pair the user chooses per annex; limited to "
            "this account and region (images may be owned by others).",
        )
        acknowledge_wildcard_resources(
            self,
            [DEFAULT_IMAGE_PARAMETERS],
            "Amazon's public parameters naming the current Amazon Linux images (read-only; "
            "one per architecture and kernel).",
        )
        acknowledge_wildcard_resources(
            self,
            [ANNEX_LAUNCH_TEMPLATES],
            "Each Spot Fleet annex gets its own launch template with a generated id: creating "
            "one requires the htcondor:AnnexName request tag, tagging is limited to its "
            "creation, launching from and deleting one require the htcondor:AnnexName tag on it.",
        )
        acknowledge_wildcard_resources(
            self,
            [
                *annex_object_arns(bucket),
                schedule_arn_pattern(),
            ],
            "Per-annex objects (config-<annex>.tar.gz, leases/<annex>.json) and schedules "
            "(condor-annex-lease-<annex>): the `*` is the annex name.",
        )
