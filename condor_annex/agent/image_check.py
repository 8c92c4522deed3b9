"""`condor-annex-ec2 check-image`: which annex image requirements (docs/RULES.md, "Image requirements") a root filesystem meets.

Reads files only (no HTCondor, no systemd): the units under the root's systemd directories and
the HTCondor configuration in `/etc/condor/condor_config` plus `/etc/condor/config.d/*`. The
config reader is deliberately small: `NAME = value` assignments (last one wins, `$(NAME)`
expanded), with assignments inside `if`/`else` blocks counted as set.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from condor_annex import contract
from condor_annex.agent.root import Root

AGENT_UNIT = "condor-annex-ec2.service"
CONDOR_CONFIG = "/etc/condor/condor_config"
CONFIG_DIR = "/etc/condor/config.d"
_ASSIGNMENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=\s?(.*)$")
_MACRO = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.]*)\)")
# LOCAL_CONFIG_DIR_EXCLUDE_REGEXP's default: editor leftovers and package-manager files.
_EXCLUDED = re.compile(r"^((\..*)|(.*~)|(#.*)|(.*\.rpmsave)|(.*\.rpmnew)|(.*\.dpkg-.*))$")
_POWEROFF = re.compile(r"\b(shutdown\s+-h\s+now|poweroff|systemctl\s+poweroff)\b")

MUST = "MUST"
SHOULD = "SHOULD"


@dataclass(frozen=True)
class Requirement:
    name: str
    level: str
    met: bool
    detail: str


def _config_files(root: Root) -> list[Path]:
    files = []
    main = root.path(CONDOR_CONFIG)
    if main.is_file():
        files.append(main)
    directory = root.path(CONFIG_DIR)
    if directory.is_dir():
        files.extend(
            p for p in sorted(directory.iterdir()) if p.is_file() and not _EXCLUDED.match(p.name)
        )
    return files


def read_config(root: Root) -> dict[str, str]:
    """Macro name (upper-cased) → raw value, in HTCondor's file order (last assignment wins)."""
    values: dict[str, str] = {}
    for path in _config_files(root):
        pending = ""
        for raw in path.read_text(errors="replace").splitlines():
            line = pending + raw
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1]
                continue
            pending = ""
            if line.lstrip().startswith("#"):
                continue
            match = _ASSIGNMENT.match(line)
            if match:
                name, value = match.group(1).upper(), match.group(2).strip()
                values[name] = _expand(value, values, name)
    return values


def _expand(value: str, values: dict[str, str], own: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1).upper()
        return "" if name == own and name not in values else values.get(name, "")

    return _MACRO.sub(substitute, value)


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


def _unit_file(root: Root, unit: str) -> Optional[Path]:
    for directory in (root.systemd_dir, *root.systemd_lib_dirs):
        candidate = directory / unit
        if candidate.is_file():
            return candidate
    return None


def _unit_enabled(root: Root, unit: str) -> bool:
    return any(
        link.name == unit
        for pattern in ("*.wants", "*.requires")
        for directory in root.systemd_dir.glob(pattern)
        for link in directory.iterdir()
    )


def _check_unit(root: Root) -> Requirement:
    name = "agent-unit"
    path = _unit_file(root, AGENT_UNIT)
    if path is None:
        return Requirement(name, MUST, False, f"{AGENT_UNIT} not installed")
    text = path.read_text(errors="replace")
    wanted = {
        "Type=oneshot": re.search(r"^Type\s*=\s*oneshot\s*$", text, re.M),
        "After=network-online.target": re.search(r"^After\s*=.*network-online\.target", text, re.M),
        "Before=condor.service": re.search(r"^Before\s*=.*condor\.service", text, re.M),
    }
    missing = [k for k, found in wanted.items() if not found]
    if missing:
        return Requirement(name, MUST, False, f"{path.name} lacks {', '.join(missing)}")
    if not _unit_enabled(root, AGENT_UNIT):
        return Requirement(name, MUST, False, f"{AGENT_UNIT} installed but not enabled")
    return Requirement(name, MUST, True, f"{AGENT_UNIT} enabled, oneshot, before condor")


