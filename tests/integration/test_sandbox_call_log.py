"""The call log: every request as (service, operation, caller access key), for every protocol."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from annex_sandbox import SandboxControl
from annex_sandbox.local_aws import FAKE_ACCESS_KEY_ID

REPO = Path(__file__).resolve().parents[2]


def _logged(aws, service: str) -> list[str]:
    return [c.operation for c in aws.calls(service)]


def test_query_protocol_operations_are_logged_from_action(aws):
    aws.client("ec2").describe_instances()
    aws.client("iam").list_roles()
    aws.client("sts").get_caller_identity()

    assert _logged(aws, "ec2") == ["DescribeInstances"]
    assert _logged(aws, "iam") == ["ListRoles"]
    assert _logged(aws, "sts") == ["GetCallerIdentity"]


def test_json_protocol_operations_are_logged_from_target_header(aws):
    aws.client("ssm").describe_parameters()

    assert _logged(aws, "ssm") == ["DescribeParameters"]


def test_s3_operations_are_logged_from_method_and_path(aws):
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="logged-bucket")
    s3.put_object(Bucket="logged-bucket", Key="config-a.tar.gz", Body=b"x")
    s3.head_object(Bucket="logged-bucket", Key="config-a.tar.gz")
    s3.get_object(Bucket="logged-bucket", Key="config-a.tar.gz")
    s3.list_objects_v2(Bucket="logged-bucket")
    s3.copy_object(Bucket="logged-bucket", Key="copy", CopySource="logged-bucket/config-a.tar.gz")
    s3.delete_object(Bucket="logged-bucket", Key="copy")

    assert _logged(aws, "s3") == [
        "CreateBucket",
        "PutObject",
        "HeadObject",
        "GetObject",
        "ListObjectsV2",
        "CopyObject",
        "DeleteObject",
    ]


def test_rest_json_operations_are_logged_from_method_and_path(aws):
    scheduler = aws.client("scheduler")
    scheduler.list_schedules()
    with pytest.raises(scheduler.exceptions.ResourceNotFoundException):
        scheduler.get_schedule(Name="missing")
    aws.client("lambda").list_functions()

    assert _logged(aws, "scheduler") == ["ListSchedules", "GetSchedule"]
    assert _logged(aws, "lambda") == ["ListFunctions"]


def test_calls_record_the_callers_access_key_id(aws):
    aws.client("ec2").describe_instances()
    # A key AWS never issued is refused (AuthFailure) but still logged with its caller.
    with pytest.raises(ClientError):
        aws.client("ec2", aws_access_key_id="AKIAOTHERCALLER00000").describe_instances()

    assert [c.access_key_id for c in aws.calls("ec2")] == [
        FAKE_ACCESS_KEY_ID,
        "AKIAOTHERCALLER00000",
    ]


def test_calls_filter_by_operation_and_clear(aws):
    ec2 = aws.client("ec2")
    ec2.describe_instances()
    ec2.describe_spot_fleet_requests()

    assert len(aws.calls("ec2", "DescribeSpotFleetRequests")) == 1
    aws.clear_calls()
    assert aws.calls() == []


def test_control_endpoints_work_over_http(aws):
    """What the demo's process-mode server is driven with: the same state, over HTTP."""
    control = SandboxControl(aws.endpoint_url)
    aws.client("ec2").describe_instances()

    assert [(c.service, c.operation) for c in control.calls()] == [("ec2", "DescribeInstances")]
    control.throttle("ec2", capacity=0, refill_per_second=0)
    assert aws.state.record("ec2", "DescribeInstances", None) is False
    control.clear_throttles()
    control.set_fleet_tag_delay(0.25)
    control.enforce_iam(False)
    control.clear_calls()
    assert control.calls() == []
    control.reset()


def test_server_runs_as_a_process_until_sigterm(tmp_path):
    """`python -m annex_sandbox` prints its endpoint, serves, and stops on SIGTERM."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "annex_sandbox", "--port", "0", "--fleet-tag-delay", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 60)
        assert ready, "the server printed nothing within 60 s"
        line = process.stdout.readline().strip()
        assert line.startswith("LOCAL_AWS_ENDPOINT=http://127.0.0.1:")
        endpoint = line.split("=", 1)[1]
        ec2 = boto3.client(
            "ec2",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=FAKE_ACCESS_KEY_ID,
            aws_secret_access_key="x",
        )
        ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, ClientToken="t_1")
        control = SandboxControl(endpoint)
        assert [c.operation for c in control.calls("ec2")] == ["RunInstances"]
        control.reset()
        assert ec2.describe_instances()["Reservations"] == []
    finally:
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
