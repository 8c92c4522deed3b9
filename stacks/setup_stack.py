"""The setup stack: composes one construct per concern and declares the contract's outputs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional

from aws_cdk import App, CfnOutput, Environment, Fn, Stack, Validations
from aws_cdk import aws_ec2 as ec2
from cdk_nag import AwsSolutionsChecks
from constructs import Construct

from condor_annex import contract
from stacks.config_bucket import ConfigBucket
from stacks.connectivity import ConnectivityCheck
from stacks.instance_role import InstanceRole
from stacks.launch_guard_rails import LaunchGuardRails, ec2_arn
from stacks.lease import LeaseEnforcement
from stacks.network import AnnexNetwork
from stacks.operator_policy import OperatorPolicy
from stacks.settings import CONTEXT_KEYS, SettingsError, SetupSettings
from stacks.spot_fleet_role import SpotFleetRole

FEATURE_FLAGS: dict[str, Any] = {
    # Grant S3 log delivery through a bucket policy, not the legacy LogDeliveryWrite ACL
    # (which BucketOwnerEnforced forbids).
    "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy": True,
}

DESCRIPTION = "condor_annex setup: config bucket, annex roles, security group, lease functions"


class SetupStack(Stack):
    """Everything `condor_annex` needs in one account and region; outputs per the contract."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: SetupSettings,
        env: Optional[Environment] = None,
    ) -> None:
        super().__init__(
            scope, id, stack_name=settings.stack_name, env=env, description=DESCRIPTION
        )
        self.settings = settings

        config = ConfigBucket(
            self,
            "Config",
            versioned=settings.versioned_config_bucket,
            access_logs=settings.access_logs,
        )
        instance = InstanceRole(self, "Instance", bucket_name=config.bucket_name)
        network = AnnexNetwork(
            self,
            "Network",
            default_vpc_id=settings.vpc_id or self._default_vpc_id(),
            pool_cidrs=settings.pool_cidrs,
            ssh_cidrs=settings.ssh_cidrs,
        )
        guard_rails = LaunchGuardRails(
            security_group_arn=ec2_arn(
                f"security-group/{network.security_group.security_group_id}"
            ),
            vpc_arn=ec2_arn(f"vpc/{network.vpc_id}"),
            instance_profile_arn=instance.profile_arn,
        )
        spot_fleet = SpotFleetRole(
            self, "SpotFleet", instance_role=instance.role, guard_rails=guard_rails
        )
        lease = LeaseEnforcement(self, "LeaseEnforcement", bucket=config.bucket)
        connectivity = ConnectivityCheck(self, "Connectivity")
        operator = OperatorPolicy(
            self,
            "Operator",
            bucket=config.bucket,
            instance_role_arn=instance.role_arn,
            guard_rails=guard_rails,
            spot_fleet_role_arn=spot_fleet.role_arn,
            scheduler_role_arn=lease.scheduler_role.role_arn,
            functions=[lease.lease_function, lease.sweep_function, connectivity.function],
        )

        values: dict[str, str] = {
            contract.OUTPUT_CONFIG_BUCKET.key: config.bucket_name,
            contract.OUTPUT_INSTANCE_PROFILE_ARN.key: instance.profile_arn,
            contract.OUTPUT_INSTANCE_ROLE_ARN.key: instance.role_arn,
            contract.OUTPUT_SPOT_FLEET_ROLE_ARN.key: spot_fleet.role_arn,
            contract.OUTPUT_SECURITY_GROUP_IDS.key: Fn.join(
                ",", [network.security_group.security_group_id]
            ),
            contract.OUTPUT_VPC_ID.key: network.vpc_id,
            contract.OUTPUT_LEASE_FUNCTION_ARN.key: lease.lease_function.function_arn,
            contract.OUTPUT_SWEEP_FUNCTION_ARN.key: lease.sweep_function.function_arn,
            contract.OUTPUT_CONNECTIVITY_FUNCTION_ARN.key: connectivity.function.function_arn,
            contract.OUTPUT_SCHEDULER_ROLE_ARN.key: lease.scheduler_role.role_arn,
            contract.OUTPUT_OPERATOR_POLICY_ARN.key: operator.policy.managed_policy_arn,
            contract.OUTPUT_OPERATOR_LAUNCH_POLICY_ARN.key: (
                operator.launch_policy.managed_policy_arn
            ),
        }
        for output in contract.STACK_OUTPUTS:
            CfnOutput(self, output.key, value=values[output.key], description=output.description)

    def _default_vpc_id(self) -> str:
        """The account's default VPC, looked up at synth time (needs an account and region)."""
        if self.account.startswith("${Token") or self.region.startswith("${Token"):
            raise SettingsError(
                "no vpcId in context and no account/region to look up the default VPC: "
                "run through `cdk` with credentials, or pass -c vpcId=vpc-..."
            )
        return ec2.Vpc.from_lookup(self, "DefaultVpc", is_default=True).vpc_id


def build_setup_app(
    context: Optional[Mapping[str, Any]] = None, outdir: Optional[str] = None
) -> tuple[App, SetupStack]:
    """The CDK app with the setup stack and the cdk-nag AwsSolutions checks.

    `context` is the lowest-precedence context (app.py passes cdk.json's); `cdk -c` values and
    CDK_CONTEXT_JSON override it. `outdir` defaults to CDK_OUTDIR, as in every CDK app.
    """
    app = App(
        context={**FEATURE_FLAGS, **dict(context or {})},
        outdir=outdir,
        # The built-in CloudFormation validator (WASM) costs ~12 s of CPU per synth here; the
        # template is linted with cfn-lint and checked with cdk-nag in the test suite instead.
        builtin_cloud_formation_validation=False,
    )
    values = {key: app.node.try_get_context(key) for key in CONTEXT_KEYS}
    settings = SetupSettings.from_context({k: v for k, v in values.items() if v is not None})
    env = None
    if settings.vpc_id is None:
        # Only the default-VPC lookup needs a concrete environment; otherwise stay portable.
        account = os.environ.get("CDK_DEFAULT_ACCOUNT")
        region = os.environ.get("CDK_DEFAULT_REGION")
        if account and region:
            env = Environment(account=account, region=region)
    stack = SetupStack(app, "Setup", settings=settings, env=env)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack
