"""`make demo`: the whole condor_annex flow on the local AWS, one numbered step at a time.

Starts the local AWS (as a process), the IMDSv2 emulator and a real HTCondor pool (central manager
from ../shared/htcondor, see annex_sandbox/htcondor_dist.py; where those daemons are missing, a
pretend collector port and a POOL signing key, said in one line), runs `condor_annex -setup`,
creates an on-demand annex, a Spot Fleet annex and an EC2 Fleet annex (each create shows its cost
preview first), boots every emulated instance with the real `condor-annex-ec2` under its own
`--root` (with the real pool, each instance then runs its own master + startd from what the agent
installed), shows `condor_annex status`, runs an ordinary user's job on an annex slot and watches
an idle instance power itself off, lets one lease expire and watches the lease Lambda clean up,
switches the other annex off and removes the setup. Everything it started is stopped at the end,
whatever happened; the exit code is non-zero when any step failed.

The local AWS's IAM engine decides every request. `-setup` and `-destroy-setup` run as an
administrator IAM user, every other command as an operator IAM user holding exactly the setup's
operator policies (AWS allows the account root everything, which would prove nothing); the last
check is that the engine refused none of the flow's requests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional, TextIO

from annex_sandbox import principals
from annex_sandbox.local_aws import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY
from annex_sandbox.pool import install_image_config
from condor_annex import annex, contract

REGION = "us-east-1"
ON_DEMAND_ANNEX = "demo_ondemand"
SPOT_ANNEX = "demo_spot"
FLEET_ANNEX = "demo_fleet"
"""Spot capacity through EC2 Fleet (`-aws-fleet`), with a price cap."""
TRUST_DOMAIN = "demo.pool.example"
DEMO_USER = "annexdemo"
"""The ordinary user whose job runs on the on-demand annex (created when missing; needs root)."""
DEMO_IDLE = "1m"
POOL_KEY_SCRAMBLE = bytes([0xDE, 0xAD, 0xBE, 0xEF])


class DemoFailed(Exception):
    """A step's outcome was not what the demo promised."""


@dataclass
class Outcomes:
    """What each step observed; the end-to-end test asserts on these."""

    setup_outputs: dict[str, str] = field(default_factory=dict)
    check_setup_exit: Optional[int] = None
    annex_instances: dict[str, list[str]] = field(default_factory=dict)
    tarballs: list[str] = field(default_factory=list)
    previews: dict[str, list[str]] = field(default_factory=dict)
    """The cost preview lines each create printed, by annex."""
    ec2_fleet: dict[str, Any] = field(default_factory=dict)
    """The EC2 Fleet annex's fleet as DescribeFleets answers it."""
    boots: dict[str, int] = field(default_factory=dict)
    configured_files: dict[str, list[str]] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    lease_cleanup_seconds: Optional[float] = None
    after_lease: dict[str, Any] = field(default_factory=dict)
    after_off: dict[str, Any] = field(default_factory=dict)
    destroyed: bool = False
    principals: dict[str, str] = field(default_factory=dict)
    """The IAM user each `condor_annex` command ran as, by its first argument."""
    refused: list[list[Any]] = field(default_factory=list)
    """The IAM engine's refusals over the whole flow (operation, caller, kind, allowed, checks)."""
    engine_decisions: dict[str, int] = field(default_factory=dict)
    """How many requests the engine decided, by caller kind (the root's are not judged)."""
    pool: str = ""
    """`real` (HTCondor daemons) or `pretend` (a TCP listener), with the reason for the latter."""
    slots_in_pool: list[str] = field(default_factory=list)
    job_output: Optional[str] = None
    job_host: Optional[str] = None
    powered_off: dict[str, int] = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)


class Console:
    """Numbered steps with timings, and indented detail lines."""

    def __init__(self, out: TextIO, total: int) -> None:
        self.out = out
        self.total = total
        self.number = 0

    @contextlib.contextmanager
    def step(self, title: str, outcomes: Outcomes) -> Iterator[None]:
        self.number += 1
        self.out.write(f"\n[{self.number}/{self.total}] {title} ...\n")
        self.out.flush()
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self.out.write(f"      FAILED after {time.monotonic() - started:.1f} s\n")
            raise
        elapsed = time.monotonic() - started
        outcomes.step_seconds[title] = elapsed
        self.out.write(f"      done in {elapsed:.1f} s\n")
        self.out.flush()

    def detail(self, text: str) -> None:
        for line in text.rstrip("\n").splitlines():
            self.out.write(f"      {line}\n")
        self.out.flush()


