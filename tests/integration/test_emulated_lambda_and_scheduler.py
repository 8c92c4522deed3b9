"""Fidelity fixes: Lambda Invoke runs Python handlers; one-time schedules fire their Lambda target."""

from __future__ import annotations

import io
import json
import time
import zipfile
from datetime import datetime, timedelta, timezone

import pytest

from annex_sandbox.schedule_clock import one_time_fire_time

TRUST_LAMBDA = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": ["lambda.amazonaws.com", "scheduler.amazonaws.com"]},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)

HANDLER = """
import os, boto3
def handler(event, context):
    if event.get("fail"):
        raise RuntimeError("asked to fail")
    caller = boto3.client("sts").get_caller_identity()["Arn"]
    if "key" in event:
        boto3.client("s3").put_object(Bucket=os.environ["BUCKET"], Key=event["key"], Body=b"x")
    return {"caller": caller, "seen": event, "remaining_ms": context.get_remaining_time_in_millis()}
"""


def _function(aws, bucket: str = "fired-bucket") -> str:
    role = aws.client("iam").create_role(RoleName="fn-role", AssumeRolePolicyDocument=TRUST_LAMBDA)
    # The handler writes to the bucket with the role's credentials; the IAM engine holds it to
    # what the role is granted, as Lambda does. Scheduler invokes the function as this role too.
    aws.client("iam").put_role_policy(
        RoleName="fn-role",
        PolicyName="write-bucket",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "s3:PutObject",
                        "Resource": f"arn:aws:s3:::{bucket}/*",
                    },
                    {
                        "Effect": "Allow",
                        "Action": "lambda:InvokeFunction",
                        "Resource": "arn:aws:lambda:us-east-1:123456789012:function:probe",
                    },
                ],
            }
        ),
    )
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("handler.py", HANDLER)
    aws.client("s3").create_bucket(Bucket=bucket)
    created = aws.client("lambda").create_function(
        FunctionName="probe",
        Runtime="python3.13",
        Role=role["Role"]["Arn"],
        Handler="handler.handler",
        Code={"ZipFile": package.getvalue()},
        Environment={"Variables": {"BUCKET": bucket}},
        Timeout=30,
    )
    return str(created["FunctionArn"])


def test_invoke_runs_the_handler_with_its_role_and_environment(aws) -> None:
    """AWS runs the package's handler with the execution role's credentials (Lambda execution role)."""
    _function(aws)
    answer = aws.client("lambda").invoke(FunctionName="probe", Payload=json.dumps({"a": 1}))
    body = json.loads(answer["Payload"].read())
    assert "FunctionError" not in answer
    assert body["seen"] == {"a": 1}
    assert body["caller"].endswith(":assumed-role/fn-role/probe")
    assert 0 < body["remaining_ms"] <= 30_000


def test_invoke_reports_a_handler_exception_as_a_function_error(aws) -> None:
    """An unhandled exception comes back as errorMessage/errorType with X-Amz-Function-Error."""
    _function(aws)
    answer = aws.client("lambda").invoke(FunctionName="probe", Payload=json.dumps({"fail": True}))
    body = json.loads(answer["Payload"].read())
    assert answer.get("FunctionError")
    assert body == {"errorMessage": "asked to fail", "errorType": "RuntimeError"}


def test_one_time_schedule_invokes_its_lambda_once_and_deletes_itself(aws) -> None:
    """`at()` schedules fire once at their time; ActionAfterCompletion=DELETE removes them."""
    arn = _function(aws)
    role = aws.client("iam").get_role(RoleName="fn-role")["Role"]["Arn"]
    scheduler = aws.client("scheduler")
    soon = (datetime.now(timezone.utc) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
    scheduler.create_schedule(
        Name="lease-probe",
        ScheduleExpression=f"at({soon})",
        ScheduleExpressionTimezone="UTC",
        FlexibleTimeWindow={"Mode": "OFF"},
        ActionAfterCompletion="DELETE",
        Target={"Arn": arn, "RoleArn": role, "Input": json.dumps({"key": "fired"})},
    )
    s3 = aws.client("s3")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if s3.list_objects_v2(Bucket="fired-bucket").get("KeyCount"):
            break
        time.sleep(0.2)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="fired-bucket")["Contents"]] == ["fired"]
    assert scheduler.list_schedules()["Schedules"] == []


