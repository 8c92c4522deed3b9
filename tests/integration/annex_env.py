"""A ready-to-create-annexes environment in the local AWS, for the CLI's integration tests.

`shared_annex_env` gives one test module: the setup stack (synthesized once per session, deployed
into the freshly reset local AWS), the `Settings` its outputs amount to, a listening "collector" on
loopback, the connectivity Lambda's handler run in-process (moto cannot run Lambda code), a
pool signing key for real token minting, and a user config file holding the macros.

The CLI runs as an operator: an IAM user holding exactly the setup's operator policies, whose
keys are the module's standard SDK variables, and the local AWS's IAM engine decides every
request it makes as AWS would. `clients` are the operator's; `admin` (the account root, which
AWS allows everything) is for arranging a test and looking at what is left.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

from annex_sandbox.local_aws import LocalAws
from annex_sandbox.principals import UserKeys, create_operator
from condor_annex import contract
from condor_annex.annex_settings import AnnexClients, Settings
from condor_annex.create import CreateHooks
from condor_annex.create_request import CreateRequest
from condor_annex.images import READY_IMAGE_TAG
from condor_annex.user_config import write_annex_macros
from tests.fixtures.cdk import deploy_setup

ROOT = Path(__file__).resolve().parents[2]
TRUST_DOMAIN = "pool.example.org"
POOL_KEY = b"annex-test-pool-signing-key-0123456789"
SCRAMBLE = bytes((0xDE, 0xAD, 0xBE, 0xEF))


def load_connectivity_handler() -> Callable[[dict[str, Any]], dict[str, Any]]:
    spec = importlib.util.spec_from_file_location(
        "annex_connectivity_handler", ROOT / "lambda" / "connectivity" / "handler.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler: Callable[[dict[str, Any]], dict[str, Any]] = module.handler
    return handler


class Collector:
    """A TCP listener standing in for the pool's collector (accepts and closes)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@dataclass
