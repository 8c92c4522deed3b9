"""Creating a Spot Fleet annex against the local AWS: the fleet, its launch template, the lease."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from condor_annex import contract, spot
from condor_annex.create import create_annex
from tests.integration import annex_env as _annex_env

shared_annex_env = _annex_env.shared_annex_env  # the fixture, shared by this module

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def made(shared_annex_env):
    """One Spot Fleet annex of 4 slots from command-line types (module-wide)."""
    env = shared_annex_env
    result = create_annex(
        env.request(
            "spotty",
            slots=4,
            duration_seconds=3600,
            spot_instance_types=spot.parse_instance_types(["m5.large:2,c5.xlarge:4"]),
            subnet_ids=tuple(env.subnet_ids[:1]),
        ),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(now=lambda: NOW),
    )
    return env, result


def _fleet(env, fleet_id):
    configs = env.clients.ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])
    return configs["SpotFleetRequestConfigs"][0]


def _fleet_instances(env, fleet_id) -> list[dict[str, Any]]:
    active = env.clients.ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet_id)
    ids = [a["InstanceId"] for a in active["ActiveInstances"]]
    assert ids, "the fleet launched nothing"
    reservations = env.clients.ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def test_spot_fleet_request_carries_the_client_token_role_and_target_capacity(made):
    env, result = made
    config = _fleet(env, result.fleet_id)["SpotFleetRequestConfig"]
    assert config["ClientToken"] == result.client_token
    assert contract.token_belongs_to(config["ClientToken"], "spotty")
    assert config["IamFleetRole"] == env.settings.spot_fleet_role_arn
    assert config["TargetCapacity"] == 4
    assert config["AllocationStrategy"] == spot.DEFAULT_ALLOCATION_STRATEGY


def test_spot_fleet_request_is_tagged_with_the_annex(made):
    env, result = made
    tags = {t["Key"]: t["Value"] for t in _fleet(env, result.fleet_id).get("Tags", [])}
    assert tags[contract.TAG_ANNEX_NAME] == "spotty"
    assert tags[contract.TAG_MANAGED_BY] == contract.MANAGED_BY_VALUE


def test_spot_fleet_launch_template_requires_imdsv2_with_setup_profile_and_group(made):
    env, _ = made
    versions = env.admin.ec2.describe_launch_template_versions(
        LaunchTemplateName=contract.launch_template_name("spotty")
    )["LaunchTemplateVersions"]
    data = versions[0]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert data["IamInstanceProfile"]["Arn"] == env.settings.instance_profile_arn
    assert data["SecurityGroupIds"] == list(env.settings.security_group_ids)
    assert data["ImageId"] == env.ami_id
    instance_tags = next(t for t in data["TagSpecifications"] if t["ResourceType"] == "instance")
    assert {"Key": contract.TAG_ANNEX_NAME, "Value": "spotty"} in instance_tags["Tags"]


def test_spot_fleet_launch_template_carries_the_annex_tag_its_iam_conditions_need(made):
    """Deleting it (off, rollback, lease) and launching from it require the annex tag on it."""
    env, result = made
    (described,) = env.clients.ec2.describe_launch_templates(
        LaunchTemplateIds=[result.launch_template_id]
    )["LaunchTemplates"]
    assert described["LaunchTemplateName"] == contract.launch_template_name("spotty")
    tags = {t["Key"]: t["Value"] for t in described.get("Tags", [])}
    assert tags[contract.TAG_ANNEX_NAME] == "spotty"


def test_spot_fleet_instances_come_from_the_annex_launch_template_overrides(made):
    env, result = made
    config = _fleet(env, result.fleet_id)["SpotFleetRequestConfig"]
    (template_config,) = config["LaunchTemplateConfigs"]
    assert template_config["LaunchTemplateSpecification"]["LaunchTemplateId"] == (
        result.launch_template_id
    )
    overrides = {o["InstanceType"]: o for o in template_config["Overrides"]}
    assert overrides["m5.large"]["WeightedCapacity"] == 2
    assert overrides["c5.xlarge"]["WeightedCapacity"] == 4
    assert {o["SubnetId"] for o in overrides.values()} == {env.subnet_ids[0]}


def test_spot_fleet_ends_with_the_lease(made):
    env, result = made
    config = _fleet(env, result.fleet_id)["SpotFleetRequestConfig"]
    assert config["TerminateInstancesWithExpiration"] is True
    assert config["ValidUntil"] == result.expires_at
    schedule = env.clients.scheduler.get_schedule(Name=contract.schedule_name("spotty"))
    assert schedule["ScheduleExpression"] == "at(2030-01-02T04:04:05)"
    record = contract.LeaseRecord.from_json(schedule["Target"]["Input"])
    assert record.kind == contract.FLEET_KIND_SPOT_FLEET


def test_spot_fleet_instances_require_imdsv2_with_hop_limit_one(made):
    env, result = made
    instances = _fleet_instances(env, result.fleet_id)
    assert {i["InstanceLifecycle"] for i in instances} == {"spot"}
    for instance in instances:
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 1


def test_spot_fleet_instances_run_with_the_setup_profile_and_security_group(made):
    env, result = made
    for instance in _fleet_instances(env, result.fleet_id):
        assert instance["IamInstanceProfile"]["Arn"] == env.settings.instance_profile_arn
        assert sorted(g["GroupId"] for g in instance["SecurityGroups"]) == sorted(
            env.settings.security_group_ids
        )
        assert instance["SubnetId"] == env.subnet_ids[0]
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        assert tags[contract.TAG_ANNEX_NAME] == "spotty"


def test_spot_fleet_launches_instances_that_spot_fleet_tags(made):
    env, result = made
    ec2 = env.clients.ec2
    waiter_filters = [
        {"Name": f"tag:{contract.SPOT_FLEET_REQUEST_ID_TAG}", "Values": [result.fleet_id]}
    ]
    ec2.get_waiter("instance_exists").wait(
        Filters=waiter_filters, WaiterConfig={"Delay": 1, "MaxAttempts": 20}
    )
    assert env.live_instances("spotty")


def test_spot_fleet_from_a_console_export_file_uses_the_setup_settings(made, tmp_path):
    env, _ = made
    exported = {
        "SpotFleetRequestConfig": {
            "IamFleetRole": env.settings.spot_fleet_role_arn,
            "AllocationStrategy": "capacityOptimized",
            "TargetCapacity": 99,
            "Type": "request",
            "LaunchSpecifications": [
                {"ImageId": env.ami_id, "InstanceType": "m5.large", "WeightedCapacity": 1},
                {"ImageId": env.ami_id, "InstanceType": "m5.xlarge", "WeightedCapacity": 2},
            ],
        }
    }
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(exported))
    result = create_annex(
        env.request("exported", slots=2, ami_id=None, spot_fleet_config_file=path),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(now=lambda: NOW),
    )
    config = _fleet(env, result.fleet_id)["SpotFleetRequestConfig"]
    assert config["TargetCapacity"] == 2
    assert config["Type"] == "request"
    assert config["AllocationStrategy"] == "capacityOptimized"
    assert config["ClientToken"] == result.client_token


def test_old_tool_spot_fleet_file_gets_the_setup_role_profile_and_groups(made, tmp_path):
    env, _ = made
    path = tmp_path / "fleet.json"
    path.write_text(
        json.dumps(
            {
                "IamFleetRole": "arn:aws:iam::123456789012:role/someone-elses",
                "AllocationStrategy": "lowestPrice",
                "SpotPrice": "0.10",
                "TargetCapacity": 4,
                "Type": "request",
                "LaunchSpecifications": [
                    {
                        "ImageId": env.ami_id,
                        "InstanceType": "m5.large",
                        "IamInstanceProfile": {"Arn": "arn:aws:iam::1:instance-profile/old"},
                        "SecurityGroups": [{"GroupId": "sg-0ldt00l"}],
                    }
                ],
            }
        )
    )
    result = create_annex(
        env.request("oldfile", slots=2, ami_id=None, spot_fleet_config_file=path),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(now=lambda: NOW),
    )
    config = _fleet(env, result.fleet_id)["SpotFleetRequestConfig"]
    assert config["IamFleetRole"] == env.settings.spot_fleet_role_arn
    notes = " ".join(result.notes)
    assert "role/someone-elses replaced by the setup's" in notes
    assert "instance-profile/old replaced by the setup's" in notes
    assert "sg-0ldt00l replaced by the setup's" in notes
