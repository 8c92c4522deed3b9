"""The local AWS's EC2 Fleet behaviour the product relies on, over HTTP with boto3."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from annex_sandbox import pricing
from condor_annex.contract import EC2_FLEET_ID_TAG, new_client_token


@pytest.fixture
def world(aws):
    """A launch template carrying profile, security group, IMDSv2 and an instance tag."""
    aws.set_fleet_tag_delay(0)
    ec2 = aws.client("ec2")
    iam = aws.client("iam")
    iam.create_role(RoleName="fleet-test", AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName="fleet-test")
    profile = iam.get_instance_profile(InstanceProfileName="fleet-test")["InstanceProfile"]["Arn"]
    group = ec2.create_security_group(GroupName="fleet-test", Description="d")["GroupId"]
    subnets = sorted(
        (s["AvailabilityZone"], s["SubnetId"])
        for s in ec2.describe_subnets()["Subnets"]
        if s.get("DefaultForAz")
    )
    ami = "ami-12345678"  # moto does not validate image ids unless asked to
    template = ec2.create_launch_template(
        LaunchTemplateName="fleet-test",
        LaunchTemplateData={
            "ImageId": ami,
            "IamInstanceProfile": {"Arn": profile},
            "SecurityGroupIds": [group],
            "MetadataOptions": {
                "HttpTokens": "required",
                "HttpPutResponseHopLimit": 1,
                "InstanceMetadataTags": "enabled",
            },
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": [{"Key": "team", "Value": "hep"}]}
            ],
        },
    )["LaunchTemplate"]
    return {
        "aws": aws,
        "ec2": ec2,
        "profile": profile,
        "group": group,
        "subnets": subnets,
        "template_id": template["LaunchTemplateId"],
    }


def _request(world, *, fleet_type="instant", market="spot", capacity=2, overrides=None, **extra):
    overrides = overrides or [
        {"InstanceType": "m5.large", "SubnetId": world["subnets"][0][1], "WeightedCapacity": 1}
    ]
    request = {
        "ClientToken": new_client_token("fleety"),
        "Type": fleet_type,
        "TargetCapacitySpecification": {
            "TotalTargetCapacity": capacity,
            "DefaultTargetCapacityType": market,
        },
        "LaunchTemplateConfigs": [
            {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateId": world["template_id"],
                    "Version": "1",
                },
                "Overrides": overrides,
            }
        ],
    }
    request.update(extra)
    return request


def _instances(ec2, ids):
    return [
        i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]
    ]


def _fleet_instance_ids(ec2, fleet_id):
    return [
        a["InstanceId"] for a in ec2.describe_fleet_instances(FleetId=fleet_id)["ActiveInstances"]
    ]


def test_create_fleet_is_idempotent_on_client_token_and_describes_it(world):
    """Same token and parameters → the same fleet; DescribeFleets returns the token
    ("Ensure idempotency in Amazon EC2 API requests"; "FleetData")."""
    ec2 = world["ec2"]
    request = _request(world)

    first = ec2.create_fleet(**request)
    retry = ec2.create_fleet(**request)

    assert retry["FleetId"] == first["FleetId"]
    fleets = ec2.describe_fleets()["Fleets"]
    assert [f["FleetId"] for f in fleets] == [first["FleetId"]]
    assert fleets[0]["ClientToken"] == request["ClientToken"]
    assert len(_fleet_instance_ids(ec2, first["FleetId"])) == 2


def test_create_fleet_same_token_different_parameters_is_a_mismatch(world):
    ec2 = world["ec2"]
    request = _request(world)
    ec2.create_fleet(**request)

    with pytest.raises(ClientError) as raised:
        ec2.create_fleet(**{**request, "TargetCapacitySpecification": {
            "TotalTargetCapacity": 5, "DefaultTargetCapacityType": "spot"}})  # fmt: skip

    assert raised.value.response["Error"]["Code"] == "IdempotentParameterMismatch"


@pytest.mark.parametrize("market", ["spot", "on-demand"])
def test_fleet_instances_get_the_template_settings_fleet_token_and_fleet_id_tag(world, market):
    """Instances launch from the template version (profile, groups, IMDSv2, tags), carry a
    fleet-generated client token and the `aws:ec2:fleet-id` tag ("Tag an EC2 Fleet")."""
    ec2 = world["ec2"]
    request = _request(world, market=market, capacity=1)
    answer = ec2.create_fleet(**request)

    (instance,) = _instances(ec2, _fleet_instance_ids(ec2, answer["FleetId"]))

    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags[EC2_FLEET_ID_TAG] == answer["FleetId"]
    assert tags["team"] == "hep"
    assert instance["IamInstanceProfile"]["Arn"] == world["profile"]
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [world["group"]]
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert instance["ClientToken"] != request["ClientToken"]
    assert instance.get("InstanceLifecycle") == ("spot" if market == "spot" else None)


def test_instant_fleet_answers_its_instances_and_the_pools_without_capacity(world):
    """Instant fleets list launched instances and failed pools (`Errors`) in the answer."""
    ec2 = world["ec2"]
    (zone_a, subnet_a), (_, subnet_b) = world["subnets"][:2]
    world["aws"].inject_capacity_error("m5.large", zone_a)
    overrides = [
        {"InstanceType": "m5.large", "SubnetId": subnet_a, "Priority": 0},
        {"InstanceType": "m5.large", "SubnetId": subnet_b, "Priority": 1},
    ]
    request = _request(
        world,
        market="on-demand",
        overrides=overrides,
        OnDemandOptions={"AllocationStrategy": "prioritized"},
    )

    answer = ec2.create_fleet(**request)

    assert [e["ErrorCode"] for e in answer["Errors"]] == ["InsufficientInstanceCapacity"]
    assert answer["Errors"][0]["LaunchTemplateAndOverrides"]["Overrides"]["SubnetId"] == subnet_a
    ids = [i for group in answer["Instances"] for i in group["InstanceIds"]]
    assert len(ids) == 2
    assert {i["SubnetId"] for i in _instances(ec2, ids)} == {subnet_b}


def test_lowest_price_fills_from_the_cheapest_pool_per_unit_of_capacity(world):
    ec2 = world["ec2"]
    subnet = world["subnets"][0][1]
    overrides = [
        {"InstanceType": "m5.xlarge", "SubnetId": subnet, "WeightedCapacity": 1},
        {"InstanceType": "c5.large", "SubnetId": subnet, "WeightedCapacity": 1},
    ]
    answer = ec2.create_fleet(**_request(world, market="on-demand", overrides=overrides))

    types = {
        i["InstanceType"] for i in _instances(ec2, _fleet_instance_ids(ec2, answer["FleetId"]))
    }

    cheaper = min(
        ("m5.xlarge", "c5.large"), key=lambda t: float(pricing.on_demand_price("us-east-1", t) or 0)
    )
    assert types == {cheaper}


def test_max_total_price_stops_the_fleet_launching_at_the_cap(world):
    """ "MaxTotalPrice": the fleet launches no instance that would take it past the cap."""
    ec2 = world["ec2"]
    price = float(pricing.on_demand_price("us-east-1", "m5.large") or 0)
    request = _request(
        world,
        market="on-demand",
        capacity=5,
        OnDemandOptions={"MaxTotalPrice": f"{2.5 * price:.4f}"},
    )

    answer = ec2.create_fleet(**request)

    assert len(_fleet_instance_ids(ec2, answer["FleetId"])) == 2
    fleet = ec2.describe_fleets(FleetIds=[answer["FleetId"]])["Fleets"][0]
    assert fleet["OnDemandOptions"]["MaxTotalPrice"] == request["OnDemandOptions"]["MaxTotalPrice"]


def test_delete_fleets_terminates_every_weighted_instance(world):
    """DeleteFleets(TerminateInstances=True) ends all instances, whatever their weight; the fleet
    is then `deleted` ("DeleteFleets")."""
    ec2 = world["ec2"]
    subnet = world["subnets"][0][1]
    request = _request(
        world,
        fleet_type="maintain",
        capacity=4,
        overrides=[{"InstanceType": "m5.large", "SubnetId": subnet, "WeightedCapacity": 0.5}],
    )
    fleet_id = ec2.create_fleet(**request)["FleetId"]
    ids = _fleet_instance_ids(ec2, fleet_id)
    assert len(ids) == 8

    answer = ec2.delete_fleets(FleetIds=[fleet_id], TerminateInstances=True)

    assert answer["SuccessfulFleetDeletions"][0]["CurrentFleetState"] == "deleted_terminating"
    assert {i["State"]["Name"] for i in _instances(ec2, ids)} == {"terminated"}
    assert ec2.describe_fleets(FleetIds=[fleet_id])["Fleets"][0]["FleetState"] == "deleted"


def test_delete_fleets_reports_unknown_ids_and_instant_fleets_kept_running(world):
    ec2 = world["ec2"]
    instant = ec2.create_fleet(**_request(world))["FleetId"]

    answer = ec2.delete_fleets(FleetIds=[instant, "fleet-00000000-0000-0000-0000-000000000000"],
                               TerminateInstances=False)  # fmt: skip

    codes = {f["FleetId"]: f["Error"]["Code"] for f in answer["UnsuccessfulFleetDeletions"]}
    assert codes[instant] == "NoTerminateInstancesNotSupported"
    assert codes["fleet-00000000-0000-0000-0000-000000000000"] == "fleetIdDoesNotExist"
    assert answer["SuccessfulFleetDeletions"] == []


def test_a_maintain_fleet_replaces_an_instance_that_ends(world):
    """ "EC2 Fleet request types": a maintain fleet keeps its target capacity, replacing
    interrupted or terminated instances; a deleted fleet replaces nothing."""
    ec2 = world["ec2"]
    fleet_id = ec2.create_fleet(**_request(world, fleet_type="maintain", capacity=2))["FleetId"]
    first = _fleet_instance_ids(ec2, fleet_id)

    ec2.terminate_instances(InstanceIds=first[:1])

    now = _fleet_instance_ids(ec2, fleet_id)
    assert len(now) == 2 and first[0] not in now and first[1] in now
    (replacement,) = set(now) - set(first)
    tags = {t["Key"]: t["Value"] for t in _instances(ec2, [replacement])[0]["Tags"]}
    assert tags[EC2_FLEET_ID_TAG] == fleet_id

    ec2.delete_fleets(FleetIds=[fleet_id], TerminateInstances=True)
    assert _fleet_instance_ids(ec2, fleet_id) == []


def test_an_instant_fleet_replaces_nothing(world):
    ec2 = world["ec2"]
    fleet_id = ec2.create_fleet(**_request(world, capacity=2))["FleetId"]
    first = _fleet_instance_ids(ec2, fleet_id)

    ec2.terminate_instances(InstanceIds=first[:1])

    assert _fleet_instance_ids(ec2, fleet_id) == first[1:]