class PretendCollector:
    """A TCP port that accepts connections, standing in for the pool's collector."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self._socket.settimeout(0.2)
        self.port: int = self._socket.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> PretendCollector:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except (TimeoutError, OSError):
                continue
            connection.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._socket.close()


def write_pool_signing_key(path: Path) -> None:
    """A POOL key file as HTCondor stores it: random bytes XOR-scrambled with DE AD BE EF."""
    key = secrets.token_bytes(32)
    scrambled = bytes(b ^ POOL_KEY_SCRAMBLE[i % 4] for i, b in enumerate(key))
    path.write_bytes(scrambled)
    path.chmod(0o600)


class Demo:
    """The demo's state: processes it started, paths it uses, what it observed."""

    STEPS = 13

    def __init__(self, workdir: Path, out: TextIO = sys.stdout, *, real_pool: bool = True) -> None:
        self.workdir = workdir
        self.want_real_pool = real_pool
        self.manager: Any = None
        self.nodes: dict[str, Any] = {}
        self.console = Console(out, self.STEPS)
        self.outcomes = Outcomes()
        self.bin_dir = Path(sys.executable).parent
        self.user_config = workdir / "user_config"
        self.key_file = workdir / "POOL"
        self.aws_process: Optional[subprocess.Popen[str]] = None
        self.endpoint = ""
        self.imds: Any = None
        self.collector: Optional[PretendCollector] = None
        self.control: Any = None
        self.aws_log: Optional[TextIO] = None
        self.administrator: Optional[principals.UserKeys] = None
        self.operator: Optional[principals.UserKeys] = None

    # --- plumbing --------------------------------------------------------------------------

    def aws_env(self, user: principals.UserKeys) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL=self.endpoint.replace("127.0.0.1", "localhost"),
            **user.sdk_environment(),
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
            HOME=str(self.workdir),
            # Prices are cached under the demo's own directory, never the user's cache.
            XDG_CACHE_HOME=str(self.workdir / ".cache"),
            JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20",
        )
        if self.manager is not None:
            # The admin works on the central manager: its HTCondor config and tools.
            env.update(CONDOR_CONFIG=str(self.manager.config_file))
            env.update(PATH=self.manager.dist.path_env(env.get("PATH", "")))
        return env

    def client(self, service: str) -> Any:
        """A client of the local AWS's account root: the demo's own look at what happened."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=FAKE_ACCESS_KEY_ID,
            aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
        )

    def condor_annex(
        self, *args: str, show: bool = True, user: Optional[principals.UserKeys] = None
    ) -> tuple[int, str]:
        """Run the real CLI as `user` (default: the operator); stream its output indented;
        return (exit code, stdout)."""
        user = user or self.operator
        if user is None:
            raise DemoFailed(f"no IAM user to run condor_annex {args[0]} as")
        command = [str(self.bin_dir / "condor_annex"), *args, "-config-file", str(self.user_config)]
        self.outcomes.principals[args[0]] = user.user_name
        self.console.detail(f"[as IAM user {user.user_name}] $ condor_annex " + " ".join(args))
        process = subprocess.Popen(
            command,
            env=self.aws_env(user),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.workdir,
        )
        assert process.stdout is not None
        captured: list[str] = []
        for line in process.stdout:
            captured.append(line)
            if show:
                self.console.detail(line)
        lines = [line.strip() for line in captured if line.strip()]
        if "-annex-name" in args and any(line.startswith("Cost preview") for line in lines):
            name = args[args.index("-annex-name") + 1]
            start = next(i for i, line in enumerate(lines) if line.startswith("Cost preview"))
            self.outcomes.previews[name] = lines[start : start + 8]
        return process.wait(), "".join(captured)

    def expect(self, condition: bool, message: str) -> None:
        if not condition:
            raise DemoFailed(message)

    def annex_instances(
        self, annex_name: str, states: Sequence[str] = ("pending", "running")
    ) -> list[str]:
        """The annex's instances in `states`, by the product's own ownership rule."""
        found = annex.find(self.client("ec2"), annex_name, states=states)
        return sorted(
            [*found.instance_ids, *(str(i["InstanceId"]) for i in found.awaiting_fleet_tag)]
        )

    def bucket_keys(self) -> list[str]:
        bucket = self.outcomes.setup_outputs[contract.OUTPUT_CONFIG_BUCKET.key]
        listing = self.client("s3").list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listing.get("Contents", []))

    # --- steps -----------------------------------------------------------------------------

    def start_emulators(self) -> None:
        from annex_sandbox import SandboxControl
        from annex_sandbox.imds import ImdsServer

        # The emulator's own chatter (moto warnings) goes to a log file, not the demo's story.
        self.aws_log = (self.workdir / "local-aws.log").open("w")
        self.aws_process = subprocess.Popen(
            [sys.executable, "-m", "annex_sandbox", "--port", "0", "--fleet-tag-delay", "3"],
            stdout=subprocess.PIPE,
            stderr=self.aws_log,
            text=True,
        )
        assert self.aws_process.stdout is not None
        first = self.aws_process.stdout.readline().strip()
        self.expect(first.startswith("LOCAL_AWS_ENDPOINT="), f"local AWS did not start: {first!r}")
        self.endpoint = first.split("=", 1)[1]
        self.control = SandboxControl(self.endpoint)
        self.imds = ImdsServer().start()
        self.console.detail(f"local AWS (moto + fidelity fixes): {self.endpoint}")
        self.console.detail(f"IMDSv2 emulator: {self.imds.endpoint}")
        self.start_pool()

    def start_pool(self) -> None:
        from annex_sandbox import htcondor_dist
        from annex_sandbox.pool import CentralManager

        found: Any = htcondor_dist.Missing("the pretend collector was asked for")
        if self.want_real_pool:
            found = htcondor_dist.find()
            if isinstance(found, htcondor_dist.Distribution) and os.geteuid() != 0:
                found = htcondor_dist.Missing("running daemons and a user's job needs root")
        if isinstance(found, htcondor_dist.Missing):
            self.collector = PretendCollector().start()
            write_pool_signing_key(self.key_file)
            self.outcomes.pool = "pretend"
            self.console.detail(
                f"no real HTCondor pool ({found.reason}): a pretend collector at "
                f"127.0.0.1:{self.collector.port}"
            )
            return
        pool_dir = self.workdir / "pool"
        self.manager = CentralManager.create(found, pool_dir, trust_domain=TRUST_DOMAIN).start()
        self.key_file = self.manager.key_file
        self.outcomes.pool = "real"
        self.console.detail(
            f"real HTCondor pool: collector + negotiator + schedd at {self.manager.address} "
            f"(HTCondor from {found.source}), IDTOKENs only, pool signing key {self.key_file}"
        )

    def setup(self) -> None:
        iam = self.client("iam")
        self.administrator = principals.create_administrator(iam)
        self.console.detail(
            f"IAM user {self.administrator.user_name}: AdministratorAccess, runs -setup"
        )
        code, _ = self.condor_annex(
            "-setup", "-aws-region", REGION, "-pool-cidr", "127.0.0.1/32", user=self.administrator
        )
        self.expect(code == 0, f"condor_annex -setup exited {code}")
        outputs = self.client("cloudformation").describe_stacks(StackName=contract.STACK_NAME)
        self.outcomes.setup_outputs = {
            o["OutputKey"]: o["OutputValue"] for o in outputs["Stacks"][0].get("Outputs", [])
        }
        self.operator = principals.create_operator(iam, self.outcomes.setup_outputs)
        self.console.detail(
            f"IAM user {self.operator.user_name}: only the setup's operator policies "
            f"({', '.join(principals.operator_policy_arns(self.outcomes.setup_outputs))}), "
            "runs every command from here to -destroy-setup"
        )
        written = self.user_config.read_text()
        missing = [o.macro for o in contract.STACK_OUTPUTS if o.macro not in written]
        self.expect(not missing, f"user config lacks {missing}")
        self.console.detail(
            f"{len(contract.STACK_OUTPUTS)} ANNEX_DEFAULT_* macros in {self.user_config}"
        )

    def check_setup(self) -> None:
        code, _ = self.condor_annex("-check-setup", "-collector", self.collector_address())
        self.outcomes.check_setup_exit = code
        self.expect(code == 0, f"condor_annex -check-setup exited {code}")

    def collector_address(self) -> str:
        if self.manager is not None:
            return str(self.manager.address)
        assert self.collector is not None
        return f"127.0.0.1:{self.collector.port}"

    def demo_ami(self) -> str:
        images = self.client("ec2").describe_images(Owners=["amazon"])["Images"]
        self.expect(bool(images), "the local AWS offers no images")
        return str(sorted(i["ImageId"] for i in images)[0])

    def create_annexes(self) -> None:
        common = [
            "-aws-on-demand-ami-id",
            self.demo_ami(),
            "-collector",
            self.collector_address(),
            "-pool-signing-key-file",
            str(self.key_file),
            "-trust-domain",
            TRUST_DOMAIN,
            "-duration",
            "50m",
            "-idle",
            "15m",
            "-yes",
        ]
        # The on-demand annex belongs to the demo's ordinary user and idles out quickly.
        code, _ = self.condor_annex(
            "-annex-name", ON_DEMAND_ANNEX, "-count", "2", *common,
            "-owner", DEMO_USER, "-idle", DEMO_IDLE,
        )  # fmt: skip
        self.expect(code == 0, f"on-demand create exited {code}")
        code, _ = self.condor_annex(
            "-annex-name", SPOT_ANNEX, "-slots", "4", "-aws-spot-instance-types", "m5.large:2",
            *common,
        )  # fmt: skip
        self.expect(code == 0, f"Spot Fleet create exited {code}")
        code, _ = self.condor_annex(
            "-annex-name", FLEET_ANNEX, "-slots", "4", "-aws-fleet",
            "-aws-spot-instance-types", "m5.large:2,c5.large:2", "-max-price-per-hour", "1",
            *common,
        )  # fmt: skip
        self.expect(code == 0, f"EC2 Fleet create exited {code}")
        ec2 = self.client("ec2")
        fleets = [
            f
            for f in ec2.describe_fleets()["Fleets"]
            if contract.token_belongs_to(f.get("ClientToken"), FLEET_ANNEX)
        ]
        self.expect(len(fleets) == 1, f"expected one EC2 Fleet, found {len(fleets)}")
        self.outcomes.ec2_fleet = fleets[0]
        self.console.detail(
            f"EC2 Fleet {fleets[0]['FleetId']}: {fleets[0]['Type']}, "
            f"{fleets[0]['SpotOptions'].get('AllocationStrategy')}, "
            f"MaxTotalPrice {fleets[0]['SpotOptions'].get('MaxTotalPrice')}"
        )
        for annex_name in (ON_DEMAND_ANNEX, SPOT_ANNEX, FLEET_ANNEX):
            self.outcomes.annex_instances[annex_name] = self.annex_instances(annex_name)
        self.outcomes.tarballs = [k for k in self.bucket_keys() if contract.is_config_key(k)]
        self.console.detail(f"instances: {json.dumps(self.outcomes.annex_instances)}")
        self.console.detail(f"tarballs in the config bucket: {self.outcomes.tarballs}")
        self.expect(
            len(self.outcomes.annex_instances[ON_DEMAND_ANNEX]) == 2, "expected 2 on-demand"
        )
        self.expect(
            len(self.outcomes.annex_instances[SPOT_ANNEX]) == 2, "expected 2 spot (4 slots / 2)"
        )
        self.expect(
            len(self.outcomes.annex_instances[FLEET_ANNEX]) == 2, "expected 2 EC2 Fleet instances"
        )
        missing = [a for a in self.outcomes.annex_instances if not self.outcomes.previews.get(a)]
        self.expect(not missing, f"no cost preview shown for {missing}")

    def boot_instances(self) -> None:
        from annex_sandbox.imds import instance_from_ec2

        ec2, iam, sts = self.client("ec2"), self.client("iam"), self.client("sts")
        agents: dict[str, subprocess.Popen[str]] = {}
        for annex_name, ids in self.outcomes.annex_instances.items():
            for instance_id in ids:
                # A public IP would become TCP_FORWARDING_HOST (the image's config); the demo's
                # instances reach the pool on loopback, like instances in a private subnet.
                public: Any = None if self.manager is not None else ...
                instance = instance_from_ec2(
                    ec2, iam, instance_id, sts_client=sts, region=REGION, public_ipv4=public
                )
                url = self.imds.add_instance(instance)
                root = self.workdir / "instances" / instance_id
                root.mkdir(parents=True)
                if self.manager is not None:
                    install_image_config(root)
                env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
                env.update(AWS_ENDPOINT_URL=self.endpoint, AWS_EC2_METADATA_SERVICE_ENDPOINT=url)
                agents[instance_id] = subprocess.Popen(
                    [
                        str(self.bin_dir / "condor-annex-ec2"),
                        "--root",
                        str(root),
                        "--no-firewall",
                        "--no-poweroff",
                        "--fleet-tag-timeout",
                        "60",
                    ],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                self.console.detail(f"booting {instance_id} ({annex_name}) ...")
        for instance_id, agent in agents.items():
            output, _ = agent.communicate(timeout=120)
            self.outcomes.boots[instance_id] = agent.returncode
            last = [line for line in output.splitlines() if "step=" in line][-1:]
            self.console.detail(f"{instance_id}: exit {agent.returncode} {' '.join(last)}")
            config_d = self.workdir / "instances" / instance_id / "etc" / "condor" / "config.d"
            files = sorted(str(p.relative_to(config_d)) for p in config_d.rglob("*") if p.is_file())
            self.outcomes.configured_files[instance_id] = files
        failed = {i: c for i, c in self.outcomes.boots.items() if c != 0}
        self.expect(not failed, f"agents failed: {failed}")
        if self.manager is not None:
            self.join_pool()

    def join_pool(self) -> None:
        """Start each instance's HTCondor from what its agent installed; wait for its slot."""
        from annex_sandbox.pool import ExecuteNode

        started = time.monotonic()
        for instance_id in self.outcomes.boots:
            root = self.workdir / "instances" / instance_id
            node = ExecuteNode.create(self.manager.dist, root, name=instance_id)
            self.nodes[instance_id] = node.start()
        slots = self.manager.wait_for(
            f"{contract.INSTANCE_ID_ATTRIBUTE} =!= undefined", count=len(self.nodes), timeout=90
        )
        self.outcomes.slots_in_pool = sorted(str(s["Name"]) for s in slots)
        self.console.detail(
            f"{len(slots)} annex slots in the pool {time.monotonic() - started:.1f} s after "
            "their masters started:"
        )
        for slot in sorted(slots, key=lambda s: str(s["Name"])):
            self.console.detail(
                f"  {slot['Name']}  {contract.ANNEX_NAME_ATTRIBUTE}={slot.get('AnnexName')}  "
                f"owner={slot.get('AnnexOwner')}  as {slot.get('AuthenticatedIdentity')}"
            )

    def status(self) -> None:
        where = ["-collector", self.collector_address()] if self.manager is not None else []
        code, text = self.condor_annex("status", "--json", *where, show=False)
        self.expect(code == 0, f"status exited {code}")
        self.outcomes.status = json.loads(text)
        self.condor_annex("status", *where)
        if self.manager is not None:
            joined = [
                i["instance_id"]
                for a in self.outcomes.status["annexes"]
                for i in a["instances"]
                if i.get("joined_pool")
            ]
            self.expect(len(joined) == len(self.nodes), f"IN POOL says {joined}")

    def run_job(self) -> None:
        if self.manager is None:
            self.console.detail("skipped: no real pool (see step 1)")
            return
        description = (
            "executable = /bin/echo\n"
            # $$(...) is filled in from the machine ad of the slot the job lands on.
            'arguments = "hello from annex $$(AnnexName), instance $$(EC2InstanceID)"\n'
            "transfer_executable = false\n"
            "should_transfer_files = YES\n"
            "output = out.txt\nerror = err.txt\nlog = job.log\n"
            "request_memory = 64\nrequest_disk = 1024\n"
            f'+TargetAnnexName = "{ON_DEMAND_ANNEX}"\n'
            "queue\n"
        )
        jobs = self.workdir / "jobs"
        self.console.detail(f"$ su {DEMO_USER} -c 'condor_submit job.sub'   (+TargetAnnexName)")
        cluster = self.manager.submit_as(DEMO_USER, jobs, description)
        deadline = time.monotonic() + 180
        ad: dict[str, Any] = {}
        while time.monotonic() < deadline:
            ad = self.manager.job(cluster) or {}
            if ad.get("JobStatus") == 4:
                break
            time.sleep(0.5)
        self.expect(ad.get("JobStatus") == 4, f"job {cluster} did not complete: {ad}")
        self.outcomes.job_host = str(ad.get("LastRemoteHost"))
        self.outcomes.job_output = (jobs / "out.txt").read_text().strip()
        self.console.detail(f"job {cluster} by {ad.get('Owner')} ran on {self.outcomes.job_host}")
        self.console.detail(f"its output: {self.outcomes.job_output}")

    def idle_power_off(self) -> None:
        if self.manager is None:
            self.console.detail("skipped: no real pool (see step 1)")
            return
        ours = self.outcomes.annex_instances[ON_DEMAND_ANNEX]
        self.console.detail(
            f"{ON_DEMAND_ANNEX} was created with -idle {DEMO_IDLE}: its unclaimed startds exit, "
            "their masters follow and run the image's shutdown script (power-off)"
        )
        # Done when each master has exited AND its power-off hook has recorded the call; the
        # deadline only bounds a failure (the idle clock of the instance that ran the job starts
        # when its claim ends, so how soon this happens depends on the machine's load).
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if all(not self.nodes[i].running() and self.nodes[i].poweroffs for i in ours):
                break
            time.sleep(1)
        self.outcomes.powered_off = {i: self.nodes[i].poweroffs for i in ours}
        for instance_id, count in self.outcomes.powered_off.items():
            state = "still running" if self.nodes[instance_id].running() else "HTCondor exited"
            self.console.detail(f"{instance_id}: {state}, power-off hook called {count}x")
        self.expect(
            all(count == 1 for count in self.outcomes.powered_off.values()),
            f"expected one power-off per idle instance: {self.outcomes.powered_off}",
        )

    def expire_one_lease(self) -> None:
        from condor_annex import lease

        bucket = self.outcomes.setup_outputs[contract.OUTPUT_CONFIG_BUCKET.key]
        s3, scheduler = self.client("s3"), self.client("scheduler")
        record = lease.read_lease_record(s3, bucket, ON_DEMAND_ANNEX)
        self.expect(record is not None, "no lease record for the on-demand annex")
        assert record is not None
        soon = datetime.now(timezone.utc) + timedelta(seconds=3)
        self.console.detail(
            f"moving {ON_DEMAND_ANNEX}'s lease from {record.expires_at} to {soon:%H:%M:%S}Z "
            "(the demo cannot wait 50 minutes)"
        )
        moved = record.with_expiry(soon)
        lease.put_lease_record(s3, moved)
        lease.update_schedule(
            scheduler,
            moved,
            lease_function_arn=self.outcomes.setup_outputs[contract.OUTPUT_LEASE_FUNCTION_ARN.key],
            scheduler_role_arn=self.outcomes.setup_outputs[contract.OUTPUT_SCHEDULER_ROLE_ARN.key],
        )
        started = time.monotonic()
        while time.monotonic() - started < 60:
            if (
                not self.annex_instances(ON_DEMAND_ANNEX)
                and contract.config_key(ON_DEMAND_ANNEX) not in self.bucket_keys()
            ):
                break
            time.sleep(0.5)
        self.outcomes.lease_cleanup_seconds = time.monotonic() - started
        self.outcomes.after_lease = {
            "running": self.annex_instances(ON_DEMAND_ANNEX),
            "terminated": self.annex_instances(ON_DEMAND_ANNEX, ("shutting-down", "terminated")),
            "keys": self.bucket_keys(),
            "other_annex_running": self.annex_instances(SPOT_ANNEX),
        }
        self.console.detail(json.dumps(self.outcomes.after_lease, indent=1))
        self.expect(not self.outcomes.after_lease["running"], "lease did not end the annex")
        self.expect(
            contract.config_key(ON_DEMAND_ANNEX) not in self.outcomes.after_lease["keys"],
            "lease did not delete the tarball",
        )

    def off(self) -> None:
        where = ["-collector", self.collector_address()] if self.manager is not None else []
        for annex_name in (SPOT_ANNEX, FLEET_ANNEX):
            code, _ = self.condor_annex("off", "-annex-name", annex_name, "-yes", *where)
            self.expect(code == 0, f"off {annex_name} exited {code}")
        live_fleets = [
            f["FleetId"]
            for f in self.client("ec2").describe_fleets()["Fleets"]
            if f["FleetState"] in ("submitted", "active", "modifying", "deleted_running")
        ]
        self.outcomes.after_off = {
            "running": self.annex_instances(SPOT_ANNEX) + self.annex_instances(FLEET_ANNEX),
            "keys": self.bucket_keys(),
            "ec2_fleets": live_fleets,
        }
        self.expect(not self.outcomes.after_off["running"], "off left instances running")

    def destroy(self) -> None:
        # The operator's user holds the setup's policies, and IAM refuses to delete an attached
        # policy: the administrator removes the user first, as in an account.
        if self.operator is not None:
            principals.delete_user(self.client("iam"), self.operator.user_name)
            self.console.detail(f"removed IAM user {self.operator.user_name}")
        code, _ = self.condor_annex("-destroy-setup", "-yes", user=self.administrator)
        self.expect(code == 0, f"-destroy-setup exited {code}")
        stacks = self.client("cloudformation").list_stacks()["StackSummaries"]
        live = [
            s["StackName"]
            for s in stacks
            if s["StackName"] == contract.STACK_NAME and s["StackStatus"] != "DELETE_COMPLETE"
        ]
        self.expect(not live, f"stack still there: {live}")
        self.outcomes.destroyed = True

    def engine_refused_nothing(self) -> None:
        """Every request of the flow (operator, administrator, instance roles, Lambdas, the
        services' roles) was one the deployed policies allow: the engine refused none."""
        from annex_sandbox import SandboxControl

        report = SandboxControl(self.endpoint).authz_report()
        decisions = report["decisions"]
        self.outcomes.refused = [d for d in decisions if not d[3]]
        kinds: dict[str, int] = {}
        for _operation, _caller, kind, _allowed, _checks in decisions:
            kinds[kind] = kinds.get(kind, 0) + 1
        self.outcomes.engine_decisions = kinds
        self.console.detail(
            f"the IAM engine decided {len(decisions)} requests of non-root callers "
            f"({', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))}); "
            f"refused {len(self.outcomes.refused)}"
        )
        for operation, caller, _kind, _allowed, checks in self.outcomes.refused:
            self.console.detail(f"  REFUSED {operation} by {caller}: {'; '.join(checks)}")
        self.expect(bool(kinds.get("user")), "the engine judged no IAM user's request: was it on?")
        # A non-root call without a mapping is a refusal above; the root's unmapped calls (the
        # demo's own look around) are the coverage test's business, not this flow's.
        self.expect(
            not self.outcomes.refused,
            f"the IAM engine refused {len(self.outcomes.refused)} requests of the flow: "
            + "; ".join(f"{op} by {caller}" for op, caller, *_ in self.outcomes.refused),
        )

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        if self.manager is not None:
            self.manager.stop()
        if self.imds is not None:
            self.imds.stop()
        if self.collector is not None:
            self.collector.stop()
        if self.aws_process is not None and self.aws_process.poll() is None:
            self.aws_process.terminate()
            try:
                self.aws_process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.aws_process.kill()
                self.aws_process.wait()
        if self.aws_log is not None:
            self.aws_log.close()

    def run(self) -> Outcomes:
        c, o = self.console, self.outcomes
        try:
            with c.step("Start the local AWS, the IMDSv2 emulator and an HTCondor pool", o):
                self.start_emulators()
            with c.step("condor_annex -setup (the CDK app through the pinned CDK CLI)", o):
                self.setup()
            with c.step("condor_annex -check-setup", o):
                self.check_setup()
            with c.step(
                "Create an on-demand annex (2 instances), a Spot Fleet annex (4 slots) and an "
                "EC2 Fleet annex (4 Spot slots, capped at $1/hour), each after its cost preview",
                o,
            ):
                self.create_annexes()
            with c.step("Boot every instance with the real condor-annex-ec2", o):
                self.boot_instances()
            with c.step("condor_annex status (IN POOL from the collector)", o):
                self.status()
            with c.step(f"An ordinary user's job runs on a {ON_DEMAND_ANNEX} slot", o):
                self.run_job()
            with c.step(f"{ON_DEMAND_ANNEX}'s idle instances power themselves off", o):
                self.idle_power_off()
            with c.step(f"Let {ON_DEMAND_ANNEX}'s lease expire; the lease Lambda cleans up", o):
                self.expire_one_lease()
            with c.step(f"condor_annex off -annex-name {SPOT_ANNEX} (and {FLEET_ANNEX})", o):
                self.off()
            with c.step("condor_annex -destroy-setup", o):
                self.destroy()
            with c.step("The IAM engine refused nothing it should have allowed", o):
                self.engine_refused_nothing()
        finally:
            with c.step("Stop the emulators", o):
                self.stop()
        return o


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m annex_sandbox.demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="condor-annex-demo-"))
    started = time.monotonic()
    demo = Demo(workdir)
    try:
        demo.run()
    except (DemoFailed, subprocess.SubprocessError, OSError) as failure:
        print(f"\ndemo FAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s: every step did what it said.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