def test_future_schedule_does_not_fire_early(aws) -> None:
    arn = _function(aws)
    role = aws.client("iam").get_role(RoleName="fn-role")["Role"]["Arn"]
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    aws.client("scheduler").create_schedule(
        Name="later",
        ScheduleExpression=f"at({later})",
        FlexibleTimeWindow={"Mode": "OFF"},
        Target={"Arn": arn, "RoleArn": role, "Input": json.dumps({"key": "early"})},
    )
    time.sleep(1.5)
    assert aws.client("s3").list_objects_v2(Bucket="fired-bucket").get("KeyCount") == 0
    assert [s["Name"] for s in aws.client("scheduler").list_schedules()["Schedules"]] == ["later"]


@pytest.mark.parametrize(
    ("expression", "zone", "expected"),
    [
        ("at(2026-11-25T13:00:00)", "UTC", datetime(2026, 11, 25, 13, tzinfo=timezone.utc)),
        (
            "at(2026-11-25T13:00:00)",
            "Europe/Berlin",
            datetime(2026, 11, 25, 12, tzinfo=timezone.utc),
        ),
        ("rate(5 minutes)", "UTC", None),
        ("cron(0 12 * * ? *)", None, None),
    ],
)
def test_fire_time_honours_the_schedule_timezone(expression, zone, expected) -> None:
    assert one_time_fire_time(expression, zone) == expected


def test_update_schedule_replaces_the_definition_with_create_defaults(aws) -> None:
    """UpdateSchedule replaces every field; omitted State means ENABLED (Scheduler API
    Reference, "UpdateSchedule"), so a moved lease schedule still fires."""
    arn = _function(aws)
    role = aws.client("iam").get_role(RoleName="fn-role")["Role"]["Arn"]
    scheduler = aws.client("scheduler")
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    target = {"Arn": arn, "RoleArn": role, "Input": json.dumps({"key": "moved"})}
    scheduler.create_schedule(
        Name="moved",
        ScheduleExpression=f"at({later})",
        FlexibleTimeWindow={"Mode": "OFF"},
        Target=target,
    )
    # at() has one-second resolution: leave room to read the schedule back before it fires.
    soon = (datetime.now(timezone.utc) + timedelta(seconds=4)).strftime("%Y-%m-%dT%H:%M:%S")
    scheduler.update_schedule(
        Name="moved",
        ScheduleExpression=f"at({soon})",
        FlexibleTimeWindow={"Mode": "OFF"},
        ActionAfterCompletion="DELETE",
        Target=target,
    )
    moved = scheduler.get_schedule(Name="moved")
    assert moved["State"] == "ENABLED"
    assert moved["ActionAfterCompletion"] == "DELETE"
    s3 = aws.client("s3")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not s3.list_objects_v2(Bucket="fired-bucket").get(
        "KeyCount"
    ):
        time.sleep(0.2)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="fired-bucket")["Contents"]] == ["moved"]


def _trust(service: str, condition: dict | None = None) -> str:
    statement: dict = {
        "Effect": "Allow",
        "Principal": {"Service": service},
        "Action": "sts:AssumeRole",
    }
    if condition:
        statement["Condition"] = condition
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


ACCOUNT = "123456789012"
DEFAULT_GROUP_ARN = f"arn:aws:scheduler:us-east-1:{ACCOUNT}:schedule-group/default"


