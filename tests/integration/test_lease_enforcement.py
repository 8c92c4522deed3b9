"""The lease and sweep functions, run in-process against the local AWS with the deployed setup.

Annexes are created the way the CLI creates them (one RunInstances or RequestSpotFleet with
`<annex>_<GUID>` as client token, the annex tag, a lease record and a one-time schedule at the
expiry); Spot Fleet annexes with their launch template are also made by the CLI's own create path. Leases expire an hour from the wall clock, so the local schedule clock never fires them
during a test; the functions are handed a `now` past the expiry instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from condor_annex import contract, spot
from condor_annex.create import create_annex
from tests.fixtures.cdk import load_lambda_module
from tests.integration import annex_env as _annex_env

lease = load_lambda_module("lease")

HOUR = timedelta(hours=1)
LIVE = ("pending", "running", "stopping", "stopped")


@dataclass
class Annex:
    record: contract.LeaseRecord
    instance_ids: list[str]
    fleet_id: str | None = None


IMAGE_ID = "ami-03cf127a"
"""An image in the local AWS's built-in catalogue (listing the catalogue takes seconds)."""


def _annex_tags(name: str, resource_type: str) -> list[dict[str, Any]]:
    """The tags condor_annex sets at launch (ownership needs them and the client token)."""
    tags = [
        {"Key": contract.TAG_ANNEX_NAME, "Value": name},
        {"Key": contract.TAG_MANAGED_BY, "Value": contract.MANAGED_BY_VALUE},
    ]
    return [{"ResourceType": resource_type, "Tags": tags}]


def _record_lease(aws: Any, outputs: dict[str, str], record: contract.LeaseRecord) -> None:
    bucket = outputs[contract.OUTPUT_CONFIG_BUCKET.key]
    s3 = aws.client("s3")
    s3.put_object(Bucket=bucket, Key=contract.config_key(record.annex_name), Body=b"tarball")
    s3.put_object(Bucket=bucket, Key=contract.lease_key(record.annex_name), Body=record.to_json())
    aws.client("scheduler").create_schedule(
        Name=contract.schedule_name(record.annex_name),
        ScheduleExpression=f"at({record.expiry.strftime('%Y-%m-%dT%H:%M:%S')})",
        FlexibleTimeWindow={"Mode": "OFF"},
        ActionAfterCompletion="DELETE",
        Target={
            "Arn": outputs[contract.OUTPUT_LEASE_FUNCTION_ARN.key],
            "RoleArn": outputs[contract.OUTPUT_SCHEDULER_ROLE_ARN.key],
            "Input": record.to_json(),
        },
    )


def on_demand_annex(aws: Any, outputs: dict[str, str], name: str, count: int = 2) -> Annex:
    token = contract.new_client_token(name)
    ec2 = aws.client("ec2")
    reservation = ec2.run_instances(
        ImageId=IMAGE_ID,
        InstanceType="t3.micro",
        MinCount=count,
        MaxCount=count,
        ClientToken=token,
        IamInstanceProfile={"Arn": outputs[contract.OUTPUT_INSTANCE_PROFILE_ARN.key]},
        TagSpecifications=_annex_tags(name, "instance"),
    )
    record = contract.LeaseRecord.new(
        annex_name=name,
        bucket=outputs[contract.OUTPUT_CONFIG_BUCKET.key],
        expires_at=datetime.now(timezone.utc) + HOUR,
        client_token=token,
    )
    _record_lease(aws, outputs, record)
    return Annex(record, [i["InstanceId"] for i in reservation["Instances"]])


