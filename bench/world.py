"""The emulated AWS world the benchmarks run in.

* `RemoteAws`: the local AWS (`python -m annex_sandbox`) as its own process, so the server
  and the code under measurement do not share one interpreter; driven with `SandboxControl`.
* `provision_setup`: the setup stack's resources. The synthesized CDK template deployed through
  the emulator's CloudFormation when that works; otherwise a replica of exactly what the agent
  reads (the instance role's two inline policies from `stacks/instance_role.py`, the profile, the
  private bucket). `Setup.source` records which one a run used.
* `Annex` helpers: upload the annex's real tarball, launch on-demand instances or a Spot Fleet
  with the annex's client token, and register the instances with the IMDS emulator.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from bench.harness import REPO_ROOT, Skipped
from condor_annex import contract

REGION = "us-east-1"
EXTRA_MANAGED_POLICY = "AnnexInstanceExtras"
"""A customer managed policy attached to the instance role, as instance roles commonly carry
(e.g. SSM access): the old script reads it on every boot (GetPolicy + GetPolicyVersion)."""


@dataclass
class RemoteAws:
    """The local AWS in a child process; the same surface as `LocalAws` for what benches use."""

    endpoint_url: str
    process: subprocess.Popen[str]
    region: str = REGION
    account_id: str = "123456789012"

    @classmethod
    def start(cls, fleet_tag_delay: float = 3.0, attempts: int = 3) -> RemoteAws:
        from annex_sandbox.local_aws import LocalAws  # noqa: F401 - fail early if missing

        why = ""
        for _ in range(attempts):
            with tempfile.TemporaryFile(mode="w+") as errors:
                process = subprocess.Popen(
                    [sys.executable, "-m", "annex_sandbox", "--port", "0",
                     "--fleet-tag-delay", str(fleet_tag_delay), "--region", REGION],
                    cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=errors, text=True,
                )  # fmt: skip
                assert process.stdout is not None
                line = process.stdout.readline().strip()
                if line.startswith("LOCAL_AWS_ENDPOINT="):
                    return cls(line.split("=", 1)[1], process)
                process.kill()
                process.wait()
                errors.seek(0)
                why = (errors.read().strip().splitlines() or [repr(line)])[-1]
            time.sleep(2)  # the sandbox's code may be mid-edit; try again
        raise Skipped(f"the local AWS did not start: {why}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @property
    def control(self) -> Any:
        from annex_sandbox import SandboxControl

        return SandboxControl(self.endpoint_url)

    def admin_env(self) -> dict[str, str]:
        from annex_sandbox.local_aws import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY

        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
        }

    def instance_env(self, imds_endpoint: str) -> dict[str, str]:
        """An instance's environment: endpoints and region, credentials only from the IMDS."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds_endpoint,
            # The agent's own defaults are 3 attempts of 2 s. The emulator shares two CPUs with up
            # to a hundred booting processes and can take longer than that to issue a token;
            # botocore then falls back to IMDSv1, which IMDSv2-only instances refuse, and the
            # boot fails without credentials. Real IMDS answers in milliseconds: allow 10 s here.
            "AWS_METADATA_SERVICE_NUM_ATTEMPTS": "3",
            "AWS_METADATA_SERVICE_TIMEOUT": "10",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        }

    def client(self, service: str, **kw: Any) -> Any:
        import boto3

        from annex_sandbox.local_aws import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY

        session = boto3.Session(
            aws_access_key_id=FAKE_ACCESS_KEY_ID,
            aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
            region_name=self.region,
        )
        kw.setdefault("endpoint_url", self.endpoint_url)
        return session.client(service, **kw)


@contextmanager
def running_aws(fleet_tag_delay: float = 3.0) -> Iterator[RemoteAws]:
    aws = RemoteAws.start(fleet_tag_delay)
    try:
        yield aws
    finally:
        aws.stop()


@contextmanager
def running_imds() -> Iterator[Any]:
    try:
        from annex_sandbox.imds import ImdsServer
    except ImportError as error:
        raise Skipped(f"IMDS emulator missing: {error}") from error
    server = ImdsServer().start()
    try:
        yield server
    finally:
        server.stop()


# --- Setup ----------------------------------------------------------------------------------------


@dataclass
class Setup:
    bucket: str
    instance_profile_arn: str
    instance_role_name: str
    spot_fleet_role_arn: str
    source: str
    outputs: dict[str, str] = field(default_factory=dict)


POOL_CIDR = "203.0.113.0/24"
"""The pool's address range the benchmarks' setups admit (a documentation range)."""


