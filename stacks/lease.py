"""Lease enforcement: the lease function, the periodic sweep and the role Scheduler invokes with.

The CLI creates one EventBridge Scheduler schedule per annex at its lease expiry
(`ActionAfterCompletion=DELETE`), assuming `scheduler_role` to invoke `lease_function` with the
annex's lease record; the sweep runs every 15 minutes as a safety net.
"""

from __future__ import annotations

from aws_cdk import Aws, Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from constructs import Construct

from condor_annex import contract
from stacks.config_bucket import annex_object_arns
from stacks.function_role import PythonFunction
from stacks.nag import acknowledge_wildcard_resources
from stacks.spot_fleet_role import ec2_arn

SWEEP_RATE = Duration.minutes(15)


def enforcement_statements(bucket: s3.IBucket) -> list[iam.PolicyStatement]:
    """Read and delete tarballs and lease records; end only annex-tagged instances, fleets and
    launch templates."""
    annex_tagged = {"Null": {f"aws:ResourceTag/{contract.TAG_ANNEX_NAME}": "false"}}
    return [
        iam.PolicyStatement(
            sid="ReadAndDeleteAnnexObjects",
            actions=["s3:GetObject", "s3:DeleteObject"],
            resources=[
                *annex_object_arns(bucket),
            ],
        ),
        # ListBucket: lets a missing object answer 404 (not 403) and lets the sweep list leases/.
        iam.PolicyStatement(
            sid="ListConfigBucket", actions=["s3:ListBucket"], resources=[bucket.bucket_arn]
        ),
        iam.PolicyStatement(
            sid="FindAnnexResources",
            actions=[
                "ec2:DescribeInstances",
                "ec2:DescribeSpotFleetRequests",
                "ec2:DescribeFleets",
                "ec2:DescribeLaunchTemplates",
            ],
            resources=["*"],
        ),
        iam.PolicyStatement(
            sid="TerminateAnnexInstances",
            actions=["ec2:TerminateInstances"],
            resources=[ec2_arn("instance/*")],
            conditions=annex_tagged,
        ),
        iam.PolicyStatement(
            sid="CancelAnnexFleets",
            actions=["ec2:CancelSpotFleetRequests"],
            resources=[ec2_arn("spot-fleet-request/*")],
            conditions=annex_tagged,
        ),
        iam.PolicyStatement(
            sid="DeleteAnnexEc2Fleets",
            actions=["ec2:DeleteFleets"],
            resources=[ec2_arn("fleet/*")],
            conditions=annex_tagged,
        ),
        # A Spot Fleet annex's own launch template (`contract.launch_template_name`).
        iam.PolicyStatement(
            sid="DeleteAnnexLaunchTemplates",
            actions=["ec2:DeleteLaunchTemplate"],
            resources=[ec2_arn("launch-template/*")],
            conditions=annex_tagged,
        ),
        iam.PolicyStatement(
            sid="DeleteLeaseSchedules",
            actions=["scheduler:DeleteSchedule"],
            resources=[schedule_arn_pattern()],
        ),
    ]


def enforcement_wildcards(bucket: s3.IBucket) -> tuple[list[str], list[str]]:
    """The wildcard resources of `enforcement_statements`: (annex-tagged, annex-named)."""
    tagged = [
        ec2_arn("instance/*"),
        ec2_arn("spot-fleet-request/*"),
        ec2_arn("fleet/*"),
        ec2_arn("launch-template/*"),
    ]
    named = [
        *annex_object_arns(bucket),
        schedule_arn_pattern(),
    ]
    return tagged, named


def schedule_arn_pattern() -> str:
    """Every annex lease schedule in the default schedule group."""
    return (
        f"arn:{Aws.PARTITION}:scheduler:{Aws.REGION}:{Aws.ACCOUNT_ID}:schedule/default/"
        f"{contract.SCHEDULE_NAME_PREFIX}*"
    )


class LeaseEnforcement(Construct):
    """`lease_function`, `sweep_function` (with its 15-minute rule) and `scheduler_role`."""

    lease_function: lambda_.Function
    sweep_function: lambda_.Function
    scheduler_role: iam.Role
    sweep_rule: events.Rule

    def __init__(self, scope: Construct, id: str, *, bucket: s3.IBucket) -> None:
        super().__init__(scope, id)
        self.lease_function = PythonFunction(
            self,
            "Lease",
            source="lease",
            entry="handler",
            description="condor_annex: end one annex when its lease has expired",
            statements=enforcement_statements(bucket),
            environment={contract.LAMBDA_ENV_CONFIG_BUCKET: bucket.bucket_name},
            timeout=Duration.minutes(5),
        ).function
        self.sweep_function = PythonFunction(
            self,
            "Sweep",
            source="lease",
            entry="sweep_handler",
            description="condor_annex: end every annex whose recorded lease has expired",
            statements=enforcement_statements(bucket),
            environment={contract.LAMBDA_ENV_CONFIG_BUCKET: bucket.bucket_name},
            timeout=Duration.minutes(10),
        ).function
        self.sweep_rule = events.Rule(
            self,
            "SweepSchedule",
            description="condor_annex: lease sweep",
            schedule=events.Schedule.rate(SWEEP_RATE),
            targets=[targets.LambdaFunction(self.sweep_function, retry_attempts=2)],
        )
        self.scheduler_role = iam.Role(
            self,
            "SchedulerRole",
            description="EventBridge Scheduler invokes the condor_annex lease function",
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}},
            ),
            inline_policies={
                "InvokeLeaseFunction": iam.PolicyDocument(
                    statements=[
                        iam.PolicyStatement(
                            actions=["lambda:InvokeFunction"],
                            resources=[self.lease_function.function_arn],
                        )
                    ]
                )
            },
        )
        tagged, named = enforcement_wildcards(bucket)
        acknowledge_wildcard_resources(
            self,
            ["*"],
            "ec2:DescribeInstances, ec2:DescribeSpotFleetRequests and "
            "ec2:DescribeLaunchTemplates support no resource-level permissions; the functions "
            "filter by client token (or the annex's template name) and confirm every match.",
        )
        acknowledge_wildcard_resources(
            self,
            tagged,
            "Terminate, cancel and launch template deletion are conditioned on the "
            "htcondor:AnnexName tag being present; instance, fleet and template ids are "
            "generated per annex.",
        )
        acknowledge_wildcard_resources(
            self,
            named,
            "Per-annex objects (config-<annex>.tar.gz, leases/<annex>.json) and schedules "
            "(condor-annex-lease-<annex>): the `*` is the annex name.",
        )