def spot_fleet_annex(aws: Any, outputs: dict[str, str], name: str, capacity: int = 2) -> Annex:
    token = contract.new_client_token(name)
    ec2 = aws.client("ec2")
    fleet_id = ec2.request_spot_fleet(
        SpotFleetRequestConfig={
            "ClientToken": token,
            "IamFleetRole": outputs[contract.OUTPUT_SPOT_FLEET_ROLE_ARN.key],
            "AllocationStrategy": "lowestPrice",
            "TargetCapacity": capacity,
            "Type": "maintain",
            "LaunchSpecifications": [
                {
                    "ImageId": IMAGE_ID,
                    "InstanceType": "t3.micro",
                    "IamInstanceProfile": {
                        "Arn": outputs[contract.OUTPUT_INSTANCE_PROFILE_ARN.key]
                    },
                    "TagSpecifications": _annex_tags(name, "instance"),
                }
            ],
            "TagSpecifications": _annex_tags(name, "spot-fleet-request"),
        }
    )["SpotFleetRequestId"]
    instances = ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet_id)["ActiveInstances"]
    record = contract.LeaseRecord.new(
        annex_name=name,
        bucket=outputs[contract.OUTPUT_CONFIG_BUCKET.key],
        expires_at=datetime.now(timezone.utc) + HOUR,
        client_token=token,
        kind=contract.FLEET_KIND_SPOT_FLEET,
    )
    _record_lease(aws, outputs, record)
    return Annex(record, [i["InstanceId"] for i in instances], fleet_id)


def clients(aws: Any) -> dict[str, Any]:
    return {"s3": aws.client("s3"), "ec2": aws.client("ec2"), "scheduler": aws.client("scheduler")}


def live_instances(aws: Any, ids: list[str]) -> list[str]:
    reservations = aws.client("ec2").describe_instances(InstanceIds=ids)["Reservations"]
    return [
        i["InstanceId"] for r in reservations for i in r["Instances"] if i["State"]["Name"] in LIVE
    ]


def objects(aws: Any, bucket: str) -> set[str]:
    listed = aws.client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"] for o in listed}


def schedules(aws: Any) -> set[str]:
    return {s["Name"] for s in aws.client("scheduler").list_schedules()["Schedules"]}


def fleet_state(aws: Any, fleet_id: str) -> str:
    configs = aws.client("ec2").describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])
    return str(configs["SpotFleetRequestConfigs"][0]["SpotFleetRequestState"])


def assert_untouched(aws: Any, annex: Annex) -> None:
    name = annex.record.annex_name
    assert sorted(live_instances(aws, annex.instance_ids)) == sorted(annex.instance_ids)
    assert {contract.config_key(name), contract.lease_key(name)} <= objects(
        aws, annex.record.bucket
    )
    assert contract.schedule_name(name) in schedules(aws)
    if annex.fleet_id:
        assert fleet_state(aws, annex.fleet_id) == "active"


def assert_ended(aws: Any, annex: Annex) -> None:
    name = annex.record.annex_name
    assert live_instances(aws, annex.instance_ids) == []
    assert not {contract.config_key(name), contract.lease_key(name)} & objects(
        aws, annex.record.bucket
    )
    assert contract.schedule_name(name) not in schedules(aws)
    if annex.fleet_id:
        assert fleet_state(aws, annex.fleet_id).startswith("cancelled")


def after_expiry(annex: Annex) -> datetime:
    return annex.record.expiry + timedelta(minutes=1)


def test_expired_on_demand_annex_is_fully_cleaned_up(aws, setup_outputs):
    annex = on_demand_annex(aws, setup_outputs, "ondemand")

    result = lease.end_lease(annex.record, now=after_expiry(annex), **clients(aws))

    assert_ended(aws, annex)
    assert sorted(result.terminated_instances) == sorted(annex.instance_ids)
    assert result.deleted_schedule == contract.schedule_name("ondemand")
    assert result.errors == []


def test_expired_spot_fleet_annex_is_fully_cleaned_up(aws, setup_outputs):
    annex = spot_fleet_annex(aws, setup_outputs, "spotty")
    assert len(annex.instance_ids) == 2

    result = lease.end_lease(annex.record, now=after_expiry(annex), **clients(aws))

    assert_ended(aws, annex)
    assert result.cancelled_fleets == [annex.fleet_id]
    assert result.errors == []


def test_unexpired_annex_is_untouched(aws, setup_outputs):
    annex = on_demand_annex(aws, setup_outputs, "young")

    result = lease.end_lease(
        annex.record, now=annex.record.expiry - timedelta(seconds=1), **clients(aws)
    )

    assert not result.expired and not result.changed
    assert_untouched(aws, annex)