def _replica(aws: RemoteAws) -> Setup:
    """What the agent reads of the setup stack, built by hand (same names and policies)."""
    iam = aws.client("iam")
    s3 = aws.client("s3")
    suffix = secrets.token_hex(4)
    bucket = f"annex-config-bench-{suffix}"
    s3.create_bucket(Bucket=bucket)
    name = f"annex-instance-{suffix}"
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
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    read = {
        "Version": "2012-10-17",
        "Statement": [{"Sid": "ReadAnnexConfig", "Effect": "Allow", "Action": "s3:GetObject",
                       "Resource": contract.config_object_arn_pattern(bucket)}],
    }  # fmt: skip
    introspection = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["ec2:DescribeInstances", "ec2:DescribeSpotFleetRequests"], "Resource": "*"},
            {"Effect": "Allow", "Action": ["iam:GetInstanceProfile", "iam:ListRolePolicies", "iam:GetRolePolicy",
                                           "iam:ListAttachedRolePolicies"], "Resource": "*"},
        ],
    }  # fmt: skip
    iam.put_role_policy(
        RoleName=name,
        PolicyName=contract.INSTANCE_ROLE_POLICY_NAME,
        PolicyDocument=json.dumps(read),
    )
    iam.put_role_policy(
        RoleName=name,
        PolicyName="HTCondorAnnexIntrospection",
        PolicyDocument=json.dumps(introspection),
    )
    profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    # Spot Fleet assumes its IamFleetRole as spotfleet.amazonaws.com; the instance role's EC2
    # trust would refuse it (the IAM engine evaluates the trust when the fleet launches).
    fleet_trust = {
        "Version": "2012-10-17",
        "Statement": [
            {**trust["Statement"][0], "Principal": {"Service": "spotfleet.amazonaws.com"}}
        ],
    }
    fleet_role = iam.create_role(
        RoleName=f"annex-fleet-{suffix}", AssumeRolePolicyDocument=json.dumps(fleet_trust)
    )["Role"]
    return Setup(bucket, profile["Arn"], role["RoleName"], fleet_role["Arn"], "replica")


_SYNTH: dict[str, Any] = {}


def synthesized() -> Any:
    """The setup app synthesized once per benchmark run (the test suite's own helper)."""
    if "synth" not in _SYNTH:
        from tests.fixtures.cdk import synthesize_setup

        _SYNTH["synth"] = synthesize_setup(scratch_dir("cdk"))
    return _SYNTH["synth"]


def provision_setup(aws: RemoteAws, workdir: Path, *, prefer_stack: bool = True) -> Setup:
    """The setup stack deployed from its synthesized template (CloudFormation), else the replica."""
    reason = "not tried"
    if prefer_stack:
        try:
            from tests.fixtures.cdk import deploy_setup

            outputs = deploy_setup(synthesized(), aws)
            bucket = outputs[contract.OUTPUT_CONFIG_BUCKET.key]
            profile_arn = outputs[contract.OUTPUT_INSTANCE_PROFILE_ARN.key]
            role_name = outputs[contract.OUTPUT_INSTANCE_ROLE_ARN.key].rsplit("/", 1)[-1]
            fleet_role = outputs.get(contract.OUTPUT_SPOT_FLEET_ROLE_ARN.key, "")
            setup = Setup(bucket, profile_arn, role_name, fleet_role, "cdk-template", outputs)
            _attach_extra_policy(aws, setup)
            return setup
        except Exception as error:  # any deploy failure: fall back, and say why in the results
            reason = f"{type(error).__name__}: {str(error)[:160]}"
            aws.control.reset()
    setup = _replica(aws)
    setup.source = f"replica ({reason})"
    _attach_extra_policy(aws, setup)
    return setup


OLD_SCRIPT_INTROSPECTION = [
    "iam:GetInstanceProfile", "iam:ListRolePolicies", "iam:GetRolePolicy",
    "iam:ListAttachedRolePolicies", "iam:GetPolicy", "iam:GetPolicyVersion",
    "ec2:DescribeInstances", "ec2:DescribeSpotFleetRequests",
]  # fmt: skip
"""The old setup's `Introspection` grants (shared/research/reference-condor-annex.md): the
baseline's role scan needs them, and our stack's least-privilege instance role lacks GetPolicy*."""


