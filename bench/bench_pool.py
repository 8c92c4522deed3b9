"""Boot-to-join with the real HTCondor daemons: how long until an annex's slots are in the pool.

For each wave size (quick: 1 and 10 instances; full: also 50) one annex is made with the real
`create_annex` against the local AWS (in its own process), pointed at a real central manager
(annex_sandbox/pool.py). Every instance of the wave is then registered with the IMDS emulator
and its boot agent (`condor-annex-ec2 --root`) started at the same moment; as soon as an agent
exits 0 that instance's master + startd start from exactly what the agent installed, as systemd
starts condor.service after the agent on a real instance. The collector is polled
(`condor_status`, every POLL_SECONDS) for each instance's startd ad.

Reported per wave: boot-to-join per instance (agent start → slot first seen in the collector;
median and p90), and create-to-all-visible (`create_annex` called → the last slot seen). Not
included: EC2's own launch and OS boot (the emulator launches at once), which on AWS add tens of
seconds before the agent starts. Resolution: POLL_SECONDS plus one `condor_status` call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from bench.harness import Context, Result, Skipped, bar_pair
from bench.stats import summarize
from bench.world import register_instances, running_aws, running_imds, scratch_dir

POLL_SECONDS = 0.25
INTROSPECTION = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Resource": "*",
         "Action": ["ec2:DescribeInstances", "ec2:DescribeSpotFleetRequests", "ec2:DescribeFleets"]},
        {"Effect": "Allow", "Resource": "*",
         "Action": ["iam:GetInstanceProfile", "iam:ListRolePolicies", "iam:GetRolePolicy",
                    "iam:ListAttachedRolePolicies"]},
    ],
}  # fmt: skip
AGENT_IMDS_TIMEOUT = "60"
OWNER = "bench"


@dataclass
class Booting:
    """One instance of a wave: its agent, then its daemons, and when each thing happened."""

    instance_id: str
    root: Path
    agent: subprocess.Popen[str]
    agent_started: float
    node: Any = None
    agent_exit: Optional[int] = None
    agent_done: float = 0.0
    seen: float = 0.0


@dataclass
class Wave:
    instances: int
    create_s: float
    boot_to_join_s: list[float] = field(default_factory=list)
    agent_s: list[float] = field(default_factory=list)
    create_to_all_visible_s: float = float("nan")
    failures: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        joined = summarize(self.boot_to_join_s).as_dict() if self.boot_to_join_s else None
        agent = summarize(self.agent_s).as_dict() if self.agent_s else None
        return {
            "instances": self.instances,
            "joined": len(self.boot_to_join_s),
            "create_s": round(self.create_s, 3),
            "boot_to_join": joined,
            "agent": agent,
            "create_to_all_visible_s": round(self.create_to_all_visible_s, 3),
            "failures": self.failures,
        }


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _visible(manager: Any, annex: str) -> set[str]:
    result = manager.tool(
        "condor_status", "-startd", "-af", "EC2InstanceID",
        "-constraint", f'AnnexName =?= "{annex}"', timeout=30,
    )  # fmt: skip
    if result.returncode != 0:
        return set()
    return {line.strip().strip('"') for line in result.stdout.splitlines() if line.strip()}


def _wave(
    size: int,
    *,
    aws: Any,
    imds: Any,
    manager: Any,
    dist: Any,
    world: dict[str, Any],
    workdir: Path,
    nodes: list[Any],
) -> Wave:
    """One wave; every master it starts is appended to `nodes` at once (the caller stops them,
    also when the wave fails half-way)."""
    from annex_sandbox.pool import AGENT_PROGRAM, ExecuteNode, agent_env, install_image_config
    from condor_annex.create import create_annex

    annex = f"join{size}x{os.getpid() % 10000}"
    request = world["request"](annex, size)
    began = time.perf_counter()
    created = create_annex(
        request, settings=world["settings"], clients=world["clients"], hooks=world["hooks"]()
    )
    wave = Wave(size, time.perf_counter() - began)
    # Reached on loopback: a public IP would become TCP_FORWARDING_HOST (see docs/POOL.md).
    endpoints = register_instances(aws, imds, list(created.instance_ids), public_ip=False)
    bin_dir = Path(sys.executable).parent
    booting: list[Booting] = []
    for instance_id in created.instance_ids:
        root = workdir / instance_id
        root.mkdir(parents=True)
        install_image_config(root)
        env = agent_env(
            aws_endpoint=aws.endpoint_url, imds_endpoint=endpoints[instance_id], workdir=root
        )
        # The emulator shares the CPUs with every booting process (see RemoteAws.instance_env).
        env.update(AWS_METADATA_SERVICE_NUM_ATTEMPTS="3", AWS_METADATA_SERVICE_TIMEOUT="10")
        started = time.perf_counter()
        agent = subprocess.Popen(
            [str(bin_dir / AGENT_PROGRAM), "--root", str(root), "--no-firewall",
             "--no-poweroff", "--imds-timeout", AGENT_IMDS_TIMEOUT],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        booting.append(Booting(instance_id, root, agent, started))
    deadline = time.perf_counter() + 120 + 4 * size
    waiting = {b.instance_id: b for b in booting}
    while waiting and time.perf_counter() < deadline:
        for one in booting:
            if one.agent_exit is None and one.agent.poll() is not None:
                one.agent_exit = one.agent.returncode
                one.agent_done = time.perf_counter()
                if one.agent_exit == 0:
                    one.node = ExecuteNode.create(dist, one.root, name=one.instance_id)
                    nodes.append(one.node.start())
                else:
                    tail = (one.agent.stderr.read() if one.agent.stderr else "")[-300:]
                    wave.failures.append(f"{one.instance_id}: agent exit {one.agent_exit}: {tail}")
                    waiting.pop(one.instance_id, None)
        now = time.perf_counter()
        for instance_id in _visible(manager, annex) & set(waiting):
            waiting.pop(instance_id).seen = now
        time.sleep(POLL_SECONDS)
    for instance_id in waiting:
        wave.failures.append(f"{instance_id}: no slot in the collector before the deadline")
    for one in booting:
        if one.agent.poll() is None:
            one.agent.kill()
        one.agent.wait()
        if one.agent.stderr is not None:
            one.agent.stderr.close()
        if one.agent_exit == 0:
            wave.agent_s.append(one.agent_done - one.agent_started)
        if one.seen:
            wave.boot_to_join_s.append(one.seen - one.agent_started)
    if not wave.failures:
        wave.create_to_all_visible_s = max(b.seen for b in booting) - began
    for instance_id in created.instance_ids:
        imds.remove_instance(instance_id)
    return wave


def _world(aws: Any, workdir: Path, manager: Any) -> dict[str, Any]:
    """Settings and clients of a setup made in the local AWS, and how to ask for one annex."""
    from condor_annex.annex_settings import AnnexClients, Settings
    from condor_annex.create import CreateHooks
    from condor_annex.create_request import CreateRequest
    from condor_annex.images import READY_IMAGE_TAG
    from tests.integration.annex_env import load_connectivity_handler, make_setup

    outputs = make_setup(aws)
    # The stack's instance role also lets an instance describe itself (stacks/instance_role.py);
    # the local AWS here enforces IAM, so the replica carries the same grant.
    aws.client("iam").put_role_policy(
        RoleName="annex-instance",
        PolicyName="HTCondorAnnexIntrospection",
        PolicyDocument=json.dumps(INTROSPECTION),
    )
    settings = Settings.from_outputs(outputs, region=aws.region)
    clients = AnnexClients.from_session(region=aws.region)
    ami = sorted(i["ImageId"] for i in clients.ec2.describe_images(Owners=["amazon"])["Images"])[0]
    # Stands for an annex-ready image (built with image/install-al2023.sh): no first-boot script.
    clients.ec2.create_tags(Resources=[ami], Tags=[{"Key": READY_IMAGE_TAG, "Value": "bench"}])
    handler = load_connectivity_handler()

    def probe(host: str, port: int) -> dict[str, Any]:
        return handler({"host": host, "port": port, "timeout": 2})

    def request(name: str, count: int) -> Any:
        return CreateRequest(
            annex_name=name, collector=manager.address, count=count, ami_id=ami, owner=OWNER,
            signing_key_file=manager.key_file, trust_domain=manager.trust_domain,
        )  # fmt: skip

    return {
        "settings": settings,
        "clients": clients,
        "request": request,
        "hooks": lambda: CreateHooks(connectivity_probe=probe, price_cache_dir=workdir / "prices"),
    }


def run(ctx: Context) -> Result:
    from annex_sandbox import htcondor_dist
    from annex_sandbox.pool import CentralManager

    found = htcondor_dist.find()
    if isinstance(found, htcondor_dist.Missing):
        raise Skipped(f"real HTCondor daemons unavailable: {found.reason}")
    htcondor_dist.condor_ids()
    sizes: tuple[int, ...] = ctx.pick((1, 10), (1, 10, 50))
    result = Result("pool")
    workdir = scratch_dir("pool")
    # Daemons run as `condor` and must reach their state under the scratch directory.
    for directory in (workdir, workdir.parent):
        directory.chmod(0o711)
    waves: list[Wave] = []
    with (
        running_aws(fleet_tag_delay=0.2) as aws,
        running_imds() as imds,
        _environment(aws.admin_env()),
    ):
        manager = CentralManager.create(found, workdir / "cm")
        manager.start()
        nodes: list[Any] = []
        try:
            world = _world(aws, workdir, manager)
            for size in sizes:
                wave = _wave(
                    size, aws=aws, imds=imds, manager=manager, dist=found, world=world,
                    workdir=workdir / f"wave{size}", nodes=nodes,
                )  # fmt: skip
                while nodes:
                    nodes.pop().stop()
                waves.append(wave)
                for failure in wave.failures:
                    result.fail(f"{size} instances: {failure}")
                if wave.boot_to_join_s:
                    joined = summarize(wave.boot_to_join_s)
                    result.say(
                        f"{size:>3} instances: boot-to-join median {joined.median:.1f} s, "
                        f"p90 {joined.p90:.1f} s; create to all visible "
                        f"{wave.create_to_all_visible_s:.1f} s (create itself {wave.create_s:.1f} s)"
                    )
        finally:
            for node in nodes:
                node.stop()
            manager.stop()
    result.data = {
        "poll_seconds": POLL_SECONDS,
        "htcondor": str(found.prefix),
        "waves": [w.row() for w in waves],
    }
    joined_waves = [w for w in waves if w.boot_to_join_s]
    if joined_waves:
        bar_pair(
            ctx, result, "pool", "Boot-to-join with real HTCondor daemons",
            [f"{w.instances} booting" for w in joined_waves],
            {
                "boot-to-join median": [summarize(w.boot_to_join_s).median for w in joined_waves],
                "boot-to-join p90": [summarize(w.boot_to_join_s).p90 for w in joined_waves],
                "create to all visible": [w.create_to_all_visible_s for w in joined_waves],
            },
            "seconds",
        )  # fmt: skip
    return result