class AnnexEnv:
    local: LocalAws
    settings: Settings
    clients: AnnexClients
    config_file: Path
    collector: Collector
    signing_key_file: Path
    ami_id: str
    subnet_ids: list[str]
    admin: AnnexClients
    operator: UserKeys
    progress: list[tuple[str, str]] = field(default_factory=list)

    def hooks(self, **overrides: Any) -> CreateHooks:
        handler = load_connectivity_handler()

        def probe(host: str, port: int) -> dict[str, Any]:
            return handler({"host": host, "port": port, "timeout": 2})

        values: dict[str, Any] = {
            "connectivity_probe": probe,
            "progress": lambda step, state: self.progress.append((step, state)),
        }
        values.update(overrides)
        return CreateHooks(**values)

    def request(self, name: str, **kw: Any) -> CreateRequest:
        values: dict[str, Any] = {
            "annex_name": name,
            "collector": self.collector.address,
            "ami_id": self.ami_id,
            "owner": "alice",
            "signing_key_file": self.signing_key_file,
            "trust_domain": TRUST_DOMAIN,
        }
        values.update(kw)
        return CreateRequest(**values)

    def cli_args(self) -> list[str]:
        return [
            "-config-file",
            str(self.config_file),
            "-collector",
            self.collector.address,
            "-pool-signing-key-file",
            str(self.signing_key_file),
            "-trust-domain",
            TRUST_DOMAIN,
            "-yes",
        ]

    # What is left in AWS -------------------------------------------------------------------

    def live_instances(self, annex: Optional[str] = None) -> list[dict[str, Any]]:
        out = []
        pages = self.admin.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
        )
        for page in pages:
            for r in page["Reservations"]:
                for i in r["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
                    if annex is None or tags.get(contract.TAG_ANNEX_NAME) == annex:
                        out.append(i)
        return out

    def live_fleets(self) -> list[dict[str, Any]]:
        fleets = self.admin.ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"]
        return [
            f for f in fleets if f["SpotFleetRequestState"] in ("submitted", "active", "modifying")
        ]

    def live_ec2_fleets(self) -> list[str]:
        """EC2 Fleets that still own (or may launch) instances."""
        fleets = self.admin.ec2.describe_fleets()["Fleets"]
        return sorted(
            f["FleetId"]
            for f in fleets
            if f["FleetState"] in ("submitted", "active", "modifying", "deleted_running")
        )

    def objects(self) -> list[str]:
        listing = self.admin.s3.list_objects_v2(Bucket=self.settings.config_bucket)
        return sorted(o["Key"] for o in listing.get("Contents", []))

    def schedules(self) -> list[str]:
        return sorted(s["Name"] for s in self.admin.scheduler.list_schedules().get("Schedules", []))

    def launch_templates(self) -> list[str]:
        return sorted(
            t["LaunchTemplateName"]
            for t in self.admin.ec2.describe_launch_templates().get("LaunchTemplates", [])
        )

    def leftovers(self) -> dict[str, Any]:
        """Everything an annex could leave behind; all empty after a failed create or `off`."""
        return {
            "instances": [i["InstanceId"] for i in self.live_instances()],
            "fleets": [f["SpotFleetRequestId"] for f in self.live_fleets()],
            "objects": self.objects(),
            "schedules": self.schedules(),
            "launch_templates": self.launch_templates(),
        }


def write_scrambled_key(path: Path, key: bytes) -> None:
    path.write_bytes(bytes(b ^ SCRAMBLE[i % 4] for i, b in enumerate(key)))
    path.chmod(0o600)


def make_setup(local: LocalAws) -> dict[str, str]:
    """The setup's resources, created directly; returns stack outputs keyed by output key."""
    s3 = local.client("s3")
    iam = local.client("iam")
    ec2 = local.client("ec2")
    bucket = "annex-config-test"
    s3.create_bucket(Bucket=bucket)
    trust = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "ec2.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )
    role = iam.create_role(RoleName="annex-instance", AssumeRolePolicyDocument=trust)["Role"]
    profile = iam.create_instance_profile(InstanceProfileName="annex-instance")["InstanceProfile"]
    iam.add_role_to_instance_profile(
        InstanceProfileName="annex-instance", RoleName="annex-instance"
    )
    iam.put_role_policy(
        RoleName="annex-instance",
        PolicyName=contract.INSTANCE_ROLE_POLICY_NAME,
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "s3:GetObject",
                        "Resource": contract.config_object_arn_pattern(bucket),
                    }
                ],
            }
        ),
    )
    fleet_role = iam.create_role(RoleName="annex-fleet", AssumeRolePolicyDocument=trust)["Role"]
    sched_role = iam.create_role(RoleName="annex-sched", AssumeRolePolicyDocument=trust)["Role"]
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
    sg = ec2.create_security_group(GroupName="annex-sg", Description="annex", VpcId=vpc["VpcId"])[
        "GroupId"
    ]
    fn = f"arn:aws:lambda:{local.region}:{local.account_id}:function:"
    return {
        contract.OUTPUT_CONFIG_BUCKET.key: bucket,
        contract.OUTPUT_INSTANCE_PROFILE_ARN.key: profile["Arn"],
        contract.OUTPUT_INSTANCE_ROLE_ARN.key: role["Arn"],
        contract.OUTPUT_SPOT_FLEET_ROLE_ARN.key: fleet_role["Arn"],
        contract.OUTPUT_SECURITY_GROUP_IDS.key: sg,
        contract.OUTPUT_VPC_ID.key: vpc["VpcId"],
        contract.OUTPUT_LEASE_FUNCTION_ARN.key: fn + "annex-lease",
        contract.OUTPUT_SWEEP_FUNCTION_ARN.key: fn + "annex-sweep",
        contract.OUTPUT_CONNECTIVITY_FUNCTION_ARN.key: fn + "annex-connectivity",
        contract.OUTPUT_SCHEDULER_ROLE_ARN.key: sched_role["Arn"],
        contract.OUTPUT_OPERATOR_POLICY_ARN.key: (
            f"arn:aws:iam::{local.account_id}:policy/annex-operator"
        ),
        contract.OUTPUT_OPERATOR_LAUNCH_POLICY_ARN.key: (
            f"arn:aws:iam::{local.account_id}:policy/annex-operator-launch"
        ),
    }


_AMI: list[str] = []


