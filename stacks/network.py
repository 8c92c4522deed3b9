"""The security group annex instances run in.

HTCondor's port 9618 is open only to the CIDRs the admin names; SSH is closed unless asked
for; all egress is allowed (instances reach the collector, S3 and the EC2/IAM APIs).
The VPC is a stack parameter whose default comes from context, so one synthesized template can
be deployed into another VPC with `--parameters TargetVpcId=vpc-...`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aws_cdk import Annotations, CfnParameter, Fn
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from condor_annex import contract

HTCONDOR_PORT = 9618
SSH_PORT = 22
VPC_PARAMETER = contract.STACK_VPC_PARAMETER
"""The stack parameter holding the VPC id (default: context `vpcId` or the default VPC)."""


def _peer(cidr: str) -> ec2.IPeer:
    if ipaddress.ip_network(cidr).version == 6:
        return ec2.Peer.ipv6(cidr)
    return ec2.Peer.ipv4(cidr)


class AnnexNetwork(Construct):
    """`security_group` in the VPC named by the `TargetVpcId` parameter (`vpc_id`)."""

    security_group: ec2.SecurityGroup
    vpc_id: str
    vpc_parameter: CfnParameter

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        default_vpc_id: str,
        pool_cidrs: Sequence[str],
        ssh_cidrs: Sequence[str] = (),
    ) -> None:
        super().__init__(scope, id)
        self.vpc_parameter = CfnParameter(
            scope,
            VPC_PARAMETER,
            type="AWS::EC2::VPC::Id",
            default=default_vpc_id,
            description="VPC the annex security group is created in",
        )
        self.vpc_id = self.vpc_parameter.value_as_string
        vpc = ec2.Vpc.from_vpc_attributes(
            self, "Vpc", vpc_id=self.vpc_id, availability_zones=Fn.get_azs()
        )
        Annotations.of(vpc).acknowledge_warning(
            "@aws-cdk/aws-ec2:vpcAttributeIsListTokenavailabilityZones",
            "Only the security group uses this VPC, and it needs the VPC id alone: no subnets.",
        )
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="condor_annex instances: HTCondor from the pool only",
            allow_all_outbound=True,
        )
        for cidr in pool_cidrs:
            self.security_group.add_ingress_rule(
                _peer(cidr), ec2.Port.tcp(HTCONDOR_PORT), f"HTCondor from pool {cidr}"
            )
        for cidr in ssh_cidrs:
            self.security_group.add_ingress_rule(
                _peer(cidr), ec2.Port.tcp(SSH_PORT), f"SSH from {cidr}"
            )