def _attach_extra_policy(aws: RemoteAws, setup: Setup) -> None:
    iam = aws.client("iam")
    # In the managed policy, not a new inline one: the old script's call count stays the same.
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["ssm:UpdateInstanceInformation"], "Resource": "*"},
            {"Effect": "Allow", "Action": OLD_SCRIPT_INTROSPECTION, "Resource": "*"},
        ],
    }
    arn = iam.create_policy(
        PolicyName=EXTRA_MANAGED_POLICY + secrets.token_hex(3), PolicyDocument=json.dumps(document)
    )["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=setup.instance_role_name, PolicyArn=arn)


# --- Annexes --------------------------------------------------------------------------------------


def upload_tarball(aws: RemoteAws, setup: Setup, annex_name: str) -> int:
    """The annex's real configuration tarball (the CLI's builder) in the config bucket."""
    from condor_annex.tarball import AnnexConfig, build_config_tarball
    from condor_annex.tokens import mint_idtoken

    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    token = mint_idtoken(
        signing_key=secrets.token_bytes(32),
        issuer="pool.example.org",
        subject="condor_pool@pool.example.org",
        scopes=contract.ANNEX_TOKEN_AUTHZ,
        expires_at=expires,
    )
    data = build_config_tarball(
        AnnexConfig(
            annex_name=annex_name,
            owner="bench",
            collector_host="pool.example.org:9618",
            idle_seconds=900,
            lease_expires_at=expires,
            token=token,
            trust_domain="pool.example.org",
        )
    )
    aws.client("s3").put_object(
        Bucket=setup.bucket,
        Key=contract.config_key(annex_name),
        Body=data,
        ServerSideEncryption="AES256",
    )
    return len(data)


def image_id(aws: RemoteAws) -> str:
    images = aws.client("ec2").describe_images(Owners=["amazon"])["Images"]
    return str(sorted(i["ImageId"] for i in images)[0])


def annex_tags(annex_name: str) -> list[dict[str, str]]:
    return [
        {"Key": contract.TAG_ANNEX_NAME, "Value": annex_name},
        {"Key": contract.TAG_ANNEX_OWNER, "Value": "bench"},
        {"Key": contract.TAG_MANAGED_BY, "Value": contract.MANAGED_BY_VALUE},
    ]


def launch_on_demand(aws: RemoteAws, setup: Setup, annex_name: str, count: int) -> list[str]:
    """One RunInstances with the annex's client token (batched by 500 beyond that)."""
    ec2 = aws.client("ec2")
    ami = image_id(aws)
    ids: list[str] = []
    while len(ids) < count:
        batch = min(500, count - len(ids))
        answer = ec2.run_instances(
            ImageId=ami, InstanceType="m5.large", MinCount=batch, MaxCount=batch,
            ClientToken=contract.new_client_token(annex_name),
            IamInstanceProfile={"Arn": setup.instance_profile_arn},
            MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"},
            TagSpecifications=[{"ResourceType": "instance", "Tags": annex_tags(annex_name)}],
        )  # fmt: skip
        ids += [i["InstanceId"] for i in answer["Instances"]]
    return ids


def launch_spot_fleet(
    aws: RemoteAws, setup: Setup, annex_name: str, count: int, timeout: float = 60
) -> tuple[str, list[str]]:
    """One RequestSpotFleet with the annex's client token; waits until its instances exist."""
    ec2 = aws.client("ec2")
    fleet = ec2.request_spot_fleet(
        SpotFleetRequestConfig={
            "ClientToken": contract.new_client_token(annex_name),
            "IamFleetRole": setup.spot_fleet_role_arn,
            "TargetCapacity": count,
            "Type": "maintain",
            # The annex model ends a fleet only when its client token AND its annex tag say so.
            "TagSpecifications": [
                {"ResourceType": "spot-fleet-request", "Tags": annex_tags(annex_name)}
            ],
            "LaunchSpecifications": [{
                "ImageId": image_id(aws), "InstanceType": "m5.large",
                "IamInstanceProfile": {"Arn": setup.instance_profile_arn},
                "TagSpecifications": [{"ResourceType": "instance", "Tags": annex_tags(annex_name)}],
            }],
        }
    )["SpotFleetRequestId"]  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        active = ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet)["ActiveInstances"]
        if len(active) >= count:
            return fleet, [a["InstanceId"] for a in active]
        if time.monotonic() > deadline:
            raise RuntimeError(f"spot fleet {fleet} launched {len(active)} of {count}")
        time.sleep(0.2)


def register_instances(
    aws: RemoteAws,
    imds: Any,
    instance_ids: Sequence[str],
    *,
    tags_in_metadata: Optional[bool] = False,
    public_ip: bool = True,
) -> dict[str, str]:
    """Each instance served by the IMDS emulator on its own port: instance id → endpoint URL.

    EC2 has an instance's role credentials in its metadata before the OS boots; the emulator
    fetches them (AssumeRole) on first request, so they are fetched here, before the boot.
    `public_ip=False`: no public IPv4 in the metadata (a private subnet), for instances whose
    real daemons must be reached on loopback (the image advertises a public IP to the pool).
    """
    from concurrent.futures import ThreadPoolExecutor

    from annex_sandbox.imds import instance_from_ec2
    from condor_annex.agent.imds import ImdsClient

    ec2, iam, sts = aws.client("ec2"), aws.client("iam"), aws.client("sts")

    def one(instance_id: str) -> tuple[str, str]:
        instance = instance_from_ec2(
            ec2,
            iam,
            instance_id,
            sts_client=sts,
            region=aws.region,
            tags_in_metadata=tags_in_metadata,
            **({} if public_ip else {"public_ipv4": None}),
        )
        endpoint = imds.add_instance(instance)
        client = ImdsClient(endpoint=endpoint)
        role = client.role_name()
        if role:
            client.get(f"meta-data/iam/security-credentials/{role}")
        return instance_id, endpoint

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(pool.map(one, instance_ids))


_SCRATCH: list[Path] = []


def scratch_dir(prefix: str) -> Path:
    """A new directory under this run's scratch root (removed by `remove_scratch`)."""
    if not _SCRATCH:
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="condor-annex-bench-")))
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=_SCRATCH[0]))


def remove_scratch() -> None:
    """Delete every instance root, log and synth output this run wrote under /tmp."""
    import shutil

    while _SCRATCH:
        shutil.rmtree(_SCRATCH.pop(), ignore_errors=True)
