"""The role and instance profile every annex instance runs with.

The boot agent discovers the config bucket by reading this role's policies (docs/RULES.md, "Configuration transport"): the
inline policy named `contract.INSTANCE_ROLE_POLICY_NAME` holds exactly one statement, `s3:GetObject`
on `arn:<partition>:s3:::<bucket>/config-*.tar.gz`. A second inline policy grants the introspection the
agent needs, IAM reads scoped to this role and this profile only.
"""

from __future__ import annotations

from aws_cdk import Aws, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from condor_annex import contract
from stacks.nag import acknowledge_wildcard_resources
from stacks.naming import ROLE_PATH, iam_arn, iam_name

INTROSPECTION_POLICY_NAME = "HTCondorAnnexIntrospection"


def config_read_document(bucket_name: str) -> iam.PolicyDocument:
    """The one statement the agent looks for: read `config-*.tar.gz`, nothing else in S3."""
    return iam.PolicyDocument(
        statements=[
            iam.PolicyStatement(
                sid="ReadAnnexConfig",
                actions=["s3:GetObject"],
                resources=[
                    contract.config_object_arn_pattern(bucket_name, partition=Aws.PARTITION)
                ],
            )
        ]
    )


class InstanceRole(Construct):
    """`role` (trusting EC2) and `profile`, named so their policies can cite their own ARNs."""

    role: iam.Role
    profile: iam.InstanceProfile
    role_arn: str
    profile_arn: str

    def __init__(self, scope: Construct, id: str, *, bucket_name: str) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        name = iam_name(self, "annex-instance")
        own_role_arn = iam_arn(stack, "role", name)
        own_profile_arn = iam_arn(stack, "instance-profile", name)
        introspection = iam.PolicyDocument(
            statements=[
                iam.PolicyStatement(
                    sid="DescribeOwnInstanceAndFleet",
                    actions=[
                        "ec2:DescribeInstances",
                        "ec2:DescribeSpotFleetRequests",
                        "ec2:DescribeFleets",
                    ],
                    resources=["*"],
                ),
                iam.PolicyStatement(
                    sid="ReadOwnProfile",
                    actions=["iam:GetInstanceProfile"],
                    resources=[own_profile_arn],
                ),
                iam.PolicyStatement(
                    sid="ReadOwnRolePolicies",
                    actions=[
                        "iam:ListRolePolicies",
                        "iam:GetRolePolicy",
                        "iam:ListAttachedRolePolicies",
                    ],
                    resources=[own_role_arn],
                ),
            ]
        )
        # No managed policies are attached to this role, so iam:GetPolicy/GetPolicyVersion
        # (the agent's fallback scan of attached policies) have nothing to be granted on.
        self.role = iam.Role(
            self,
            "Role",
            role_name=name,
            path=ROLE_PATH,
            description="condor_annex instances: read config-*.tar.gz and describe themselves",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            inline_policies={
                contract.INSTANCE_ROLE_POLICY_NAME: config_read_document(bucket_name),
                INTROSPECTION_POLICY_NAME: introspection,
            },
        )
        self.profile = iam.InstanceProfile(
            self, "Profile", role=self.role, instance_profile_name=name, path=ROLE_PATH
        )
        self.role_arn = self.role.role_arn
        self.profile_arn = self.profile.instance_profile_arn
        acknowledge_wildcard_resources(
            self.role,
            ["*"],
            "ec2:DescribeInstances, ec2:DescribeSpotFleetRequests and ec2:DescribeFleets support "
            "no resource-level permissions; the agent needs them to find its own client token and "
            "its fleet's.",
        )
        acknowledge_wildcard_resources(
            self.role,
            [contract.config_object_arn_pattern(bucket_name, partition=Aws.PARTITION)],
            "The `*` in config-*.tar.gz is the annex name: every annex instance reads its own "
            "annex's tarball and nothing else in S3 (per-annex isolation is a stretch goal).",
        )
