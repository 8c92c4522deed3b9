"""The scripted allow/deny check: every role of the setup through its real flow, with the engine.

One Spot Fleet annex is created with operator credentials (the operator's requests, and the Spot
Fleet role's launch and tagging AWS checks at RequestSpotFleet), its lease schedule fires (the
scheduler role invokes the deployed lease function, whose role ends the annex), the deployed sweep
function runs, and an instance role session reads its config tarball as the boot agent does. The
first list — every principal's checks — must hold zero refusals; the second list is the denials
that must happen, made as real signed requests. Both are printed (`pytest -s`) for the record.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from annex_sandbox.authz.report import by_principal, render
from condor_annex import contract
from tests.integration.annex_env import AnnexEnv
from tests.reliability.conftest import cli
from tests.reliability.test_privileges import _code, instance_role_credentials, operator_credentials

pytestmark = pytest.mark.xdist_group("reliability-authz-report")

ANNEX = "report-spot"


def _wait(condition: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return bool(condition())


def _fire_lease_now(env: AnnexEnv) -> None:
    """The annex's lease comes due: its record expired, its schedule moved to now."""
    s3, bucket = env.admin.s3, env.settings.config_bucket
    key = contract.lease_key(ANNEX)
    record = contract.LeaseRecord.from_json(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    expired = record.with_expiry(datetime.now(timezone.utc) - timedelta(minutes=1))
    s3.put_object(Bucket=bucket, Key=key, Body=expired.to_json())
    scheduler = env.admin.scheduler
    schedule = scheduler.get_schedule(Name=contract.schedule_name(ANNEX))
    scheduler.update_schedule(
        Name=schedule["Name"],
        ScheduleExpression=f"at({datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%S')})",
        FlexibleTimeWindow={"Mode": "OFF"},
        ActionAfterCompletion="DELETE",
        Target={**schedule["Target"], "Input": expired.to_json()},
    )


def _labels(env: AnnexEnv, operator_arn: str) -> dict[str, str]:
    functions = env.local.client("lambda")

    def role_name(function_arn: str) -> str:
        role = functions.get_function(FunctionName=function_arn)["Configuration"]["Role"]
        return str(role).rsplit("/", 1)[-1]

    settings = env.settings
    return {
        operator_arn.rsplit("/", 1)[-1]: "operator",
        "annex-instance-copy": "instance role",
        role_name(settings.lease_function_arn): "lease function role",
        role_name(settings.sweep_function_arn): "sweep function role",
        settings.scheduler_role_arn.rsplit("/", 1)[-1]: "scheduler role",
        settings.spot_fleet_role_arn.rsplit("/", 1)[-1]: "Spot Fleet role",
    }


def _must_deny(env: AnnexEnv) -> dict[str, str]:
    """The denials that must happen, as real requests: each answers its service's error."""
    ec2, iam = env.admin.ec2, env.local.client("iam")
    bucket = env.settings.config_bucket
    other = ec2.run_instances(
        ImageId=env.ami_id,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": contract.TAG_ANNEX_NAME, "Value": "theirs"}],
            }
        ],
    )["Instances"][0]["InstanceId"]
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    admin = iam.create_role(RoleName="ReportAdmin", AssumeRolePolicyDocument=json.dumps(trust))
    profile = iam.create_instance_profile(InstanceProfileName="ReportAdmin")["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName="ReportAdmin", RoleName="ReportAdmin")
    launch = {
        "ImageId": env.ami_id,
        "MinCount": 1,
        "MaxCount": 1,
        "IamInstanceProfile": {"Arn": env.settings.instance_profile_arn},
        "MetadataOptions": {"HttpTokens": "required"},
        "TagSpecifications": [
            {"ResourceType": kind, "Tags": [{"Key": contract.TAG_ANNEX_NAME, "Value": "x"}]}
            for kind in ("instance", "volume")
        ],
        "DryRun": True,
    }
    try:
        with instance_role_credentials(env) as (role, _):
            outcomes = {
                "instance role terminates another annex's instance": _code(
                    lambda: role.ec2.terminate_instances(InstanceIds=[other])
                ),
                "instance role writes a config tarball": _code(
                    lambda: role.s3.put_object(
                        Bucket=bucket, Key=contract.config_key("x"), Body=b"x"
                    )
                ),
                "instance role lists the config bucket": _code(
                    lambda: role.s3.list_objects_v2(Bucket=bucket)
                ),
            }
        with operator_credentials(env) as (operator, _):
            outcomes |= {
                "guarded launch (dry run; must be allowed)": _code(
                    lambda: operator.ec2.run_instances(**launch)
                ),
                "operator passes another role (ReportAdmin's profile)": _code(
                    lambda: operator.ec2.run_instances(
                        **{**launch, "IamInstanceProfile": {"Arn": profile["Arn"]}}
                    )
                ),
                "operator launches without the annex tag": _code(
                    lambda: operator.ec2.run_instances(**{**launch, "TagSpecifications": []})
                ),
                "operator launches without IMDSv2": _code(
                    lambda: operator.ec2.run_instances(
                        **{**launch, "MetadataOptions": {"HttpTokens": "optional"}}
                    )
                ),
            }
        passed_admin = [
            c
            for c in env.local.state.authorizer.checks
            if c[1] == "iam:PassRole" and c[2] == admin["Role"]["Arn"]
        ]
    finally:
        ec2.terminate_instances(InstanceIds=[other])
        iam.remove_role_from_instance_profile(
            InstanceProfileName="ReportAdmin", RoleName="ReportAdmin"
        )
        iam.delete_instance_profile(InstanceProfileName="ReportAdmin")
        iam.delete_role(RoleName="ReportAdmin")
    assert passed_admin and not any(allowed for *_, allowed in passed_admin), passed_admin
    return outcomes


def test_every_role_runs_its_flow_unrefused_and_the_must_deny_list_is_denied(env: AnnexEnv) -> None:
    authorizer = env.local.state.authorizer
    start = len(authorizer.checks)
    argv = ["-annex-name", ANNEX, "-slots", "2", "-aws-ami-id", env.ami_id,
            "-aws-spot-instance-types", "m5.large"]  # fmt: skip
    with operator_credentials(env) as (clients, operator_arn):
        created = cli(env, *argv, clients=clients)
    assert created.code == 0, created.err
    fleet = env.admin.ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"]
    [fleet_id] = [f["SpotFleetRequestId"] for f in fleet if f["SpotFleetRequestState"] == "active"]

    _fire_lease_now(env)
    assert _wait(
        lambda: env.admin.ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])[
            "SpotFleetRequestConfigs"
        ][0]["SpotFleetRequestState"].startswith("cancelled")
    ), env.local.state.schedule_clock.refusals
    swept = env.local.client("lambda").invoke(FunctionName=env.settings.sweep_function_arn)
    assert "FunctionError" not in swept, swept["Payload"].read()
    with instance_role_credentials(env) as (role, _):
        env.admin.s3.put_object(
            Bucket=env.settings.config_bucket, Key=contract.config_key("agent"), Body=b"tarball"
        )
        role.s3.get_object(Bucket=env.settings.config_bucket, Key=contract.config_key("agent"))
        role.ec2.describe_instances()
    env.admin.s3.delete_object(Bucket=env.settings.config_bucket, Key=contract.config_key("agent"))

    reports = by_principal(authorizer.checks[start:], _labels(env, operator_arn))
    must_deny = _must_deny(env)
    print("\n" + render(reports, must_deny))

    expected = {"operator", "instance role", "lease function role", "sweep function role",
                "scheduler role", "Spot Fleet role"}  # fmt: skip
    assert expected <= set(reports), sorted(reports)
    assert {label: reports[label].refused for label in expected} == {
        label: [] for label in expected
    }
    assert all(sum(reports[label].allowed.values()) > 0 for label in expected)
    assert reports["Spot Fleet role"].allowed["ec2:RunInstances"] > 0
    assert reports["scheduler role"].allowed["lambda:InvokeFunction"] == 1
    assert must_deny.pop("guarded launch (dry run; must be allowed)") == "DryRunOperation"
    assert set(must_deny.values()) <= {"UnauthorizedOperation", "AccessDenied"}, must_deny
