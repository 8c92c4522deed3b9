"""Firewall rule logic with a recorded command runner (the real thing runs in tests/netns/)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from typing import Optional

import pytest

from condor_annex.agent.firewall import (
    FAMILIES,
    METADATA_IPV4,
    METADATA_IPV6,
    Firewall,
    FirewallError,
    restore_file,
)


class FakeTables:
    """Answers like iptables: -S lists, -C finds, -I inserts."""

    def __init__(self, broken: Sequence[str] = ()) -> None:
        self.rules: set[tuple[str, ...]] = set()
        self.commands: list[list[str]] = []
        self.broken = set(broken)

    def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        command = list(command)
        self.commands.append(command)
        tool, action, rest = command[0], command[2], tuple(command[3:])
        if tool in self.broken:
            return subprocess.CompletedProcess(command, 3, "", "can't initialize table\n")
        if action == "-S":
            return subprocess.CompletedProcess(command, 0, "", "")
        if action == "-C":
            return subprocess.CompletedProcess(command, 0 if (tool, *rest) in self.rules else 1)
        if action == "-I":
            chain, spec = rest[0], rest[2:]
            self.rules.add((tool, chain, *spec))
            return subprocess.CompletedProcess(command, 0)
        raise AssertionError(command)


def _which(missing: Sequence[str] = ()) -> Callable[[str], Optional[str]]:
    return lambda tool: None if tool in missing else f"/usr/sbin/{tool}"


def test_rules_cover_output_and_forward_for_both_addresses() -> None:
    tables = FakeTables()
    Firewall(runner=tables, which=_which()).apply()
    assert (
        "iptables",
        "OUTPUT",
        "-d",
        METADATA_IPV4,
        "-m",
        "owner",
        "!",
        "--uid-owner",
        "0",
        "-j",
        "REJECT",
    ) in tables.rules
    assert ("iptables", "FORWARD", "-d", METADATA_IPV4, "-j", "REJECT") in tables.rules
    assert ("ip6tables", "FORWARD", "-d", METADATA_IPV6, "-j", "REJECT") in tables.rules
    assert len(tables.rules) == 4


def test_second_apply_inserts_nothing() -> None:
    tables = FakeTables()
    Firewall(runner=tables, which=_which()).apply()
    tables.commands.clear()
    results = Firewall(runner=tables, which=_which()).apply()
    assert [c[2] for c in tables.commands if c[2] == "-I"] == []
    assert [(r.added, r.present) for r in results] == [(0, 2), (0, 2)]


def test_rules_are_inserted_first_in_the_chain() -> None:
    tables = FakeTables()
    Firewall(runner=tables, which=_which()).apply()
    inserts = [c for c in tables.commands if c[2] == "-I"]
    assert all(c[4] == "1" and c[1] == "-w" for c in inserts)


def test_missing_ip6tables_is_logged_and_skipped() -> None:
    results = Firewall(runner=FakeTables(), which=_which(["ip6tables"])).apply()
    assert results[1].skipped == "ip6tables not installed"
    assert results[0].added == 2


def test_unusable_ip6tables_is_skipped() -> None:
    results = Firewall(runner=FakeTables(broken=["ip6tables"]), which=_which()).apply()
    assert results[1].skipped is not None and "can't initialize" in results[1].skipped


def test_missing_iptables_is_an_error() -> None:
    with pytest.raises(FirewallError, match="iptables not installed"):
        Firewall(runner=FakeTables(), which=_which(["iptables"])).apply()


def test_restore_file_is_iptables_restore_input() -> None:
    text = restore_file(FAMILIES[0])
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines[0] == "*filter" and lines[-1] == "COMMIT"
    assert len([line for line in lines if line.startswith("-I ")]) == 2