def test_annex_whose_name_extends_the_expired_one_is_untouched(aws, setup_outputs):
    big = on_demand_annex(aws, setup_outputs, "big")
    big_data = on_demand_annex(aws, setup_outputs, "big_data")
    big_data_fleet = spot_fleet_annex(aws, setup_outputs, "big_fleet")

    lease.end_lease(big.record, now=after_expiry(big), **clients(aws))

    assert_ended(aws, big)
    assert_untouched(aws, big_data)
    assert_untouched(aws, big_data_fleet)


def test_second_invocation_is_a_no_op(aws, setup_outputs):
    annex = spot_fleet_annex(aws, setup_outputs, "twice")
    lease.end_lease(annex.record, now=after_expiry(annex), **clients(aws))

    again = lease.end_lease(annex.record, now=after_expiry(annex), **clients(aws))

    assert again.expired and not again.changed
    assert again.errors == []
    assert_ended(aws, annex)


def test_extended_lease_wins_over_the_expiry_a_stale_schedule_carries(aws, setup_outputs):
    annex = on_demand_annex(aws, setup_outputs, "extended")
    extended = annex.record.with_expiry(annex.record.expiry + 2 * HOUR)
    aws.client("s3").put_object(
        Bucket=annex.record.bucket,
        Key=contract.lease_key("extended"),
        Body=extended.to_json(),
    )

    result = lease.end_lease(annex.record, now=after_expiry(annex), **clients(aws))

    assert not result.expired
    assert_untouched(aws, annex)


def test_sweep_ends_every_expired_annex_and_only_those(aws, setup_outputs):
    old_one = on_demand_annex(aws, setup_outputs, "old")
    old_fleet = spot_fleet_annex(aws, setup_outputs, "old_fleet")
    young = on_demand_annex(aws, setup_outputs, "young")
    s3 = aws.client("s3")
    for annex in (old_one, old_fleet):
        expired = annex.record.with_expiry(datetime.now(timezone.utc) - timedelta(minutes=5))
        s3.put_object(
            Bucket=annex.record.bucket,
            Key=contract.lease_key(annex.record.annex_name),
            Body=expired.to_json(),
        )

    results = lease.sweep(old_one.record.bucket, now=datetime.now(timezone.utc), **clients(aws))

    assert sorted(r.annex_name for r in results) == ["old", "old_fleet"]
    assert_ended(aws, old_one)
    assert_ended(aws, old_fleet)
    assert_untouched(aws, young)
    assert lease.sweep(old_one.record.bucket, **clients(aws)) == []


def test_lambda_entry_point_takes_the_schedule_input(
    aws, setup_outputs, monkeypatch: pytest.MonkeyPatch
):
    annex = on_demand_annex(aws, setup_outputs, "entry")
    monkeypatch.setenv(contract.LAMBDA_ENV_CONFIG_BUCKET, annex.record.bucket)
    stale = annex.record.with_expiry(datetime.now(timezone.utc) - timedelta(minutes=1))
    aws.client("s3").put_object(
        Bucket=annex.record.bucket, Key=contract.lease_key("entry"), Body=stale.to_json()
    )

    summary = lease.handler(json.loads(stale.to_json()), None)

    assert summary["changed"] and summary["errors"] == []
    assert_ended(aws, annex)


def test_lambda_entry_point_refuses_an_event_naming_another_bucket(
    aws, setup_outputs, monkeypatch: pytest.MonkeyPatch
):
    annex = on_demand_annex(aws, setup_outputs, "elsewhere")
    monkeypatch.setenv(contract.LAMBDA_ENV_CONFIG_BUCKET, annex.record.bucket)
    other_bucket = "someone-elses-bucket"
    aws.client("s3").create_bucket(Bucket=other_bucket)
    forged = annex.record.with_expiry(datetime.now(timezone.utc) - timedelta(minutes=1))
    event = {**json.loads(forged.to_json()), "bucket": other_bucket}
    aws.client("s3").put_object(
        Bucket=other_bucket, Key=contract.lease_key("elsewhere"), Body=json.dumps(event)
    )

    with pytest.raises(lease.ForeignBucketEvent, match="someone-elses-bucket"):
        lease.handler(event, None)

    assert_untouched(aws, annex)


