"""A real HTCondor pool on 127.0.0.1 for tests, the demo and the benchmarks.

`CentralManager`: collector, negotiator and schedd under one master. The collector accepts startd
and master ads only with IDTOKENs (FS is allowed for WRITE, so local users can submit, and for
ADMINISTRATOR, so root on this host can administer — shared/htcondor/README.md fact 8). Its pool
signing key exists before the collector starts (fact 2); the CLI mints annex tokens from it.

`ExecuteNode`: one "annex instance": a master and a startd whose configuration is exactly what
the boot agent installed under the instance's `--root` (the image's `10-annex-image.config`, the
agent's `00-annex-instance.config`, the annex tarball's `50-annex.config` and token). The host
part of the configuration says only what a real host would know by itself: where HTCondor is
installed, where its state lives, which loopback port it listens on (`USE_SHARED_PORT`, fact 3),
its name (real instances have distinct host names; here every instance shares one host) and the
test world's power-off hook in place of `shutdown -h now`. It has no pool signing key and no
other token: the annex token is its only credential.

Every daemon tree is started in the foreground (`condor_master -f`) as our child, so it is
stopped by its pid (SIGQUIT: fast shutdown) and reaped (fact 5).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from annex_sandbox.htcondor_dist import Distribution, Ids, condor_ids, ensure_user

SCRAMBLE = bytes((0xDE, 0xAD, 0xBE, 0xEF))
IMAGE_CONFIG = Path(__file__).resolve().parents[1] / "image/condor/config.d/10-annex-image.config"
STATE_DIRS = ("log", "spool", "execute", "lock", "run")
POWEROFF_LOG = "poweroff.log"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_pool_signing_key(path: Path) -> None:
    """A POOL key file as HTCondor stores it: random bytes XOR-scrambled with DE AD BE EF."""
    key = secrets.token_bytes(32)
    path.write_bytes(bytes(b ^ SCRAMBLE[i % 4] for i, b in enumerate(key)))
    path.chmod(0o600)


def _state_dirs(local_dir: Path, ids: Ids) -> None:
    local_dir.mkdir(parents=True, exist_ok=True)
    local_dir.chmod(0o755)
    for name in STATE_DIRS:
        directory = local_dir / name
        directory.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(directory, ids.uid, ids.gid)


def _traversable(path: Path) -> None:
    """Let `condor` and job users reach `path` (pytest's tmp dirs are 0700)."""
    for parent in [path, *path.parents]:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode & 0o777
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@dataclass
class Daemons:
    """A `condor_master -f` we started, with its config."""

    dist: Distribution
    config_file: Path
    local_dir: Path
    process: Optional[subprocess.Popen[bytes]] = None

    def env(self, extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
        """The environment for HTCondor tools talking as this host."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("_CONDOR_", "CONDOR_"))}
        env.update(CONDOR_CONFIG=str(self.config_file), PATH=self.dist.path_env())
        env.update(extra or {})
        return env

    def start_master(self) -> None:
        log = (self.local_dir / "master.stdout").open("ab")
        self.process = subprocess.Popen(
            [str(self.dist.program("condor_master")), "-f"],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    @property
    def pid(self) -> Optional[int]:
        return None if self.process is None else self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, timeout: float) -> bool:
        """True when the master has exited within `timeout` seconds."""
        if self.process is None:
            return True
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, timeout: float = 30) -> None:
        """SIGQUIT (fast shutdown) to our master; SIGKILL to its session if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            if not self.wait_exit(timeout):
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def tool(
        self, name: str, *args: str, timeout: float = 30, env: Optional[Mapping[str, str]] = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.dist.program(name)), *args],
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def child_pid(self, program: str) -> Optional[int]:
        """The pid of the daemon `program` (e.g. condor_startd) our master runs, if any."""
        if self.process is None:
            return None
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)
                command = fields[0].split("(", 1)[1]
                parent = int(fields[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == self.process.pid and command == program[:15]:
                return int(stat.parent.name)
        return None

    def log_text(self, name: str) -> str:
        path = self.local_dir / "log" / name
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class CentralManager(Daemons):
    """Collector + negotiator + schedd, IDTOKEN-only for daemons that advertise."""

    trust_domain: str = "annex.test.pool"
    port: int = 0
    key_file: Path = field(init=False)
    ids: Ids = field(init=False)

    @classmethod
    def create(
        cls,
        dist: Distribution,
        workdir: Path,
        *,
        trust_domain: str = "annex.test.pool",
        negotiator_interval: int = 2,
    ) -> CentralManager:
        ids = condor_ids()
        workdir.mkdir(parents=True, exist_ok=True)
        _traversable(workdir)
        local_dir = workdir / "cm"
        _state_dirs(local_dir, ids)
        for secret_dir in ("passwords.d", "tokens.d"):
            (local_dir / secret_dir).mkdir(mode=0o700, exist_ok=True)
        manager = cls(
            dist=dist,
            config_file=workdir / "cm.config",
            local_dir=local_dir,
            trust_domain=trust_domain,
            port=free_port(),
        )
        manager.ids = ids
        manager.key_file = local_dir / "passwords.d" / "POOL"
        write_pool_signing_key(manager.key_file)
        manager.config_file.write_text(manager._config(negotiator_interval))
        return manager

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _config(self, negotiator_interval: int) -> str:
        d = self.local_dir
        lines = [
            "# Central manager of the condor_annex test world (annex_sandbox/pool.py).",
            *self.dist.config_lines(),
            f"LOCAL_DIR = {d}",
            *(f"{name.upper()} = $(LOCAL_DIR)/{name}" for name in STATE_DIRS),
            f"CONDOR_IDS = {self.ids.condor_ids}",
            "CONDOR_HOST = 127.0.0.1",
            f"COLLECTOR_HOST = {self.address}",
            "NETWORK_INTERFACE = 127.0.0.1",
            "BIND_ALL_INTERFACES = False",
            "USE_SHARED_PORT = False",
            "DAEMON_LIST = MASTER, COLLECTOR, NEGOTIATOR, SCHEDD",
            "MASTER_NAME = cm",
            f"TRUST_DOMAIN = {self.trust_domain}",
            f"UID_DOMAIN = {self.trust_domain}",
            f"FILESYSTEM_DOMAIN = {self.trust_domain}",
            # HTCondor's recommended security: condor_pool@* may advertise and even administer;
            # what keeps an annex token to READ + ADVERTISE_* is the token's own scope.
            "use SECURITY : RECOMMENDED_V9_0",
            f"SEC_PASSWORD_DIRECTORY = {d}/passwords.d",
            f"SEC_TOKEN_POOL_SIGNING_KEY_FILE = {self.key_file}",
            f"SEC_TOKEN_SYSTEM_DIRECTORY = {d}/tokens.d",
            f"SEC_TOKEN_DIRECTORY = {d}/tokens.d",
            "SEC_DEFAULT_AUTHENTICATION_METHODS = IDTOKENS",
            # Local users submit and root administers through FS; on one host FS would otherwise
            # let an execute node's daemons in without their token (fact 8).
            "SEC_WRITE_AUTHENTICATION_METHODS = FS, IDTOKENS",
            "SEC_ADMINISTRATOR_AUTHENTICATION_METHODS = FS, IDTOKENS",
            "SEC_ADVERTISE_STARTD_AUTHENTICATION_METHODS = IDTOKENS",
            "SEC_ADVERTISE_MASTER_AUTHENTICATION_METHODS = IDTOKENS",
            "SEC_CLIENT_AUTHENTICATION_METHODS = FS, IDTOKENS",
            f"NEGOTIATOR_INTERVAL = {negotiator_interval}",
            "NEGOTIATOR_MIN_INTERVAL = 1",
            "NEGOTIATOR_CYCLE_DELAY = 1",
            f"SCHEDD_INTERVAL = {negotiator_interval}",
            "UPDATE_INTERVAL = 5",
            "MASTER_UPDATE_INTERVAL = 5",
            "SHADOW_QUEUE_UPDATE_INTERVAL = 5",
            "JOB_START_DELAY = 0",
            "",
        ]
        return "\n".join(lines)

    def start(self, timeout: float = 60) -> CentralManager:
        self.start_master()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"central manager master exited: {self.log_text('MasterLog')}")
            if self._daemons_listed():
                return self
            time.sleep(0.2)
        raise TimeoutError("the central manager's collector and schedd did not come up")

    def submit_as(self, user: str, workdir: Path, description: str) -> int:
        """`condor_submit` as the ordinary `user` (FS authentication) from `workdir`; cluster id.

        `workdir` is created, owned by the user, for the job's log and output files.
        """
        ids = ensure_user(user, home=True)
        workdir.mkdir(parents=True, exist_ok=True)
        _traversable(workdir.parent)
        os.chown(workdir, ids.uid, ids.gid)
        submit_file = workdir / "job.sub"
        submit_file.write_text(description)
        os.chown(submit_file, ids.uid, ids.gid)
        result = subprocess.run(
            [str(self.dist.program("condor_submit")), "-terse", str(submit_file)],
            env={**self.env(), "HOME": str(workdir)},
            cwd=workdir,
            user=ids.uid,
            group=ids.gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"condor_submit as {user} failed: {result.stderr.strip()}")
        return int(result.stdout.strip().split(".", 1)[0])

    def job(self, cluster: int) -> Optional[dict[str, Any]]:
        """The job's ad from the queue, else from the history; None when neither has it."""
        for tool in ("condor_q", "condor_history"):
            args = [str(cluster), "-json"] + (["-allusers"] if tool == "condor_q" else [])
            result = self.tool(tool, *args, timeout=20)
            text = result.stdout.strip()
            if result.returncode == 0 and text:
                ads: list[dict[str, Any]] = json.loads(text)
                if ads:
                    return ads[0]
        return None

    def _daemons_listed(self) -> bool:
        result = self.tool("condor_status", "-schedd", "-af", "Name", timeout=10)
        return result.returncode == 0 and bool(result.stdout.strip())

    def query(
        self, kind: str = "-startd", constraint: Optional[str] = None, *, timeout: float = 15
    ) -> list[dict[str, Any]]:
        """Ads from the real collector (`condor_status -json`)."""
        args = [kind, "-json"]
        if constraint:
            args += ["-constraint", constraint]
        result = self.tool("condor_status", *args, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"condor_status failed: {result.stderr.strip()}")
        text = result.stdout.strip()
        ads: list[dict[str, Any]] = json.loads(text) if text else []
        return ads

    def wait_for(
        self,
        constraint: str,
        *,
        kind: str = "-startd",
        count: int = 1,
        timeout: float = 60,
        absent: bool = False,
    ) -> list[dict[str, Any]]:
        """Poll the collector until `count` ads match (or, with `absent`, none do)."""
        deadline = time.monotonic() + timeout
        ads: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            ads = self.query(kind, constraint)
            if (not ads) if absent else len(ads) >= count:
                return ads
            time.sleep(0.3)
        want = "none" if absent else str(count)
        raise TimeoutError(f"{want} {kind} ads for {constraint!r} within {timeout} s; got {ads}")


@dataclass
class ExecuteNode(Daemons):
    """An annex instance's master + startd, configured by what its boot agent installed."""

    root: Path = Path("/nonexistent")
    name: str = ""
    shared_port: int = 0

    @classmethod
    def create(
        cls,
        dist: Distribution,
        root: Path,
        *,
        name: str,
        update_interval: int = 5,
        extra_host_config: Sequence[str] = (),
    ) -> ExecuteNode:
        """A node for the instance whose filesystem is `root` (already booted by the agent)."""
        ids = condor_ids()
        _traversable(root)
        local_dir = root / "var/lib/condor"
        _state_dirs(local_dir, ids)
        node = cls(
            dist=dist,
            config_file=root / "etc/condor/condor_config",
            local_dir=local_dir,
            root=root,
            name=name,
            shared_port=free_port(),
        )
        hook = node.write_poweroff_hook()
        lines = [
            "# The host part of an annex instance's HTCondor config (annex_sandbox/pool.py):",
            "# install paths, state dirs, the loopback port and the host's name. Everything",
            "# about the pool and the annex comes from config.d, as the boot agent left it.",
            *dist.config_lines(),
            f"LOCAL_DIR = {local_dir}",
            *(f"{n.upper()} = $(LOCAL_DIR)/{n}" for n in STATE_DIRS),
            f"CONDOR_IDS = {ids.condor_ids}",
            # What the HTCondor package installs on the image (00-htcondor-9.0.config).
            "use SECURITY : RECOMMENDED_V9_0",
            "NETWORK_INTERFACE = 127.0.0.1",
            "BIND_ALL_INTERFACES = False",
            "USE_SHARED_PORT = True",
            f"SHARED_PORT_PORT = {node.shared_port}",
            # Real instances have distinct host names; on one host the names must differ.
            f"MASTER_NAME = {name}",
            f"STARTD_NAME = {name}",
            f"UID_DOMAIN = {name}.annex.invalid",
            f"FILESYSTEM_DOMAIN = {name}.annex.invalid",
            # No pool signing key and no system tokens here: the annex token is all it has.
            f"SEC_PASSWORD_DIRECTORY = {root}/etc/condor/passwords.d",
            f"SEC_TOKEN_POOL_SIGNING_KEY_FILE = {root}/etc/condor/passwords.d/POOL",
            f"SEC_TOKEN_SYSTEM_DIRECTORY = {root}/etc/condor/tokens.d",
            "NUM_CPUS = 1",
            "MEMORY = 512",
            f"UPDATE_INTERVAL = {update_interval}",
            f"MASTER_UPDATE_INTERVAL = {update_interval}",
            *extra_host_config,
            f"LOCAL_CONFIG_DIR = {root}/etc/condor/config.d",
            # Read after config.d: the test world's stand-in for the image's power-off script.
            f"LOCAL_CONFIG_FILE = {root}/etc/condor/test-world.config",
            "",
        ]
        node.config_file.parent.mkdir(parents=True, exist_ok=True)
        node.config_file.write_text("\n".join(lines))
        (root / "etc/condor/test-world.config").write_text(
            "# The image's master-shutdown script runs `shutdown -h now`; this host records it.\n"
            f"DEFAULT_MASTER_SHUTDOWN_SCRIPT = {hook}\n"
            # No ecryptfs/LUKS on the test host; an AL2023 annex image has it.
            "ENCRYPT_EXECUTE_DIRECTORY = False\n"
        )
        return node

    def write_poweroff_hook(self) -> Path:
        """A root-owned script (the master runs it as root) that records each power-off."""
        hook = self.root / "usr/libexec/condor-annex/poweroff-recorder"
        hook.parent.mkdir(parents=True, exist_ok=True)
        hook.write_text(f'#!/bin/sh\necho "poweroff $(date +%s.%N)" >> {self.poweroff_log}\n')
        hook.chmod(0o755)
        return hook

    @property
    def poweroff_log(self) -> Path:
        return self.root / POWEROFF_LOG

    @property
    def poweroffs(self) -> int:
        """How many times the power-off hook ran."""
        if not self.poweroff_log.exists():
            return 0
        return len(self.poweroff_log.read_text().splitlines())

    def start(self) -> ExecuteNode:
        self.start_master()
        return self


def install_image_config(root: Path) -> None:
    """What an annex-compatible image has in config.d before the agent runs."""
    config_d = root / "etc/condor/config.d"
    config_d.mkdir(parents=True, exist_ok=True)
    shutil.copy2(IMAGE_CONFIG, config_d / IMAGE_CONFIG.name)


AGENT_PROGRAM = "condor-annex-ec2"


def agent_env(*, aws_endpoint: str, imds_endpoint: str, workdir: Path) -> dict[str, str]:
    """What an instance's boot agent sees: the local AWS and its own metadata service only."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "CONDOR_", "_CONDOR_")) and k.lower() != "http_proxy"
    }
    env.update(
        AWS_ENDPOINT_URL=aws_endpoint,
        AWS_EC2_METADATA_SERVICE_ENDPOINT=imds_endpoint,
        # No credentials but the instance role's, from the metadata service.
        AWS_CONFIG_FILE=str(workdir / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(workdir / "no-aws-credentials"),
    )
    return env


def start_boot_agent(
    root: Path, *, aws_endpoint: str, imds_endpoint: str, bin_dir: Path, extra: Sequence[str] = ()
) -> subprocess.Popen[str]:
    """The real `condor-annex-ec2 --root ROOT` for one emulated instance (image config first)."""
    install_image_config(root)
    return subprocess.Popen(
        [
            str(bin_dir / AGENT_PROGRAM),
            "--root",
            str(root),
            "--no-firewall",
            "--no-poweroff",
            "--imds-timeout",
            "30",
            *extra,
        ],
        env=agent_env(aws_endpoint=aws_endpoint, imds_endpoint=imds_endpoint, workdir=root),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_refresh_agent(
    root: Path,
    *,
    aws_endpoint: str,
    imds_endpoint: str,
    bin_dir: Path,
    node: ExecuteNode,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """The real `condor-annex-ec2 refresh --root ROOT` for one booted instance, as its timer runs
    it; its `condor_reconfig` talks to that instance's own master (its CONDOR_CONFIG)."""
    env = agent_env(aws_endpoint=aws_endpoint, imds_endpoint=imds_endpoint, workdir=root)
    env["CONDOR_CONFIG"] = str(node.config_file)
    return subprocess.run(
        [
            str(bin_dir / AGENT_PROGRAM),
            "refresh",
            "--root",
            str(root),
            "--reconfig-command",
            str(node.dist.program("condor_reconfig")),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
