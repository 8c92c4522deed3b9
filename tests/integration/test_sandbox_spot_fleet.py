"""The local AWS's Spot Fleet behaviour the product relies on, over HTTP with boto3."""

from __future__ import annotations

import json
import time
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
    """Fleet instances carry the fleet's own token, not the request's (SPEC §2)."""
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
    launched = time.monotonic()
    fleet_id = ec2.request_spot_fleet(
        SpotFleetRequestConfig=_config(new_client_token("sf"), profile_arn)
    )["SpotFleetRequestId"]

    def fleet_tags() -> list[str | None]:
        tags = [
            {t["Key"]: t["Value"] for t in i.get("Tags", [])} for i in _instances(ec2, fleet_id)
        ]
        return [t.get(SPOT_FLEET_REQUEST_ID_TAG) for t in tags]

    assert fleet_tags() == [None, None]
    while fleet_tags() != [fleet_id, fleet_id]:
        assert time.monotonic() - launched < 5, "fleet tag never appeared"
        time.sleep(0.1)
    assert time.monotonic() - launched >= 0.5


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
