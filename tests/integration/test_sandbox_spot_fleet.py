"""The local AWS's Spot Fleet behaviour the product relies on, over HTTP with boto3."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from botocore.exceptions import ClientError

from condor_annex.contract import SPOT_FLEET_REQUEST_ID_TAG, new_client_token

AMI = "ami-12345678"
FLEET_ROLE = "arn:aws:iam::123456789012:role/spot-fleet"


@pytest.fixture
def profile_arn(aws) -> str:
    iam = aws.client("iam")
    iam.create_role(
        RoleName="annex", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"})
    )
    iam.create_instance_profile(InstanceProfileName="annex")
    iam.add_role_to_instance_profile(InstanceProfileName="annex", RoleName="annex")
    return str(iam.get_instance_profile(InstanceProfileName="annex")["InstanceProfile"]["Arn"])


def _config(token: str, profile_arn: str, capacity: int = 2, **extra) -> dict[str, Any]:
    """A config as the product sends it: no AllocationStrategy, tags on request and instances."""
    return {
        "ClientToken": token,
        "TargetCapacity": capacity,
        "IamFleetRole": FLEET_ROLE,
        "LaunchSpecifications": [
            {
                "ImageId": AMI,
                "InstanceType": "m5.large",
                "IamInstanceProfile": {"Arn": profile_arn},
                "TagSpecifications": [
                    {
                        "ResourceType": "instance",
                        "Tags": [{"Key": "htcondor:AnnexName", "Value": "sf"}],
                    }
                ],
            }
        ],
        "TagSpecifications": [
            {
                "ResourceType": "spot-fleet-request",
                "Tags": [{"Key": "htcondor:AnnexName", "Value": "sf"}],
            }
        ],
        **extra,
    }


def _fleet(ec2, fleet_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])
    return dict(answer["SpotFleetRequestConfigs"][0])


def _instances(ec2, fleet_id: str) -> list[dict[str, Any]]:
    active = ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet_id)["ActiveInstances"]
    ids = [a["InstanceId"] for a in active]
    return [
        i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]
    ]


def test_spot_fleet_request_keeps_client_token_and_defaults_allocation_strategy(aws, profile_arn):
    """ClientToken comes back in SpotFleetRequestConfig; AllocationStrategy defaults to lowestPrice.

    "SpotFleetRequestConfigData": https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_SpotFleetRequestConfigData.html
    """
    ec2 = aws.client("ec2")
    token = new_client_token("sf")
    fleet_id = ec2.request_spot_fleet(SpotFleetRequestConfig=_config(token, profile_arn))[
        "SpotFleetRequestId"
    ]

    config = _fleet(ec2, fleet_id)["SpotFleetRequestConfig"]
    assert config["ClientToken"] == token
    assert config["AllocationStrategy"] == "lowestPrice"


def test_spot_fleet_request_is_idempotent_on_client_token(aws, profile_arn):
    """Same token + same config = same fleet; different config = IdempotentParameterMismatch.

    "Ensure idempotency in Amazon EC2 API requests": https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html
    """
    ec2 = aws.client("ec2")
    token = new_client_token("sf")
    first = ec2.request_spot_fleet(SpotFleetRequestConfig=_config(token, profile_arn))
    again = ec2.request_spot_fleet(SpotFleetRequestConfig=_config(token, profile_arn))

    assert again["SpotFleetRequestId"] == first["SpotFleetRequestId"]
    assert len(ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"]) == 1
    with pytest.raises(ClientError) as raised:
        ec2.request_spot_fleet(SpotFleetRequestConfig=_config(token, profile_arn, capacity=5))
    assert raised.value.response["Error"]["Code"] == "IdempotentParameterMismatch"


def test_spot_fleet_accepts_launch_template_configs(aws, profile_arn):
    """LaunchTemplateConfigs instead of LaunchSpecifications ("RequestSpotFleet":
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RequestSpotFleet.html)."""
    ec2 = aws.client("ec2")
    template_id = ec2.create_launch_template(
        LaunchTemplateName="annex",
        LaunchTemplateData={
            "ImageId": AMI,
            "InstanceType": "m5.large",
            "IamInstanceProfile": {"Arn": profile_arn},
        },
    )["LaunchTemplate"]["LaunchTemplateId"]
    config = {
        "ClientToken": new_client_token("lt"),
        "TargetCapacity": 1,
        "IamFleetRole": FLEET_ROLE,
        "LaunchTemplateConfigs": [
            {"LaunchTemplateSpecification": {"LaunchTemplateId": template_id, "Version": "$Latest"}}
        ],
    }
    fleet_id = ec2.request_spot_fleet(SpotFleetRequestConfig=config)["SpotFleetRequestId"]

    assert len(_instances(ec2, fleet_id)) == 1


def test_spot_fleet_instances_get_the_launch_specification_profile_and_tags(aws, profile_arn):
    """Instances are launched from the launch specification, IamInstanceProfile and instance tags
    included; the request carries its own tags ("Tag a Spot Fleet":
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/tag-spot-fleet.html)."""
    ec2 = aws.client("ec2")
    fleet_id = ec2.request_spot_fleet(
        SpotFleetRequestConfig=_config(new_client_token("sf"), profile_arn)
    )["SpotFleetRequestId"]

    instances = _instances(ec2, fleet_id)
    assert len(instances) == 2
    assert {i["IamInstanceProfile"]["Arn"] for i in instances} == {profile_arn}
    assert all({"Key": "htcondor:AnnexName", "Value": "sf"} in i["Tags"] for i in instances)
    assert {"Key": "htcondor:AnnexName", "Value": "sf"} in _fleet(ec2, fleet_id)["Tags"]


def test_spot_fleet_instances_carry_a_fleet_generated_client_token(aws, profile_arn):
    """Fleet instances carry the fleet's own token, not the request's (docs/RULES.md, "Annex identity")."""
    ec2 = aws.client("ec2")
    token = new_client_token("sf")
    fleet_id = ec2.request_spot_fleet(SpotFleetRequestConfig=_config(token, profile_arn))[
        "SpotFleetRequestId"
    ]

    tokens = {i["ClientToken"] for i in _instances(ec2, fleet_id)}
    assert token not in tokens
    assert all(t and "_" not in t for t in tokens)


def test_spot_fleet_tags_instances_with_request_id_after_the_delay(aws, profile_arn):
    """Spot Fleet adds `aws:ec2spot:fleet-request-id` to its instances some time after launch
    ("Tag a Spot Fleet": https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/tag-spot-fleet.html)."""
    aws.set_fleet_tag_delay(0.5)
    ec2 = aws.client("ec2")
    deadline = time.monotonic() + 60  # only so a broken emulator fails instead of hanging
    fleet_id = ec2.request_spot_fleet(
        SpotFleetRequestConfig=_config(new_client_token("sf"), profile_arn)
    )["SpotFleetRequestId"]

    def fleet_tags() -> list[str | None]:
        tags = [
            {t["Key"]: t["Value"] for t in i.get("Tags", [])} for i in _instances(ec2, fleet_id)
        ]
        return [t.get(SPOT_FLEET_REQUEST_ID_TAG) for t in tags]

    assert fleet_tags() == [None, None]  # not at launch ...
    while fleet_tags() != [fleet_id, fleet_id]:  # ... but later
        if time.monotonic() > deadline:
            raise AssertionError("the fleet tag never appeared")
        time.sleep(0.1)


def test_cancelled_spot_fleet_with_terminate_stays_visible_as_cancelled(aws, profile_arn):
    """Cancel with TerminateInstances: `cancelled_terminating`, then `cancelled` once the
    instances are terminated; the request stays listed ("Spot Fleet request states":
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-fleet-states.html)."""
    aws.set_fleet_tag_delay(0)
    ec2 = aws.client("ec2")
    fleet_id = ec2.request_spot_fleet(
        SpotFleetRequestConfig=_config(new_client_token("sf"), profile_arn)
    )["SpotFleetRequestId"]
    ids = [i["InstanceId"] for i in _instances(ec2, fleet_id)]

    answer = ec2.cancel_spot_fleet_requests(SpotFleetRequestIds=[fleet_id], TerminateInstances=True)

    assert (
        answer["SuccessfulFleetRequests"][0]["CurrentSpotFleetRequestState"]
        == "cancelled_terminating"
    )
    assert _fleet(ec2, fleet_id)["SpotFleetRequestState"] == "cancelled"
    states = {
        i["State"]["Name"]
        for r in ec2.describe_instances(InstanceIds=ids)["Reservations"]
        for i in r["Instances"]
    }
    assert states == {"terminated"}


def test_cancelled_spot_fleet_without_terminate_leaves_instances_running(aws, profile_arn):
    """Cancel without TerminateInstances: `cancelled_running`, instances keep running
    ("Spot Fleet request states")."""
    ec2 = aws.client("ec2")
    fleet_id = ec2.request_spot_fleet(
        SpotFleetRequestConfig=_config(new_client_token("sf"), profile_arn)
    )["SpotFleetRequestId"]

    ec2.cancel_spot_fleet_requests(SpotFleetRequestIds=[fleet_id], TerminateInstances=False)

    assert _fleet(ec2, fleet_id)["SpotFleetRequestState"] == "cancelled_running"
    instances = _instances(ec2, fleet_id)
    assert len(instances) == 2
    assert {i["State"]["Name"] for i in instances} <= {"pending", "running"}


# --- Launching from launch templates ----------------------------------------------------------


def _template_fleet_config(
    template_id: str, version: str, overrides: list[dict[str, Any]], **extra
):
    return {
        "ClientToken": new_client_token("lt"),
        "TargetCapacity": 2,
        "IamFleetRole": FLEET_ROLE,
        "LaunchTemplateConfigs": [
            {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateId": template_id,
                    "Version": version,
                },
                "Overrides": overrides,
            }
        ],
        **extra,
    }


@pytest.fixture
def annex_template(aws, profile_arn) -> dict[str, str]:
    """A launch template as the product makes one: own security group, profile, IMDSv2."""
    ec2 = aws.client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
    group = ec2.create_security_group(
        GroupName="annex-lt", Description="annex", VpcId=vpc["VpcId"]
    )["GroupId"]
    template_id = ec2.create_launch_template(
        LaunchTemplateName="annex-lt",
        LaunchTemplateData={
            "ImageId": AMI,
            "InstanceType": "t3.micro",
            "IamInstanceProfile": {"Arn": profile_arn},
            "SecurityGroupIds": [group],
            # Hop limit 2, not moto's default 1, so a dropped setting shows.
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 2},
        },
    )["LaunchTemplate"]["LaunchTemplateId"]
    subnets = sorted(s["SubnetId"] for s in ec2.describe_subnets()["Subnets"])
    return {"id": template_id, "group": group, "subnet_a": subnets[0], "subnet_b": subnets[1]}


def test_spot_fleet_instances_get_the_launch_template_groups_profile_and_metadata_options(
    aws, profile_arn, annex_template
):
    """Instances launched from a template get its security groups, instance profile and
    metadata options ("LaunchTemplateConfig":
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_LaunchTemplateConfig.html)."""
    ec2 = aws.client("ec2")
    config = _template_fleet_config(annex_template["id"], "$Latest", [{"InstanceType": "m5.large"}])
    fleet_id = ec2.request_spot_fleet(SpotFleetRequestConfig=config)["SpotFleetRequestId"]

    instances = _instances(ec2, fleet_id)
    assert len(instances) == 2
    for instance in instances:
        assert instance["InstanceType"] == "m5.large"
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
        assert instance["IamInstanceProfile"]["Arn"] == profile_arn
        assert [g["GroupId"] for g in instance["SecurityGroups"]] == [annex_template["group"]]


def test_spot_fleet_launches_every_override_with_its_type_subnet_and_weight(aws, annex_template):
    """Each override is a launch pool replacing only InstanceType, SubnetId, WeightedCapacity
    ("LaunchTemplateOverrides":
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_LaunchTemplateOverrides.html)."""
    ec2 = aws.client("ec2")
    overrides = [
        {"InstanceType": "m5.large", "SubnetId": annex_template["subnet_a"], "WeightedCapacity": 2},
        {
            "InstanceType": "c5.xlarge",
            "SubnetId": annex_template["subnet_b"],
            "WeightedCapacity": 1,
        },
    ]
    config = _template_fleet_config(
        annex_template["id"], "1", overrides, TargetCapacity=3, AllocationStrategy="diversified"
    )
    fleet_id = ec2.request_spot_fleet(SpotFleetRequestConfig=config)["SpotFleetRequestId"]

    pools = sorted((i["InstanceType"], i["SubnetId"]) for i in _instances(ec2, fleet_id))
    assert pools == [
        ("c5.xlarge", annex_template["subnet_b"]),
        ("m5.large", annex_template["subnet_a"]),
    ]
    assert _fleet(ec2, fleet_id)["SpotFleetRequestConfig"]["FulfilledCapacity"] == 3
    instances = _instances(ec2, fleet_id)
    assert {i["MetadataOptions"]["HttpTokens"] for i in instances} == {"required"}


def test_spot_fleet_launches_the_template_version_it_names(aws, annex_template):
    """`LaunchTemplateSpecification.Version` picks the version; a later one is not used."""
    ec2 = aws.client("ec2")
    ec2.create_launch_template_version(
        LaunchTemplateId=annex_template["id"],
        SourceVersion="1",
        LaunchTemplateData={"MetadataOptions": {"HttpTokens": "optional"}},
    )
    config = _template_fleet_config(annex_template["id"], "1", [{"InstanceType": "m5.large"}])
    fleet_id = ec2.request_spot_fleet(SpotFleetRequestConfig=config)["SpotFleetRequestId"]

    assert {i["MetadataOptions"]["HttpTokens"] for i in _instances(ec2, fleet_id)} == {"required"}


def test_describe_spot_fleet_requests_returns_the_template_config_and_expiry_as_sent(
    aws, annex_template
):
    """DescribeSpotFleetRequests answers the SpotFleetRequestConfigData it was given
    ("SpotFleetRequestConfigData":
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_SpotFleetRequestConfigData.html)."""
    ec2 = aws.client("ec2")
    overrides = [{"InstanceType": "m5.large", "SubnetId": annex_template["subnet_a"]}]
    config = _template_fleet_config(
        annex_template["id"],
        "1",
        overrides,
        ValidUntil="2030-01-02T03:04:05Z",
        TerminateInstancesWithExpiration=True,
    )
    fleet_id = ec2.request_spot_fleet(SpotFleetRequestConfig=config)["SpotFleetRequestId"]

    described = _fleet(ec2, fleet_id)["SpotFleetRequestConfig"]
    (template_config,) = described["LaunchTemplateConfigs"]
    assert template_config["LaunchTemplateSpecification"] == {
        "LaunchTemplateId": annex_template["id"],
        "Version": "1",
    }
    assert template_config["Overrides"] == overrides
    assert described["ValidUntil"] == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert described["TerminateInstancesWithExpiration"] is True
    assert "LaunchSpecifications" not in described
