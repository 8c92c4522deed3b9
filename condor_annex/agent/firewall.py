"""Fence the instance metadata service off from every non-root process.

Jobs must not borrow the instance's credentials or fetch their own copy of the pool tokens
(docs/RULES.md, "Metadata firewall"). OUTPUT rejects non-root owners (the `owner` match exists only on OUTPUT); FORWARD
rejects everything bound for the metadata addresses, so containers on a bridge are fenced too.
IPv6 (`fd00:ec2::254`, Nitro instances) gets the same rules where ip6tables exists.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from condor_annex.agent.files import CONFIG_FILE_MODE, write_atomic

METADATA_IPV4 = "169.254.169.254"
METADATA_IPV6 = "fd00:ec2::254"


@dataclass(frozen=True)
class Rule:
    chain: str
    spec: tuple[str, ...]

    def command(self, tool: str, action: str) -> list[str]:
        position = ["1"] if action == "-I" else []
        # -w: wait for the xtables lock instead of failing when another tool holds it at boot.
        return [tool, "-w", action, self.chain, *position, *self.spec]


def rules_for(address: str) -> list[Rule]:
    """The two rules for one metadata address."""
    return [
        Rule("OUTPUT", ("-d", address, "-m", "owner", "!", "--uid-owner", "0", "-j", "REJECT")),
        Rule("FORWARD", ("-d", address, "-j", "REJECT")),
    ]


@dataclass(frozen=True)
class Family:
    name: str
    tool: str
    address: str
    required: bool

    @property
    def rules(self) -> list[Rule]:
        return rules_for(self.address)


FAMILIES = (
    Family("ipv4", "iptables", METADATA_IPV4, required=True),
    Family("ipv6", "ip6tables", METADATA_IPV6, required=False),
)

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_command(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, check=False)


class FirewallError(Exception):
    pass


@dataclass
class FamilyResult:
    family: str
    added: int = 0
    present: int = 0
    skipped: Optional[str] = None


@dataclass
class Firewall:
    """Idempotent rule installation: `-C` first, `-I ... 1` only when the rule is missing."""

    runner: Runner = run_command
    which: Callable[[str], Optional[str]] = shutil.which
    families: tuple[Family, ...] = FAMILIES
    results: list[FamilyResult] = field(default_factory=list)

    def _available(self, family: Family) -> Optional[str]:
        """None when the family's tool works, else why not."""
        if self.which(family.tool) is None:
            return f"{family.tool} not installed"
        probe = self.runner([family.tool, "-w", "-S", "OUTPUT"])
        if probe.returncode != 0:
            lines = probe.stderr.strip().splitlines()
            return f"{family.tool} unusable: {lines[-1] if lines else probe.returncode}"
        return None

    def apply(self) -> list[FamilyResult]:
        self.results = []
        for family in self.families:
            result = FamilyResult(family.name)
            self.results.append(result)
            unavailable = self._available(family)
            if unavailable is not None:
                if family.required:
                    raise FirewallError(unavailable)
                result.skipped = unavailable
                continue
            for rule in family.rules:
                check = self.runner(rule.command(family.tool, "-C"))
                if check.returncode == 0:
                    result.present += 1
                    continue
                insert = self.runner(rule.command(family.tool, "-I"))
                if insert.returncode != 0:
                    raise FirewallError(
                        f"{' '.join(rule.command(family.tool, '-I'))}: {insert.stderr.strip()}"
                    )
                result.added += 1
        return self.results


def planned_commands(families: tuple[Family, ...] = FAMILIES) -> list[str]:
    return [" ".join(r.command(f.tool, "-I")) for f in families for r in f.rules]


def restore_file(family: Family) -> str:
    """The family's rules in `iptables-restore --noflush` format."""
    lines = [
        "# Written by condor-annex-ec2: no non-root process may reach the instance metadata",
        f"# service. Load with: {family.tool}-restore --noflush < this-file",
        "*filter",
        *(" ".join(["-I", rule.chain, "1", *rule.spec]) for rule in family.rules),
        "COMMIT",
        "",
    ]
    return "\n".join(lines)


def persist(paths: dict[str, Path], privileged: bool) -> list[Path]:
    """Write each family's rules file (keyed by family name) for boot-time restores."""
    written = []
    for family in FAMILIES:
        path = paths.get(family.name)
        if path is not None:
            write_atomic(path, restore_file(family).encode(), CONFIG_FILE_MODE, privileged)
            written.append(path)
    return written