def test_sweep_entry_point_reads_the_bucket_from_its_environment(
    aws, setup_outputs, monkeypatch: pytest.MonkeyPatch
):
    bucket = setup_outputs[contract.OUTPUT_CONFIG_BUCKET.key]
    monkeypatch.setenv(contract.LAMBDA_ENV_CONFIG_BUCKET, bucket)
    aws.client("s3").put_object(
        Bucket=bucket, Key=f"{contract.LEASE_KEY_PREFIX}junk.json", Body=b"{"
    )

    assert lease.sweep_handler({}, None) == {"ended": []}


# --- Spot Fleet annexes made by the CLI's create path (launch template included) -----------------


@pytest.fixture
def cli_env(local_aws, synthesized_setup, tmp_path) -> Iterator[_annex_env.AnnexEnv]:
    """The setup deployed into a fresh local AWS, ready for `create_annex`."""
    with _annex_env._environment(local_aws, tmp_path, synthesized_setup) as env:
        yield env


def created_spot_annex(env: _annex_env.AnnexEnv, name: str) -> Annex:
    """A 2-slot Spot Fleet annex made by `create_annex`; its lease runs an hour."""
    result = create_annex(
        env.request(
            name,
            slots=2,
            duration_seconds=3600,
            spot_instance_types=spot.parse_instance_types(["m5.large"]),
            subnet_ids=tuple(env.subnet_ids[:1]),
        ),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(),
    )
    assert result.fleet_id and result.launch_template_id
    body = env.clients.s3.get_object(
        Bucket=env.settings.config_bucket, Key=contract.lease_key(name)
    )["Body"].read()
    active = env.clients.ec2.describe_spot_fleet_instances(SpotFleetRequestId=result.fleet_id)
    ids = [i["InstanceId"] for i in active["ActiveInstances"]]
    return Annex(contract.LeaseRecord.from_json(body), ids, result.fleet_id)


def env_clients(env: _annex_env.AnnexEnv) -> dict[str, Any]:
    return {"s3": env.clients.s3, "ec2": env.clients.ec2, "scheduler": env.clients.scheduler}


def test_expired_spot_fleet_annex_from_create_is_cleaned_with_its_launch_template(cli_env):
    annex = created_spot_annex(cli_env, "templated")
    template = contract.launch_template_name("templated")
    assert len(annex.instance_ids) == 2 and template in cli_env.launch_templates()

    result = lease.end_lease(annex.record, now=after_expiry(annex), **env_clients(cli_env))

    assert result.errors == []
    assert result.deleted_launch_template == template
    assert result.cancelled_fleets == [annex.fleet_id]
    assert_ended(cli_env.local, annex)
    assert cli_env.leftovers() == {
        "instances": [],
        "fleets": [],
        "objects": [],
        "schedules": [],
        "launch_templates": [],
    }


def test_ending_big_leaves_the_launch_template_of_big_data(cli_env):
    big = created_spot_annex(cli_env, "big")
    big_data = created_spot_annex(cli_env, "big_data")

    result = lease.end_lease(big.record, now=after_expiry(big), **env_clients(cli_env))

    assert result.deleted_launch_template == contract.launch_template_name("big")
    assert cli_env.launch_templates() == [contract.launch_template_name("big_data")]
    assert_ended(cli_env.local, big)
    assert_untouched(cli_env.local, big_data)


def test_second_lease_end_finds_no_launch_template_and_changes_nothing(cli_env):
    annex = created_spot_annex(cli_env, "again")
    lease.end_lease(annex.record, now=after_expiry(annex), **env_clients(cli_env))

    again = lease.end_lease(annex.record, now=after_expiry(annex), **env_clients(cli_env))

    assert again.expired and not again.changed
    assert again.deleted_launch_template is None and again.errors == []
    assert cli_env.leftovers()["launch_templates"] == []
