"""Throttles answer with each service's real throttling error, in its own protocol's format."""

from __future__ import annotations

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})


def _error(call) -> tuple[str, int]:
    with pytest.raises(ClientError) as raised:
        call()
    response = raised.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_ec2_throttle_answers_503_request_limit_exceeded(aws):
    """EC2: HTTP 503 `RequestLimitExceeded` ("Request throttling for the Amazon EC2 API",
    https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html)."""
    ec2 = aws.client("ec2", config=NO_RETRIES)
    aws.throttle("ec2", "DescribeInstances", capacity=1, refill_per_second=0)

    ec2.describe_instances()
    assert _error(ec2.describe_instances) == ("RequestLimitExceeded", 503)
    ec2.describe_spot_fleet_requests()  # other operations are not throttled


def test_iam_throttle_answers_400_throttling(aws):
    """IAM (query protocol): HTTP 400 `Throttling` ("IAM and AWS STS quotas",
    https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html; error format in
    "Common Errors", https://docs.aws.amazon.com/IAM/latest/APIReference/CommonErrors.html)."""
    iam = aws.client("iam", config=NO_RETRIES)
    aws.throttle("iam", capacity=0, refill_per_second=0)

    assert _error(iam.list_roles) == ("Throttling", 400)


def test_sts_throttle_answers_throttling(aws):
    """STS (query protocol): `Throttling` ("Common Errors", AWS STS API Reference,
    https://docs.aws.amazon.com/STS/latest/APIReference/CommonErrors.html)."""
    sts = aws.client("sts", config=NO_RETRIES)
    aws.throttle("sts", "GetCallerIdentity", capacity=0, refill_per_second=0)

    assert _error(sts.get_caller_identity) == ("Throttling", 400)


def test_s3_throttle_answers_503_slow_down(aws):
    """S3: HTTP 503 `SlowDown` ("Error responses", Amazon S3 API Reference,
    https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html)."""
    s3 = aws.client("s3", config=NO_RETRIES)
    s3.create_bucket(Bucket="throttled-bucket")
    aws.throttle("s3", "ListObjectsV2", capacity=0, refill_per_second=0)

    assert _error(lambda: s3.list_objects_v2(Bucket="throttled-bucket")) == ("SlowDown", 503)


def test_scheduler_throttle_answers_throttling_exception(aws):
    """EventBridge Scheduler (REST-JSON): HTTP 429 `ThrottlingException` ("Common Errors",
    https://docs.aws.amazon.com/scheduler/latest/APIReference/CommonErrors.html)."""
    scheduler = aws.client("scheduler", config=NO_RETRIES)
    aws.throttle("scheduler", capacity=0, refill_per_second=0)

    assert _error(scheduler.list_schedules) == ("ThrottlingException", 429)


def test_lambda_throttle_answers_too_many_requests(aws):
    """Lambda: HTTP 429 `TooManyRequestsException` ("Lambda quotas" / API errors,
    https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html#API_Invoke_Errors)."""
    awslambda = aws.client("lambda", config=NO_RETRIES)
    aws.throttle("lambda", capacity=0, refill_per_second=0)

    assert _error(awslambda.list_functions) == ("TooManyRequestsException", 429)


def test_ssm_throttle_answers_throttling_exception(aws):
    """SSM (JSON protocol): `ThrottlingException` ("Common Errors", AWS Systems Manager API
    Reference, https://docs.aws.amazon.com/systems-manager/latest/APIReference/CommonErrors.html)."""
    ssm = aws.client("ssm", config=NO_RETRIES)
    aws.throttle("ssm", capacity=0, refill_per_second=0)

    assert _error(ssm.describe_parameters) == ("ThrottlingException", 400)


def test_botocore_retry_succeeds_once_the_bucket_refills(aws):
    """botocore's standard retry treats the EC2 throttle as retryable and succeeds after refill
    ("Retry behavior", AWS SDKs and Tools Reference Guide,
    https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html)."""
    ec2 = aws.client("ec2", config=Config(retries={"mode": "standard", "total_max_attempts": 6}))
    ec2.describe_instances()  # warm up: moto builds its EC2 state on first use
    aws.throttle("ec2", "DescribeInstances", capacity=1, refill_per_second=0.5)

    ec2.describe_instances()
    answer = ec2.describe_instances()

    assert answer["ResponseMetadata"]["RetryAttempts"] >= 1
    throttled = [c.throttled for c in aws.calls("ec2", "DescribeInstances")][1:]
    assert throttled[0] is False and True in throttled and throttled[-1] is False


def test_clearing_throttles_lets_calls_through(aws):
    ec2 = aws.client("ec2", config=NO_RETRIES)
    aws.throttle("ec2", capacity=0, refill_per_second=0)
    assert _error(ec2.describe_instances)[0] == "RequestLimitExceeded"

    aws.clear_throttles()

    ec2.describe_instances()
