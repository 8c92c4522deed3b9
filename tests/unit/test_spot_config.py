"""Spot Fleet configuration: command-line types/weights and console-exported files."""

from __future__ import annotations

import json

import pytest

from condor_annex import spot
from condor_annex.errors import InvalidInput

ROLE = "arn:aws:iam::123456789012:role/annex-fleet"
PROFILE = "arn:aws:iam::123456789012:instance-profile/annex-instance"
GROUPS = ("sg-0123",)


def _plan(data):
    return spot.plan_from_config(
        data,
        source="fleet.json",
        fleet_role_arn=ROLE,
        instance_profile_arn=PROFILE,
        security_group_ids=GROUPS,
    )


def _spec(**kw):
    return {"ImageId": "ami-1", "InstanceType": "m5.large", **kw}


def test_instance_types_parse_with_weights_comma_separated_or_repeated():
    parsed = spot.parse_instance_types(["m5.large:2,c5.xlarge:4", "r5.large"])
    assert parsed == (
        spot.InstanceTypeWeight("m5.large", 2.0),
        spot.InstanceTypeWeight("c5.xlarge", 4.0),
        spot.InstanceTypeWeight("r5.large", 1.0),
    )


@pytest.mark.parametrize(
    "value", ["m5large", "m5.large:0", "m5.large:-1", "m5.large:x", "M5.LARGE"]
)
def test_bad_instance_types_or_weights_are_refused(value):
    with pytest.raises(InvalidInput):
        spot.parse_instance_types([value])


def test_a_type_listed_twice_is_refused():
    with pytest.raises(InvalidInput, match="twice"):
        spot.parse_instance_types(["m5.large", "m5.large:2"])


def test_types_times_subnets_become_overrides():
    plan = spot.plan_from_instance_types(
        spot.parse_instance_types(["m5.large:2,c5.xlarge:4"]), subnet_ids=["subnet-a", "subnet-b"]
    )
    assert len(plan.overrides) == 4
    assert {(o["InstanceType"], o["SubnetId"]) for o in plan.overrides} == {
        ("m5.large", "subnet-a"),
        ("m5.large", "subnet-b"),
        ("c5.xlarge", "subnet-a"),
        ("c5.xlarge", "subnet-b"),
    }
    assert plan.fleet_options["AllocationStrategy"] == "priceCapacityOptimized"


def test_too_many_overrides_are_refused():
    types = [f"m5.{n}xlarge" for n in range(2, 28)]
    with pytest.raises(InvalidInput, match="limit"):
        spot.plan_from_instance_types(
            spot.parse_instance_types(types), subnet_ids=["subnet-a", "subnet-b"]
        )


def test_console_export_is_unwrapped_and_folded_into_overrides():
    plan = _plan(
        {
            "SpotFleetRequestConfig": {
                "IamFleetRole": ROLE,
                "TargetCapacity": 10,
                "LaunchSpecifications": [
                    _spec(WeightedCapacity=1, SubnetId="subnet-a"),
                    _spec(InstanceType="m5.xlarge", WeightedCapacity=2, SubnetId="subnet-a"),
                ],
            }
        }
    )
    assert plan.template_data == {"ImageId": "ami-1"}
    assert [o["InstanceType"] for o in plan.overrides] == ["m5.large", "m5.xlarge"]
    assert "TargetCapacity" not in plan.fleet_options


def test_matching_role_profile_and_groups_are_accepted():
    plan = _plan(
        {
            "IamFleetRole": ROLE,
            "LaunchSpecifications": [
                _spec(IamInstanceProfile={"Arn": PROFILE}, SecurityGroups=[{"GroupId": "sg-0123"}])
            ],
        }
    )
    assert plan.instance_types == ["m5.large"]