def root_clients(local: LocalAws) -> AnnexClients:
    """The annex verbs' clients signed by the account root (AWS allows it everything)."""
    return AnnexClients(
        ec2=local.client("ec2"),
        s3=local.client("s3"),
        scheduler=local.client("scheduler"),
        lambda_=local.client("lambda"),
        region=local.region,
        account_id=local.account_id,
        ssm=local.client("ssm"),
    )


@contextlib.contextmanager
def _environment(local: LocalAws, tmp_path: Path, synth: Any) -> Iterator[AnnexEnv]:
    local.reset()
    local.clear_throttles()
    local.set_fleet_tag_delay(0.2)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in local.env().items():
            mp.setenv(key, value)
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        mp.setenv("PATH", os.defpath)  # no condor_token_create: tokens are minted in-process
        mp.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # prices cached per module
        outputs = deploy_setup(synth, local) if synth is not None else make_setup(local)
        settings = Settings.from_outputs(outputs, region=local.region)
        admin = root_clients(local)
        operator = create_operator(local.client("iam"), outputs)
        for key, value in operator.sdk_environment().items():
            mp.setenv(key, value)
        clients = AnnexClients.from_session(region=local.region)
        config_file = tmp_path / "user_config"
        config_file.write_text("# the admin's own line\nMY_SETTING = keep me\n")
        macros = {contract.MACRO_BY_OUTPUT_KEY[k]: v for k, v in outputs.items()}
        macros[contract.MACRO_AWS_REGION] = local.region
        write_annex_macros(config_file, macros)
        key_file = tmp_path / "POOL"
        write_scrambled_key(key_file, POOL_KEY)
        if not _AMI:  # the default AMIs are the same after every reset
            images = admin.ec2.describe_images(Owners=["amazon"])["Images"]
            _AMI.append(sorted(i["ImageId"] for i in images)[0])
        # The tests' image stands for an annex-ready one (built with image/install-al2023.sh),
        # so launches carry exactly the user data the test gives (tags go with every reset).
        admin.ec2.create_tags(
            Resources=[_AMI[0]], Tags=[{"Key": READY_IMAGE_TAG, "Value": "tests"}]
        )
        subnets = sorted(
            s["SubnetId"] for s in admin.ec2.describe_subnets()["Subnets"] if s.get("DefaultForAz")
        )
        collector = Collector()
        try:
            yield AnnexEnv(
                local,
                settings,
                clients,
                config_file,
                collector,
                key_file,
                _AMI[0],
                subnets,
                admin,
                operator,
            )
        finally:
            collector.close()


@pytest.fixture(scope="module")
def shared_annex_env(
    local_aws: LocalAws, synthesized_setup: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AnnexEnv]:
    """The setup stack deployed into a fresh local AWS, shared by one module's tests (each
    module uses its own annex names, and a failed create leaves nothing to disturb the next)."""
    with _environment(local_aws, tmp_path_factory.mktemp("annex"), synthesized_setup) as env:
        yield env


@pytest.fixture(scope="module")
def minimal_annex_env(
    local_aws: LocalAws, synthesized_setup: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AnnexEnv]:
    """`shared_annex_env` under the name the pool and old-tool tests use.

    It once made the setup's resources by hand; the operator's policies only mean something as
    the setup deploys them, so it deploys the setup too (synthesized once per session)."""
    with _environment(local_aws, tmp_path_factory.mktemp("annex"), synthesized_setup) as env:
        yield env


def tarball_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return {
            m.name: (archive.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
            for m in archive.getmembers()
        }


def htcondor_params(config_dir: Path, names: list[str]) -> dict[str, Optional[str]]:
    """Parse a config.d with the htcondor bindings in a subprocess (a bad config kills it)."""
    condor_config = config_dir.parent / "condor_config"
    condor_config.write_text(f"LOCAL_CONFIG_DIR = {config_dir}\n")
    code = (
        "import json, sys, htcondor2\n"
        "print(json.dumps({n: htcondor2.param.get(n) for n in json.loads(sys.argv[1])}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(names)],
        capture_output=True,
        text=True,
        env={**os.environ, "CONDOR_CONFIG": str(condor_config)},
        check=True,
        timeout=60,
    )
    parsed: dict[str, Optional[str]] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed
