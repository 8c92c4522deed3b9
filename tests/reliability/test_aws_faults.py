"""AWS misbehaving under the CLI: bad or expired credentials, throttling on every API it calls."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional

import pytest

from condor_annex import contract, lease
from condor_annex.annex_settings import AnnexClients
from condor_annex.backoff import Backoff
from condor_annex.errors import AwsThrottled, CredentialsError
from tests.fixtures.reliability import Row
from tests.integration.annex_env import AnnexEnv
from tests.reliability.conftest import (
    Run,
    assert_no_secret,
    claim_left,
    claim_refused,
    cli,
    clients_with,
    left_behind,
    od_args,
)

AREA_CREDENTIALS = "credentials"
AREA_THROTTLING = "throttling"
pytestmark = pytest.mark.xdist_group("reliability-aws")
mark = pytest.mark.reliability

SHORT_RETRIES = 2
"""Attempts per call for the cases where AWS never recovers (the product default is 10; the
outcome is the same, the test just waits less)."""


def _short_backoff() -> Backoff:
    return Backoff(deadline_seconds=1.0)


@pytest.fixture
def quiet_aws(env: AnnexEnv) -> Iterator[AnnexEnv]:
    """`env`, with throttles cleared and the IAM engine back to its default after the test."""
    yield env
    env.local.clear_throttles()
    env.local.enforce_iam(env.local.state.iam_engine_default)


# --- Credentials --------------------------------------------------------------------------------


def _credential_clients(
    env: AnnexEnv, monkeypatch: pytest.MonkeyPatch, **variables: Optional[str]
) -> AnnexClients:
    for name, value in variables.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return clients_with(SHORT_RETRIES, region=env.local.region)


def _credential_case(
    env: AnnexEnv, observed: Row, clients: AnnexClients, secrets: tuple[str, ...], *mentions: str
) -> Run:
    before = env.leftovers()
    env.local.enforce_iam(True)
    try:
        run = cli(env, *od_args(env, "creds"), clients=clients)
    finally:
        env.local.enforce_iam(env.local.state.iam_engine_default)
    left = left_behind(env, before)
    claim_refused(observed, run, CredentialsError.exit_code, "next:", *mentions)
    observed.holds(
        "no credential in the output", lambda: assert_no_secret(run.out, run.err, extra=secrets)
    )
    claim_left(observed, left)
    return run


@mark(AREA_CREDENTIALS, "access key unknown to AWS (deleted user), IAM enforced")
def test_unknown_access_key_exits_4(
    quiet_aws: AnnexEnv, observed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzzzSECRET"
    clients = _credential_clients(
        quiet_aws,
        monkeypatch,
        AWS_ACCESS_KEY_ID="AKIADELETEDUSER00000",
        AWS_SECRET_ACCESS_KEY=secret,
    )
    _credential_case(quiet_aws, observed, clients, (secret,), "rejected the credentials")


@mark(AREA_CREDENTIALS, "assumed-role session whose token is expired/revoked, IAM enforced")
def test_expired_session_token_exits_4(
    quiet_aws: AnnexEnv, observed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    iam = quiet_aws.local.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{quiet_aws.local.account_id}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = iam.create_role(RoleName="expiring", AssumeRolePolicyDocument=json.dumps(trust))
    creds = quiet_aws.local.client("sts").assume_role(
        RoleArn=role["Role"]["Arn"], RoleSessionName="stale-session", DurationSeconds=900
    )["Credentials"]
    # moto never expires session credentials; a token AWS no longer knows is what an expired
    # (or revoked) session presents.
    stale = creds["SessionToken"][:-8] + "EXPIRED0"
    clients = _credential_clients(
        quiet_aws,
        monkeypatch,
        AWS_ACCESS_KEY_ID=creds["AccessKeyId"],
        AWS_SECRET_ACCESS_KEY=creds["SecretAccessKey"],
        AWS_SESSION_TOKEN=stale,
    )
    try:
        _credential_case(
            quiet_aws, observed, clients, (creds["SecretAccessKey"], stale, creds["SessionToken"])
        )
    finally:
        iam.delete_role(RoleName="expiring")


@mark(AREA_CREDENTIALS, "no credentials anywhere (no env, no files, no instance metadata)")
def test_no_credentials_exits_4(
    quiet_aws: AnnexEnv, observed: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    clients = _credential_clients(
        quiet_aws,
        monkeypatch,
        AWS_ACCESS_KEY_ID=None,
        AWS_SECRET_ACCESS_KEY=None,
        AWS_SESSION_TOKEN=None,
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    before = quiet_aws.leftovers()
    run = cli(quiet_aws, *od_args(quiet_aws, "nocreds"), clients=clients)
    left = left_behind(quiet_aws, before)
    claim_refused(observed, run, CredentialsError.exit_code, "no usable AWS credentials", "next:")
    claim_left(observed, left)


# --- Throttling that the adaptive retries absorb ------------------------------------------------

# service, what, refill per second, a call that empties the bucket just before the create (the
# services the create calls once or twice need it, or their single call would find a token).
_RECOVERABLE = [
    ("ec2", "EC2 (every EC2 call: Describe*, RunInstances, TerminateInstances)", 4.0, None),
    ("s3", "S3 (HeadBucket, GetObject, PutObject, DeleteObject)", 4.0, None),
    ("scheduler", "EventBridge Scheduler (CreateSchedule, DeleteSchedule)", 0.25, "list_schedules"),
    ("lambda", "Lambda (Invoke of the connectivity check)", 0.5, "list_functions"),
]


def _throttle_text(service: str, what: str, refill: float) -> str:
    if service == "lambda":
        return f"{what}: every Invoke refused until one was, then recovered"
    return f"{what}: burst 1, refill {refill:g}/s"


def _lift_throttles_after_a_refusal(
    env: AnnexEnv, service: str, operation: str
) -> threading.Thread:
    """Clears the throttles once a call to `operation` has been refused (or after 120 s)."""

    def lift() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(c.throttled for c in env.local.calls(service, operation)):
                break
            time.sleep(0.05)
        env.local.clear_throttles()

    thread = threading.Thread(target=lift, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    "service, refill, drain",
    [
        pytest.param(s, r, d, marks=mark(AREA_THROTTLING, _throttle_text(s, what, r)), id=s)
        for s, what, r, d in _RECOVERABLE
    ],
)
def test_throttled_service_is_absorbed_by_adaptive_retries(
    quiet_aws: AnnexEnv, observed: Any, service: str, refill: float, drain: Optional[str]
) -> None:
    env = quiet_aws
    name = f"thr-{service}"
    before = env.leftovers()
    env.local.clear_calls()
    lifter = None
    if service == "lambda":
        # The create invokes once; a refilling bucket races the machine's load. Deterministic
        # instead: every Invoke is refused until one has been, then the service recovers while
        # the adaptive retries go on.
        env.local.throttle(service, "Invoke", capacity=0, refill_per_second=0)
        lifter = _lift_throttles_after_a_refusal(env, service, "Invoke")
    else:
        env.local.throttle(service, capacity=1, refill_per_second=refill)
        if drain:
            getattr(env.local.client(service), drain)()
    # connectivity_probe=None: the real Lambda Invoke, so Lambda throttling is exercised too.
    run = cli(env, *od_args(env, name), connectivity_probe=None)
    if lifter is not None:
        lifter.join(timeout=5)
    off = cli(env, "off", "-annex-name", name)
    throttled = len([c for c in env.local.calls(service) if c.throttled])
    env.local.clear_throttles()
    left = left_behind(env, before)
    observed.check(f"create exit {run.code}", run.code == 0, run.err)
    observed.check(f"off exit {off.code}", off.code == 0, off.err)
    # the fault really happened: some calls were answered with throttling (and then retried)
    observed.check(
        f"{throttled} {service} calls answered with throttling and retried", throttled > 0
    )
    claim_left(observed, left)
    assert_no_secret(run.out, run.err, off.out, off.err)


@mark(AREA_THROTTLING, "-check-setup while CloudFormation, Lambda and S3 throttle (burst 1)")
def test_check_setup_under_throttling_succeeds(quiet_aws: AnnexEnv, observed: Any) -> None:
    env = quiet_aws
    env.local.clear_calls()
    for service, refill in (("cloudformation", 0.3), ("lambda", 1.0), ("s3", 1.0)):
        env.local.throttle(service, capacity=1, refill_per_second=refill)
    env.local.client("cloudformation").list_stacks()  # its first call then finds the bucket empty
    run = cli(
        env, "-check-setup", "-config-file", str(env.config_file),
        "-collector", env.collector.address, defaults=False,
    )  # fmt: skip
    throttled = sorted({f"{c.service}:{c.operation}" for c in env.local.calls() if c.throttled})
    env.local.clear_throttles()
    observed.check(f"exit {run.code}", run.code == 0, run.err)
    observed.check(f"throttled and retried: {', '.join(throttled)}", bool(throttled))


@mark(AREA_THROTTLING, "status while EC2 throttles (burst 1, refill 2/s)")
def test_status_under_throttling_succeeds(quiet_aws: AnnexEnv, observed: Any) -> None:
    env = quiet_aws
    assert cli(env, *od_args(env, "thr-status")).code == 0
    env.local.clear_calls()
    env.local.throttle("ec2", capacity=1, refill_per_second=2)
    env.local.client("ec2").describe_regions()  # empties the bucket: status's own calls wait
    run = cli(env, "status", "-annex-name", "thr-status", "--json")
    throttled = len([c for c in env.local.calls("ec2") if c.throttled])
    env.local.clear_throttles()
    off = cli(env, "off", "-annex-name", "thr-status")
    observed.check(f"status exit {run.code}", run.code == 0, run.err)
    observed.check(f"{throttled} EC2 calls answered with throttling and retried", throttled > 0)
    observed.equal("listing {} instance", run.out.count('"instance_id"'), 1)
    assert off.code == 0


# --- Throttling that never ends ------------------------------------------------------------------

_PERMANENT = [
    ("ec2", "DescribeImages", "validate: DescribeImages", "look up the AMI"),
    ("lambda", "Invoke", "connectivity: Lambda Invoke", "connectivity"),
    ("s3", "PutObject", "tarball: S3 PutObject", "upload"),
    ("scheduler", "CreateSchedule", "lease: Scheduler CreateSchedule", "lease"),
    ("ec2", "RunInstances", "launch: EC2 RunInstances", "launch"),
]


@pytest.mark.parametrize(
    "service, operation, action",
    [
        pytest.param(
            s, o, a, marks=mark(AREA_THROTTLING, f"create, {what} throttled for good"), id=o
        )
        for s, o, what, a in _PERMANENT
    ],
)
def test_permanent_throttling_exits_5_and_rolls_back(
    quiet_aws: AnnexEnv, observed: Any, service: str, operation: str, action: str
) -> None:
    env = quiet_aws
    clients = clients_with(SHORT_RETRIES, region=env.local.region)
    before = env.leftovers()
    env.local.throttle(service, operation, capacity=0, refill_per_second=0)
    run = cli(
        env,
        *od_args(env, f"stuck-{operation.lower()}"),
        clients=clients,
        connectivity_probe=None,
        backoff=_short_backoff,
    )
    env.local.clear_throttles()
    left = left_behind(env, before)
    claim_refused(observed, run, AwsThrottled.exit_code, "throttling", action, "next: wait")
    claim_left(observed, left)


@mark(AREA_THROTTLING, "Spot Fleet create, RequestSpotFleet throttled for good")
def test_permanent_spot_fleet_throttling_exits_5_and_rolls_back(
    quiet_aws: AnnexEnv, observed: Any
) -> None:
    env = quiet_aws
    clients = clients_with(SHORT_RETRIES, region=env.local.region)
    before = env.leftovers()
    env.local.throttle("ec2", "RequestSpotFleet", capacity=0, refill_per_second=0)
    run = cli(
        env,
        "-annex-name", "stuck-fleet", "-slots", "2", "-aws-ami-id", env.ami_id,
        "-aws-spot-instance-types", "m5.large",
        clients=clients, backoff=_short_backoff,
    )  # fmt: skip
    env.local.clear_throttles()
    left = left_behind(env, before)
    claim_refused(observed, run, AwsThrottled.exit_code, "throttling", "Spot Fleet")
    claim_left(observed, left)  # launch template included


@mark(AREA_THROTTLING, "status, DescribeInstances throttled for good")
def test_status_permanently_throttled_exits_5(quiet_aws: AnnexEnv, observed: Any) -> None:
    env = quiet_aws
    env.local.throttle("ec2", "DescribeInstances", capacity=0, refill_per_second=0)
    clients = clients_with(SHORT_RETRIES, region=env.local.region)
    run = cli(env, "status", clients=clients)
    env.local.clear_throttles()
    claim_refused(observed, run, AwsThrottled.exit_code, "throttling", "next: wait")


@mark(AREA_THROTTLING, "off, TerminateInstances throttled for good; then off again")
def test_off_permanently_throttled_exits_5_and_a_rerun_finishes(
    quiet_aws: AnnexEnv, observed: Any
) -> None:
    env = quiet_aws
    before = env.leftovers()
    assert cli(env, *od_args(env, "stuck-off")).code == 0
    env.local.throttle("ec2", "TerminateInstances", capacity=0, refill_per_second=0)
    clients = clients_with(SHORT_RETRIES, region=env.local.region)
    # -drain-timeout 0: no drain note before the error; the termination is what is throttled.
    run = cli(env, "off", "-annex-name", "stuck-off", "-drain-timeout", "0", clients=clients)
    env.local.clear_throttles()
    during = left_behind(env, before)
    record = lease.read_lease_record(env.clients.s3, env.settings.config_bucket, "stuck-off")
    again = cli(env, "off", "-annex-name", "stuck-off")
    left = left_behind(env, before)
    claim_refused(observed, run, AwsThrottled.exit_code, "throttling", "stuck-off")
    # Part of the annex was ended: the advice is to run off again, not "nothing was left half-done".
    observed.check(
        "the error says the annex is partly off and to run off again (not: nothing half-done)",
        "only partly off" in run.err
        and "off -annex-name stuck-off` again" in run.err
        and "half-done" not in run.err,
        run.err,
    )
    observed.equal("still there: {} instance", len(during["instances"]), 1)
    # what the sweep reads to retry: the record must still be there and still name the annex
    observed.check(
        "lease record kept (the sweep retries from it)",
        contract.lease_key("stuck-off") in during["objects"]
        and record is not None
        and record.annex_name == "stuck-off",
        (during, record),
    )
    observed.equal("second `off` exit {}", again.code, 0)
    claim_left(observed, left)


def test_expired_token_answer_is_a_credentials_error_naming_the_fix() -> None:
    """What AWS answers for an expired session (moto never sends it): exit 4, 'expired'."""
    from botocore.exceptions import ClientError

    from condor_annex.errors import translate_aws_error

    answer = {"Error": {"Code": "ExpiredToken", "Message": "The security token has expired."}}
    error = translate_aws_error(ClientError(answer, "HeadBucket"), action="find the bucket")
    assert isinstance(error, CredentialsError)
    assert error.exit_code == 4
    assert "expired" in str(error) and "next:" in str(error)
