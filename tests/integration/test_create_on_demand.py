"""Creating an on-demand annex against the local AWS: what lands where."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from condor_annex import contract, lease, tokens
from condor_annex.create import create_annex
from condor_annex.errors import InvalidInput
from tests.integration import annex_env as _annex_env
from tests.integration.annex_env import (
    POOL_KEY,
    TRUST_DOMAIN,
    AnnexEnv,
    htcondor_params,
    tarball_members,
)

shared_annex_env = _annex_env.shared_annex_env  # the fixture, shared by this module

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
USER_DATA = b"#!/bin/sh\necho 'my own boot step' \x00\xff\n"


def _create(env: AnnexEnv, name: str = "burst", count: int = 3, **kw):
    hooks = env.hooks(now=lambda: NOW)
    return create_annex(
        env.request(name, count=count, duration_seconds=2 * 3600, **kw),
        settings=env.settings,
        clients=env.clients,
        hooks=hooks,
    )


def _instances(env: AnnexEnv, ids: list[str]) -> list[dict[str, Any]]:
    reservations = env.clients.ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


@pytest.fixture(scope="module")
def made(shared_annex_env):
    """One on-demand annex of 3 (module-wide: these tests only look at it)."""
    result = _create(
        shared_annex_env, idle_seconds=1200, tags=(("project", "physics"),), user_data=USER_DATA
    )
    return shared_annex_env, result


def test_on_demand_annex_of_three_launches_three_instances_with_one_client_token(made):
    annex_env, result = made
    instances = _instances(annex_env, result.instance_ids)
    assert len(instances) == 3
    assert {i["ClientToken"] for i in instances} == {result.client_token}
    assert contract.token_belongs_to(result.client_token, "burst")


def test_on_demand_instances_require_imdsv2_with_hop_limit_one(made):
    annex_env, result = made
    for instance in _instances(annex_env, result.instance_ids):
        options = instance["MetadataOptions"]
        assert options["HttpTokens"] == "required"
        assert options["HttpPutResponseHopLimit"] == 1
        assert options["HttpEndpoint"] == "enabled"


def test_on_demand_instances_carry_setup_profile_security_group_and_annex_tags(made):
    annex_env, result = made
    for instance in _instances(annex_env, result.instance_ids):
        assert instance["IamInstanceProfile"]["Arn"] == annex_env.settings.instance_profile_arn
        assert [g["GroupId"] for g in instance["SecurityGroups"]] == list(
            annex_env.settings.security_group_ids
        )
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags[contract.TAG_ANNEX_NAME] == "burst"
        assert tags[contract.TAG_ANNEX_OWNER] == "alice"
        assert tags[contract.TAG_MANAGED_BY] == contract.MANAGED_BY_VALUE
        assert tags["project"] == "physics"


def test_on_demand_user_data_is_passed_through_untouched(made):
    annex_env, result = made
    attribute = annex_env.admin.ec2.describe_instance_attribute(
        InstanceId=result.instance_ids[0], Attribute="userData"
    )
    assert base64.b64decode(attribute["UserData"]["Value"]) == USER_DATA


def test_tarball_config_parses_with_htcondor_and_names_the_annex(made, tmp_path: Path):
    annex_env, _ = made
    body = annex_env.clients.s3.get_object(
        Bucket=annex_env.settings.config_bucket, Key=contract.config_key("burst")
    )["Body"].read()
    config_dir = tmp_path / "config.d"
    config_dir.mkdir()
    members = tarball_members(body)
    (config_dir / contract.TARBALL_CONFIG_FILE).write_bytes(members[contract.TARBALL_CONFIG_FILE])
    params = htcondor_params(config_dir, ["STARTD_NOCLAIM_SHUTDOWN", "COLLECTOR_HOST"])
    assert str(params["STARTD_NOCLAIM_SHUTDOWN"]) == "1200"
    assert params["COLLECTOR_HOST"] == annex_env.collector.address
    assert b"burst" in members[contract.TARBALL_CONFIG_FILE]


def test_tarball_token_is_signed_with_the_pool_key_scoped_and_expires_with_the_lease(made):
    annex_env, result = made
    body = annex_env.clients.s3.get_object(
        Bucket=annex_env.settings.config_bucket, Key=contract.config_key("burst")
    )["Body"].read()
    token = tarball_members(body)[contract.TARBALL_TOKEN_FILE].decode().strip()
    claims = tokens.verify_idtoken(token, signing_key=POOL_KEY, now=NOW)
    assert claims["iss"] == TRUST_DOMAIN
    assert claims["exp"] == int(result.expires_at.timestamp())
    assert set(claims["scope"].split()) == {f"condor:/{a}" for a in contract.ANNEX_TOKEN_AUTHZ}


def test_tarball_object_is_encrypted_at_rest(made):
    annex_env, _ = made
    head = annex_env.clients.s3.head_object(
        Bucket=annex_env.settings.config_bucket, Key=contract.config_key("burst")
    )
    assert head["ServerSideEncryption"] == lease.SSE_ALGORITHM


def test_lease_schedule_fires_once_at_the_expiry_into_the_lease_function(made):
    annex_env, result = made
    assert result.expires_at == NOW + timedelta(hours=2)
    schedule = annex_env.clients.scheduler.get_schedule(Name=contract.schedule_name("burst"))
    assert schedule["ScheduleExpression"] == "at(2030-01-02T05:04:05)"
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert schedule["Target"]["Arn"] == annex_env.settings.lease_function_arn
    assert schedule["Target"]["RoleArn"] == annex_env.settings.scheduler_role_arn
    record = contract.LeaseRecord.from_json(schedule["Target"]["Input"])
    assert record.client_token == result.client_token
    assert record.expires_at == "2030-01-02T05:04:05Z"


def test_lease_record_is_stored_where_the_sweep_finds_it(made):
    annex_env, result = made
    record = lease.read_lease_record(
        annex_env.clients.s3, annex_env.settings.config_bucket, "burst"
    )
    assert record is not None
    assert record.client_token == result.client_token
    assert record.kind == contract.FLEET_KIND_ON_DEMAND
    assert json.loads(record.to_json())["bucket"] == annex_env.settings.config_bucket


def test_retried_create_of_the_same_annex_launches_nothing_new(made):
    annex_env, first = made
    annex_env.local.clear_calls()
    with pytest.raises(InvalidInput, match="already exists"):
        _create(annex_env)
    assert annex_env.local.calls("ec2", "RunInstances") == []
    assert sorted(i["InstanceId"] for i in annex_env.live_instances("burst")) == sorted(
        first.instance_ids
    )
    # The refused retry removed nothing of the first annex either.
    assert contract.config_key("burst") in annex_env.objects()
    assert annex_env.schedules() == [contract.schedule_name("burst")]


def test_throttled_run_instances_is_retried_with_the_same_client_token(made):
    annex_env, _ = made
    ec2 = annex_env.clients.ec2
    # One token, refilled after 20 s: the create's checks (AMI, types, prices, connectivity,
    # tarball, lease) run well inside that, so its first RunInstances is throttled and the
    # create's own back-off (60 s deadline) retries it with the same token.
    annex_env.local.throttle("ec2", "RunInstances", capacity=1, refill_per_second=0.05)
    with pytest.raises(ec2.exceptions.ClientError):  # drains the bucket: DryRunOperation
        ec2.run_instances(ImageId=annex_env.ami_id, MinCount=1, MaxCount=1, DryRun=True)
    annex_env.local.clear_calls()
    try:
        result = _create(annex_env, "slowpoke", count=1)
    finally:
        annex_env.local.clear_throttles()
    calls = annex_env.local.calls("ec2", "RunInstances")
    assert any(c.throttled for c in calls)
    live = annex_env.live_instances("slowpoke")
    assert [i["ClientToken"] for i in live] == [result.client_token]
