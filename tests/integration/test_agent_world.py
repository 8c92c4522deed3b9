"""Helpers (no tests) for the boot agent's integration tests: an annex world in local AWS + IMDS.

Mirrors what the setup stack and the CLI create (bucket, instance role with the contract's
inline policy, instance profile, a launched instance, the tarball), with unique names per test.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

from annex_sandbox import LocalAws
from annex_sandbox.imds import ImdsServer, LiveInstanceTags, instance_from_ec2
from condor_annex import contract
from condor_annex.agent.imds import ImdsClient

AGENT = Path(sys.executable).parent / "condor-annex-ec2"
WATCHER = Path(sys.executable).parent / "condor-annex-spot-watcher"
ANNEX_CONFIG = b'AnnexName = "{name}"\nSTARTD_NOCLAIM_SHUTDOWN = 1200\n'
TOKEN = b"eyJhbGciOiJIUzI1NiIsImtpZCI6IlBPT0wifQ.eyJzdWIiOiJ4In0.c2ln\n"
_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
_ACCOUNT_ROOT_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": ["ec2.amazonaws.com", "spotfleet.amazonaws.com"]},
            "Action": "sts:AssumeRole",
        }
    ],
}


_CLIENTS: dict[tuple[int, str], Any] = {}


def _client(aws: LocalAws, service: str) -> Any:
    """Clients are costly to build (service models); one per local AWS and service."""
    key = (id(aws), service)
    if key not in _CLIENTS:
        _CLIENTS[key] = aws.client(service)
    return _CLIENTS[key]


def tarball(annex: str, extra: Optional[list[tuple[str, bytes]]] = None) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        files = [
            (contract.TARBALL_CONFIG_FILE, ANNEX_CONFIG.replace(b"{name}", annex.encode())),
            (contract.TARBALL_TOKEN_FILE, TOKEN),
            *(extra or []),
        ]
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def role_policy(bucket: str, *, iam_read: bool = True) -> dict[str, Any]:
    statements: list[dict[str, Any]] = [
        {
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": contract.config_object_arn_pattern(bucket),
        },
        {
            "Effect": "Allow",
            "Action": [
                "ec2:DescribeInstances",
                "ec2:DescribeSpotFleetRequests",
                "ec2:DescribeFleets",
            ],
            "Resource": "*",
        },
    ]
    if iam_read:
        statements.append(
            {
                "Effect": "Allow",
                "Action": [
                    "iam:GetInstanceProfile",
                    "iam:ListRolePolicies",
                    "iam:GetRolePolicy",
                    "iam:ListAttachedRolePolicies",
                    "iam:GetPolicy",
                    "iam:GetPolicyVersion",
                ],
                "Resource": "*",
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


@dataclass
class AnnexWorld:
    """One annex's resources plus the files the agent run leaves under `root`."""

    aws: LocalAws
    imds: ImdsServer
    root: Path
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    bucket: str = ""
    role: str = ""
    profile_arn: str = ""
    instance_id: str = ""
    endpoint: str = ""
    poweroff_marker: Path = field(init=False)

    def __post_init__(self) -> None:
        self.poweroff_marker = self.root.parent / f"poweroff-{self.suffix}"
        self.s3, self.iam, self.ec2, self.sts = (
            _client(self.aws, name) for name in ("s3", "iam", "ec2", "sts")
        )

    # -- setup-stack equivalents

    def setup(self, *, inline: bool = True, iam_read: bool = True) -> AnnexWorld:
        self.bucket = f"annex-config-{self.suffix}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.role = f"AnnexInstanceRole-{self.suffix}"
        self.iam.create_role(
            RoleName=self.role, AssumeRolePolicyDocument=json.dumps(_ACCOUNT_ROOT_TRUST)
        )
        document = json.dumps(role_policy(self.bucket, iam_read=iam_read))
        if inline:
            self.iam.put_role_policy(
                RoleName=self.role,
                PolicyName=contract.INSTANCE_ROLE_POLICY_NAME,
                PolicyDocument=document,
            )
        else:
            # Only an attached managed policy names the bucket: the agent's fallback scan.
            self.iam.put_role_policy(
                RoleName=self.role,
                PolicyName="SomethingElse",
                PolicyDocument=json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {"Effect": "Allow", "Action": "ec2:DescribeTags", "Resource": "*"}
                        ],
                    }
                ),
            )
            arn = self.iam.create_policy(
                PolicyName=f"AnnexConfigRead-{self.suffix}", PolicyDocument=document
            )["Policy"]["Arn"]
            self.iam.attach_role_policy(RoleName=self.role, PolicyArn=arn)
        profile = self.iam.create_instance_profile(
            InstanceProfileName=f"AnnexProfile-{self.suffix}", Path="/annex/"
        )["InstanceProfile"]
        self.iam.add_role_to_instance_profile(
            InstanceProfileName=profile["InstanceProfileName"], RoleName=self.role
        )
        self.profile_arn = profile["Arn"]
        return self

    def use_setup_stack(self, outputs: dict[str, str]) -> AnnexWorld:
        """Use the bucket, role and instance profile the deployed setup stack created."""
        self.bucket = outputs[contract.OUTPUT_CONFIG_BUCKET.key]
        self.profile_arn = outputs[contract.OUTPUT_INSTANCE_PROFILE_ARN.key]
        self.role = outputs[contract.OUTPUT_INSTANCE_ROLE_ARN.key].rsplit("/", 1)[-1]
        return self

    def upload(self, annex: str, data: Optional[bytes] = None) -> None:
        self.s3.put_object(
            Bucket=self.bucket, Key=contract.config_key(annex), Body=data or tarball(annex)
        )

    # -- launches

    def launch_on_demand(
        self, annex: Optional[str], *, public_ip: Optional[str] = "203.0.113.10"
    ) -> str:
        token = contract.new_client_token(annex) if annex else ""
        kwargs: dict[str, Any] = {"ClientToken": token} if token else {}
        reservation = self.ec2.run_instances(
            ImageId="ami-12345678",
            MinCount=1,
            MaxCount=1,
            InstanceType="m5.large",
            IamInstanceProfile={"Arn": self.profile_arn},
            **kwargs,
        )
        self.instance_id = reservation["Instances"][0]["InstanceId"]
        self._register(public_ip=public_ip, tags_in_metadata=False)
        return self.instance_id

    def launch_spot_fleet(
        self, annex: str, *, tags_in_metadata: bool, client_token: Optional[str] = None
    ) -> str:
        fleet_role = self.iam.create_role(
            RoleName=f"AnnexFleetRole-{self.suffix}",
            AssumeRolePolicyDocument=json.dumps(_TRUST),
        )["Role"]["Arn"]
        fleet = self.ec2.request_spot_fleet(
            SpotFleetRequestConfig={
                "ClientToken": client_token or contract.new_client_token(annex),
                "IamFleetRole": fleet_role,
                "AllocationStrategy": "lowestPrice",
                "TargetCapacity": 1,
                "LaunchSpecifications": [
                    {
                        "ImageId": "ami-12345678",
                        "InstanceType": "m5.large",
                        "IamInstanceProfile": {"Arn": self.profile_arn},
                    }
                ],
            }
        )["SpotFleetRequestId"]
        instances = self.ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet)
        self.instance_id = instances["ActiveInstances"][0]["InstanceId"]
        self._register(public_ip=None, tags_in_metadata=tags_in_metadata)
        self.fleet_id = fleet
        return self.instance_id

    def launch_ec2_fleet(self, annex: str, *, tags_in_metadata: bool, market: str = "spot") -> str:
        """One instance from an EC2 Fleet (`instant`) requested with the annex's client token."""
        template = self.ec2.create_launch_template(
            LaunchTemplateName=f"condor-annex-{annex}",
            LaunchTemplateData={
                "ImageId": "ami-12345678",
                "InstanceType": "m5.large",
                "IamInstanceProfile": {"Arn": self.profile_arn},
            },
        )["LaunchTemplate"]["LaunchTemplateId"]
        answer = self.ec2.create_fleet(
            ClientToken=contract.new_client_token(annex),
            Type="instant",
            TargetCapacitySpecification={
                "TotalTargetCapacity": 1,
                "DefaultTargetCapacityType": market,
            },
            LaunchTemplateConfigs=[
                {"LaunchTemplateSpecification": {"LaunchTemplateId": template, "Version": "1"}}
            ],
        )
        self.instance_id = answer["Instances"][0]["InstanceIds"][0]
        self._register(public_ip=None, tags_in_metadata=tags_in_metadata)
        self.fleet_id = answer["FleetId"]
        return self.instance_id

    def _register(self, *, public_ip: Optional[str], tags_in_metadata: bool) -> None:
        instance = instance_from_ec2(
            self.ec2,
            self.iam,
            self.instance_id,
            sts_client=self.sts,
            region=self.aws.region,
            tags_in_metadata=tags_in_metadata,
            public_ipv4=public_ip,
        )
        if tags_in_metadata:
            # Tags in metadata mirror the instance's EC2 tags as they change.
            instance.tags = LiveInstanceTags(self.ec2, self.instance_id, max_age=0)
        self.endpoint = self.imds.add_instance(instance)

    def prefetch_credentials(self) -> None:
        """Have the IMDS emulator assume the role now (before IAM enforcement is switched on)."""
        client = ImdsClient(endpoint=self.endpoint)
        client.get(f"meta-data/iam/security-credentials/{self.role}")

    # -- running the agent

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AWS_") and k not in ("HTTP_PROXY", "http_proxy")
        }
        env.update(
            AWS_ENDPOINT_URL=self.aws.endpoint_url,
            AWS_EC2_METADATA_SERVICE_ENDPOINT=self.endpoint,
            AWS_CONFIG_FILE=str(self.root.parent / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.root.parent / "no-aws-credentials"),
            CONDOR_ANNEX_POWEROFF_COMMAND=f"touch {self.poweroff_marker}",
        )
        return env

    def run_agent(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(AGENT), "--root", str(self.root), "--no-firewall", "--imds-timeout", "5", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @property
    def config_dir(self) -> Path:
        return self.root / "etc/condor/config.d"

    @property
    def powered_off(self) -> bool:
        return self.poweroff_marker.exists()


@pytest.fixture
def world(aws: LocalAws, imds_server: ImdsServer, tmp_path: Path) -> Iterator[AnnexWorld]:
    """A fresh local AWS (the shared `aws` fixture), the IMDS emulator and an empty root."""
    (tmp_path / "root").mkdir()
    yield AnnexWorld(aws, imds_server, tmp_path / "root")
    aws.enforce_iam(aws.state.iam_engine_default)
