"""The security group: 9618 from the pool's CIDRs only, no SSH unless asked, all egress."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aws_cdk.assertions import Match

from stacks.network import HTCONDOR_PORT, VPC_PARAMETER
from stacks.settings import SettingsError, SetupSettings
from tests.fixtures.cdk import PLACEHOLDER_VPC_ID, TEST_POOL_CIDRS
from tests.stacks.policies import logical_ids


def ingress(template) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for sg in logical_ids(template, "AWS::EC2::SecurityGroup"):
        rules += template["Resources"][sg]["Properties"].get("SecurityGroupIngress", [])
    for rule in logical_ids(template, "AWS::EC2::SecurityGroupIngress"):
        rules.append(template["Resources"][rule]["Properties"])
    return rules


def test_one_security_group_in_the_vpc_parameter(synthesized_setup):
    synthesized_setup.assertions.resource_count_is("AWS::EC2::SecurityGroup", 1)
    synthesized_setup.assertions.has_resource_properties(
        "AWS::EC2::SecurityGroup", Match.object_like({"VpcId": {"Ref": VPC_PARAMETER}})
    )
    parameter = synthesized_setup.template["Parameters"][VPC_PARAMETER]
    assert parameter["Type"] == "AWS::EC2::VPC::Id"
    assert parameter["Default"] == PLACEHOLDER_VPC_ID


def test_htcondor_port_open_exactly_to_the_pool_cidrs(synthesized_setup):
    rules = ingress(synthesized_setup.template)
    sources = sorted(str(r.get("CidrIp") or r.get("CidrIpv6")) for r in rules)
    assert sources == sorted(TEST_POOL_CIDRS)
    for rule in rules:
        assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == (
            "tcp",
            HTCONDOR_PORT,
            HTCONDOR_PORT,
        )


def test_no_ingress_from_the_whole_internet(synthesized_setup):
    for rule in ingress(synthesized_setup.template):
        assert rule.get("CidrIp") != "0.0.0.0/0"
        assert rule.get("CidrIpv6") != "::/0"


def test_all_egress_is_allowed(synthesized_setup):
    synthesized_setup.assertions.has_resource_properties(
        "AWS::EC2::SecurityGroup",
        Match.object_like(
            {
                "SecurityGroupEgress": [
                    Match.object_like({"CidrIp": "0.0.0.0/0", "IpProtocol": "-1"})
                ]
            }
        ),
    )


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", "10.0.0.0/8,0.0.0.0/0"])
def test_whole_internet_pool_cidr_is_refused(cidr):
    with pytest.raises(SettingsError, match="whole internet"):
        SetupSettings.from_context({"poolCidrs": cidr})


def test_whole_internet_cidr_stops_the_synth_with_the_reason():
    from stacks.setup_stack import build_setup_app

    with pytest.raises(SettingsError, match=re.escape("0.0.0.0/0")):
        build_setup_app({"vpcId": PLACEHOLDER_VPC_ID, "poolCidrs": ["0.0.0.0/0"]})


def test_ssh_is_off_unless_asked_for():
    assert SetupSettings.from_context({"sshCidrs": ["198.51.100.0/24"]}).ssh_cidrs == ()
    settings = SetupSettings.from_context({"allowSsh": "true", "sshCidrs": "198.51.100.0/24"})
    assert settings.allow_ssh and settings.ssh_cidrs == ("198.51.100.0/24",)


def test_ssh_without_cidrs_is_refused():
    with pytest.raises(SettingsError, match="sshCidrs"):
        SetupSettings.from_context({"allowSsh": True})


def test_context_lists_accept_json_and_comma_separated_text():
    assert SetupSettings.from_context({"poolCidrs": '["192.0.2.0/24"]'}).pool_cidrs == (
        "192.0.2.0/24",
    )
    assert SetupSettings.from_context({"poolCidrs": "192.0.2.0/24, 198.51.100.7"}).pool_cidrs == (
        "192.0.2.0/24",
        "198.51.100.7/32",
    )


def test_malformed_vpc_id_is_refused():
    with pytest.raises(SettingsError, match="vpcId"):
        SetupSettings.from_context({"vpcId": "default"})