def test_old_tool_role_profile_and_groups_are_replaced_with_a_note_each():
    plan = _plan(
        {
            "IamFleetRole": "arn:aws:iam::1:role/x",
            "LaunchSpecifications": [
                _spec(
                    IamInstanceProfile={"Arn": "arn:x"},
                    SecurityGroups=[{"GroupId": "sg-open"}, {"GroupId": "sg-0123"}],
                )
            ],
        }
    )
    assert len(plan.notes) == 3
    assert "IamFleetRole arn:aws:iam::1:role/x replaced by the setup's " + ROLE in plan.notes[0]
    assert "IamInstanceProfile arn:x replaced" in plan.notes[1]
    assert "SecurityGroups sg-open replaced" in plan.notes[2]
    # Neither reaches the launch template or the overrides: the setup's are added there.
    assert "IamInstanceProfile" not in plan.template_data
    assert all("SecurityGroups" not in o for o in plan.overrides)


def test_config_from_stdin_bytes_is_parsed_like_a_file():
    raw = json.dumps({"LaunchSpecifications": [_spec()]}).encode()
    plan = spot.parse_spot_fleet_config(
        raw,
        source="<stdin>",
        fleet_role_arn=ROLE,
        instance_profile_arn=PROFILE,
        security_group_ids=GROUPS,
    )
    assert plan.instance_types == ["m5.large"]
    with pytest.raises(InvalidInput, match="<stdin> is not JSON"):
        spot.parse_spot_fleet_config(
            b"{",
            source="<stdin>",
            fleet_role_arn=ROLE,
            instance_profile_arn=PROFILE,
            security_group_ids=GROUPS,
        )


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"LaunchTemplateConfigs": [{"LaunchTemplateSpecification": {}}]}, "LaunchTemplateConfigs"),
        ({"LaunchSpecifications": []}, "LaunchSpecifications"),
        ({"LaunchSpecifications": [_spec(), _spec(ImageId="ami-2")]}, "ImageId"),
        ({"LaunchSpecifications": [_spec(NetworkInterfaces=[])]}, "NetworkInterfaces"),
        ({"LaunchSpecifications": [_spec(WeightedCapacity=0)]}, "WeightedCapacity"),
        ({"LaunchSpecifications": [_spec(InstanceType="big")]}, "InstanceType"),
        ({"LaunchSpecifications": [_spec()], "Surprise": 1}, "Surprise"),
        ({"LaunchSpecifications": [_spec()], "Type": "instant"}, "instant"),
        ([1, 2], "JSON object"),
    ],
)
def test_invalid_config_is_refused_naming_what_is_wrong(data, named):
    with pytest.raises(InvalidInput) as caught:
        _plan(data)
    assert named in str(caught.value)
    assert "fleet.json" in str(caught.value)


def test_config_file_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "fleet.json"
    path.write_text("{not json")
    with pytest.raises(InvalidInput, match="not JSON"):
        spot.load_spot_fleet_config(
            path, fleet_role_arn=ROLE, instance_profile_arn=PROFILE, security_group_ids=GROUPS
        )


def test_oversized_config_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"pad": "x" * spot.MAX_CONFIG_FILE_BYTES}))
    with pytest.raises(InvalidInput, match="bytes"):
        spot.load_spot_fleet_config(
            path, fleet_role_arn=ROLE, instance_profile_arn=PROFILE, security_group_ids=GROUPS
        )


def test_request_config_ends_with_the_lease_and_uses_the_annex_template():
    plan = spot.plan_from_instance_types(spot.parse_instance_types(["m5.large:2"]))
    config = spot.build_spot_fleet_request_config(
        plan,
        launch_template_id="lt-1",
        launch_template_version="1",
        client_token="a_00000000-0000-0000-0000-000000000000",
        slots=4,
        fleet_role_arn=ROLE,
        valid_until="2030-01-01T00:00:00Z",
        tags=[{"Key": "k", "Value": "v"}],
        subnet_ids=["subnet-a"],
    )
    assert config["ValidUntil"] == "2030-01-01T00:00:00Z"
    assert config["TerminateInstancesWithExpiration"] is True
    assert config["TargetCapacity"] == 4
    assert config["LaunchTemplateConfigs"][0]["Overrides"] == [
        {"InstanceType": "m5.large", "WeightedCapacity": 2.0, "SubnetId": "subnet-a"}
    ]
    assert config["TagSpecifications"] == [
        {"ResourceType": "spot-fleet-request", "Tags": [{"Key": "k", "Value": "v"}]}
    ]