def _check_shutdown_script(root: Root, config: dict[str, str]) -> Requirement:
    name = "master-shutdown-script"
    value = config.get("DEFAULT_MASTER_SHUTDOWN_SCRIPT", "").strip()
    if not value:
        return Requirement(name, MUST, False, "DEFAULT_MASTER_SHUTDOWN_SCRIPT not set")
    script = root.path(value) if value.startswith("/") else None
    if script is None or not script.is_file() or script.is_symlink():
        return Requirement(name, MUST, False, f"{value} is not a regular file")
    info = script.stat()
    problems = []
    if info.st_uid != 0:
        problems.append(f"owned by uid {info.st_uid}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problems.append("group/world-writable")
    if not info.st_mode & stat.S_IXUSR:
        problems.append("not executable")
    if not _POWEROFF.search(script.read_text(errors="replace")):
        problems.append("does not run shutdown -h now")
    if problems:
        return Requirement(name, MUST, False, f"{value}: {', '.join(problems)}")
    return Requirement(name, MUST, True, f"{value} root-owned, runs shutdown -h now")


def check(root: Root) -> list[Requirement]:
    """Every requirement, met or not."""
    config = read_config(root)
    idle = config.get("STARTD_NOCLAIM_SHUTDOWN", "").strip()
    id_attr = contract.INSTANCE_ID_ATTRIBUTE
    advertised = [
        daemon
        for daemon in ("STARTD_ATTRS", "MASTER_ATTRS")
        if re.search(rf"\b{id_attr}\b", config.get(daemon, ""), re.I)
    ]
    forwarding = config.get("TCP_FORWARDING_HOST", "")
    integrity = config.get("SEC_DEFAULT_INTEGRITY", "").upper()
    encryption = config.get("SEC_DEFAULT_ENCRYPTION", "").upper()
    # `if defined EC2PublicIP` guards the assignment: without the agent's macros it is unset.
    forwarding_set = bool(forwarding) or contract.MACRO_PUBLIC_IP.upper() in _public_ip_guard(root)
    return [
        _check_unit(root),
        Requirement(
            "idle-shutdown",
            MUST,
            bool(idle),
            f"STARTD_NOCLAIM_SHUTDOWN = {idle}" if idle else "STARTD_NOCLAIM_SHUTDOWN not set",
        ),
        _check_shutdown_script(root, config),
        Requirement(
            "instance-id-advertised",
            SHOULD,
            len(advertised) == 2,
            f"{id_attr} in {', '.join(advertised) or 'neither STARTD_ATTRS nor MASTER_ATTRS'}",
        ),
        Requirement(
            "tcp-forwarding-host",
            SHOULD,
            forwarding_set,
            "TCP_FORWARDING_HOST set from the public IP"
            if forwarding_set
            else "TCP_FORWARDING_HOST not set",
        ),
        Requirement(
            "integrity-encryption",
            SHOULD,
            integrity == "REQUIRED" and encryption == "REQUIRED",
            f"SEC_DEFAULT_INTEGRITY = {integrity or 'unset'}, "
            f"SEC_DEFAULT_ENCRYPTION = {encryption or 'unset'}",
        ),
        Requirement(
            "encrypt-execute-directory",
            SHOULD,
            _truthy(config.get("ENCRYPT_EXECUTE_DIRECTORY")),
            f"ENCRYPT_EXECUTE_DIRECTORY = {config.get('ENCRYPT_EXECUTE_DIRECTORY', 'unset')}",
        ),
    ]


def _public_ip_guard(root: Root) -> set[str]:
    """Macros named in `if defined X` lines that guard a TCP_FORWARDING_HOST assignment."""
    guards: set[str] = set()
    for path in _config_files(root):
        current: Optional[str] = None
        for line in path.read_text(errors="replace").splitlines():
            match = re.match(r"^\s*if\s+defined\s+(\S+)", line, re.I)
            if match:
                current = match.group(1).upper()
            elif re.match(r"^\s*endif\b", line, re.I):
                current = None
            elif current and re.match(r"^\s*TCP_FORWARDING_HOST\s*=", line, re.I):
                guards.add(current)
    return guards


def all_musts_met(results: list[Requirement]) -> bool:
    return all(r.met for r in results if r.level == MUST)


def report(results: list[Requirement]) -> str:
    lines = [
        f"{r.level:<6} {'ok' if r.met else 'MISSING':<7} {r.name:<26} {r.detail}" for r in results
    ]
    verdict = (
        "annex-compatible (annex-ready: condor_annex adds nothing at boot)"
        if all_musts_met(results)
        else "NOT annex-compatible (condor_annex makes only a stock Amazon Linux 2023 image "
        "ready at first boot, through user data)"
    )
    lines.append(f"image: {verdict}")
    return "\n".join(lines)