@pytest.mark.parametrize(
    ("trust", "runs"),
    [
        # The deployed scheduler role's trust (stacks/lease.py): Scheduler, this account.
        (_trust("scheduler.amazonaws.com", {"StringEquals": {"aws:SourceAccount": ACCOUNT}}), True),
        (
            _trust("scheduler.amazonaws.com", {"ArnEquals": {"aws:SourceArn": DEFAULT_GROUP_ARN}}),
            True,
        ),
        (_trust("lambda.amazonaws.com"), False),
        (
            _trust(
                "scheduler.amazonaws.com", {"StringEquals": {"aws:SourceAccount": "210987654321"}}
            ),
            False,
        ),
        (
            _trust(
                "scheduler.amazonaws.com",
                {"ArnEquals": {"aws:SourceArn": DEFAULT_GROUP_ARN.replace("default", "other")}},
            ),
            False,
        ),
    ],
    ids=["source-account", "source-group", "not-scheduler", "other-account", "other-group"],
)
def test_scheduler_must_be_able_to_assume_the_schedules_role(aws, trust, runs) -> None:
    """Scheduler assumes the target's RoleArn as scheduler.amazonaws.com before invoking it
    ("Set up the execution role"), sending aws:SourceAccount and, as aws:SourceArn, the schedule
    group's ARN ("Confused deputy prevention in EventBridge Scheduler"): the role's trust policy
    decides. Refused, the schedule fires but the function never runs."""
    arn = _function(aws)
    iam = aws.client("iam")
    # Lambda still runs the function as fn-role; only the schedule's role changes.
    role = iam.create_role(RoleName="schedule-role", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    iam.put_role_policy(
        RoleName="schedule-role",
        PolicyName="invoke",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": arn}
                ],
            }
        ),
    )
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    aws.client("scheduler").create_schedule(
        Name="lease-trust",
        ScheduleExpression=f"at({now})",
        FlexibleTimeWindow={"Mode": "OFF"},
        ActionAfterCompletion="DELETE",
        Target={"Arn": arn, "RoleArn": role, "Input": json.dumps({"key": "fired"})},
    )
    s3, clock = aws.client("s3"), aws.state.schedule_clock
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if clock.refusals or s3.list_objects_v2(Bucket="fired-bucket").get("KeyCount"):
            break
        time.sleep(0.2)

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="fired-bucket").get("Contents", [])]
    if runs:
        assert (keys, clock.refusals) == (["fired"], [])
    else:
        [(_, target, why)] = clock.refusals
        assert target == arn
        assert f"scheduler.amazonaws.com cannot assume {role}" in why
        assert keys == []
    assert aws.client("scheduler").list_schedules()["Schedules"] == []


def test_invoke_fails_when_lambda_may_not_assume_the_execution_role(aws) -> None:
    """Lambda runs a function with its execution role, which it assumes as lambda.amazonaws.com:
    a role whose trust does not name Lambda is refused in Lambda's words ("The role defined for
    the function cannot be assumed by Lambda.", InvalidParameterValueException) and the handler
    never runs."""
    _function(aws)
    iam = aws.client("iam")
    iam.update_assume_role_policy(
        RoleName="fn-role", PolicyDocument=_trust("scheduler.amazonaws.com")
    )
    functions = aws.client("lambda")

    with pytest.raises(functions.exceptions.InvalidParameterValueException) as refused:
        functions.invoke(FunctionName="probe", Payload=json.dumps({"key": "ran"}))

    assert "cannot be assumed by Lambda" in str(refused.value)
    assert aws.client("s3").list_objects_v2(Bucket="fired-bucket").get("KeyCount") == 0
    iam.update_assume_role_policy(RoleName="fn-role", PolicyDocument=TRUST_LAMBDA)
    answer = functions.invoke(FunctionName="probe", Payload=json.dumps({"key": "ran"}))
    assert "FunctionError" not in answer


def test_create_function_refuses_a_role_lambda_cannot_assume(aws) -> None:
    """CreateFunction / UpdateFunctionConfiguration: "The role defined for the function cannot
    be assumed by Lambda." (InvalidParameterValueException) when the role's trust policy does
    not let lambda.amazonaws.com in; nothing is created or changed."""
    _function(aws)
    iam, functions = aws.client("iam"), aws.client("lambda")
    untrusted = iam.create_role(
        RoleName="scheduler-only", AssumeRolePolicyDocument=_trust("scheduler.amazonaws.com")
    )["Role"]["Arn"]
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("handler.py", HANDLER)

    with pytest.raises(functions.exceptions.InvalidParameterValueException) as created:
        functions.create_function(
            FunctionName="untrusted",
            Runtime="python3.13",
            Role=untrusted,
            Handler="handler.handler",
            Code={"ZipFile": package.getvalue()},
        )
    with pytest.raises(functions.exceptions.InvalidParameterValueException) as updated:
        functions.update_function_configuration(FunctionName="probe", Role=untrusted)

    for refused in (created, updated):
        assert "cannot be assumed by Lambda" in str(refused.value)
    assert [f["FunctionName"] for f in functions.list_functions()["Functions"]] == ["probe"]
    assert functions.get_function(FunctionName="probe")["Configuration"]["Role"].endswith(
        "role/fn-role"
    )
