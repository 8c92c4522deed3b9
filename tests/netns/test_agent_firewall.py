"""The metadata firewall, proven for real inside a network namespace (docs/RULES.md, "Metadata firewall").

169.254.169.254 (and fd00:ec2::254 where IPv6 works) sit on the namespace's loopback with an
HTTP server behind them; after `condor-annex-ec2 firewall`, root still gets HTTP 200 and the
unprivileged `nobody` is rejected. Re-running adds no rule.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from condor_annex.agent.firewall import METADATA_IPV4, METADATA_IPV6

pytestmark = pytest.mark.netns

AGENT = Path(sys.executable).parent / "condor-annex-ec2"
PYTHON = "/usr/bin/python3"  # readable by nobody (a pyenv shim under /root is not)
NOBODY = 65534
_PROBE = """
import sys, urllib.request
host = sys.argv[1]
try:
    with urllib.request.urlopen(f"http://{host}/", timeout=3) as r:
        print(r.status)
except Exception as e:
    print(type(e).__name__, e)
    sys.exit(1)
"""


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for ip netns"
    for tool in ("ip", "iptables", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(
        ["ip", "netns", "add", "annex-probe"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"network namespaces unavailable: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "annex-probe"], check=False)
    return None


@dataclass
class Namespace:
    name: str
    ipv6: bool

    def exec(self, *command: str, uid: int | None = None) -> subprocess.CompletedProcess[str]:
        prefix = ["ip", "netns", "exec", self.name]
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        return subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=30, check=False
        )

    def probe(self, host: str, uid: int | None = None) -> subprocess.CompletedProcess[str]:
        return self.exec(PYTHON, "-c", _PROBE, host, uid=uid)

    def rules(self, tool: str) -> list[str]:
        listing = self.exec(tool, "-S")
        return [line for line in listing.stdout.splitlines() if line.startswith("-A")]


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[Namespace]:
    reason = _unavailable()
    if reason:
        print(f"SKIP firewall netns test: {reason}")
        pytest.skip(reason)
    name = f"annexfw-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(
            ["ip", "-n", name, "addr", "add", f"{METADATA_IPV4}/32", "dev", "lo"], check=True
        )
        ipv6 = (
            subprocess.run(
                ["ip", "-n", name, "addr", "add", f"{METADATA_IPV6}/128", "dev", "lo", "nodad"],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )
        (tmp_path / "www").mkdir()
        (tmp_path / "www" / "index.html").write_text("metadata\n")
        hosts = [METADATA_IPV4] + ([METADATA_IPV6] if ipv6 else [])
        for host in hosts:
            servers.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        name,
                        PYTHON,
                        "-m",
                        "http.server",
                        "80",
                        "--bind",
                        host,
                        "--directory",
                        str(tmp_path / "www"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        ns = Namespace(name, ipv6)
        for host in hosts:
            target = f"[{host}]" if ":" in host else host
            deadline = time.monotonic() + 10
            while ns.probe(target).returncode != 0:
                assert time.monotonic() < deadline, f"HTTP server on {host} never came up"
                time.sleep(0.1)
        yield ns
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", name], check=False)


def _firewall(ns: Namespace, root: Path) -> subprocess.CompletedProcess[str]:
    return ns.exec(str(AGENT), "firewall", "--root", str(root))


def test_root_reaches_metadata_and_nobody_is_rejected(namespace: Namespace, tmp_path: Path) -> None:
    assert namespace.probe(METADATA_IPV4, uid=NOBODY).stdout.strip() == "200"  # before
    done = _firewall(namespace, tmp_path / "root")
    assert done.returncode == 0, done.stderr
    assert namespace.probe(METADATA_IPV4).stdout.strip() == "200"
    refused = namespace.probe(METADATA_IPV4, uid=NOBODY)
    assert refused.returncode == 1 and "200" not in refused.stdout
    assert "ipv4_added=2" in done.stderr


def test_ipv6_metadata_address_is_fenced_too(namespace: Namespace, tmp_path: Path) -> None:
    if not namespace.ipv6 or shutil.which("ip6tables") is None:
        reason = "IPv6 or ip6tables unavailable in this kernel"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    done = _firewall(namespace, tmp_path / "root")
    assert done.returncode == 0, done.stderr
    host = f"[{METADATA_IPV6}]"
    assert namespace.probe(host).stdout.strip() == "200"
    assert namespace.probe(host, uid=NOBODY).returncode == 1


def test_rerun_adds_no_duplicate_rule(namespace: Namespace, tmp_path: Path) -> None:
    assert _firewall(namespace, tmp_path / "root").returncode == 0
    first = namespace.rules("iptables")
    again = _firewall(namespace, tmp_path / "root")
    assert again.returncode == 0, again.stderr
    assert namespace.rules("iptables") == first
    assert "ipv4_added=0 ipv4_present=2" in again.stderr
    assert sorted(first) == sorted(
        [
            f"-A OUTPUT -d {METADATA_IPV4}/32 -m owner ! --uid-owner 0 -j REJECT "
            "--reject-with icmp-port-unreachable",
            f"-A FORWARD -d {METADATA_IPV4}/32 -j REJECT --reject-with icmp-port-unreachable",
        ]
    )


def test_rules_are_persisted_for_reboots(namespace: Namespace, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert _firewall(namespace, root).returncode == 0
    saved = (root / "etc/sysconfig/iptables-annex").read_text()
    assert f"-I OUTPUT 1 -d {METADATA_IPV4} -m owner ! --uid-owner 0 -j REJECT" in saved
    # The saved file restores the same rules into a fresh namespace's tables.
    namespace.exec("iptables", "-F", "OUTPUT")
    namespace.exec("iptables", "-F", "FORWARD")
    restored = subprocess.run(
        ["ip", "netns", "exec", namespace.name, "iptables-restore", "--noflush"],
        input=saved,
        capture_output=True,
        text=True,
        check=False,
    )
    assert restored.returncode == 0, restored.stderr
    assert namespace.probe(METADATA_IPV4, uid=NOBODY).returncode == 1
