"""`config-<annex>.tar.gz`: the HTCondor configuration and token an annex instance boots with.

The boot agent unpacks it into `/etc/condor/config.d` (this CLI's layout, docs/AGENT.md):

- `contract.TARBALL_CONFIG_FILE` (0644): collector, annex identity attributes, the START policy,
  idle shutdown and the security settings (see `render_annex_config`);
- `contract.TARBALL_TOKEN_FILE` (0600): the annex's IDTOKEN;
- the `-config-dir` files (0644), each as `60-<name>` so it sorts after the annex's own file.

The archive is deterministic (fixed mtime, owner root:root 0:0, fixed order, gzip without a
timestamp), so the same inputs always give the same bytes.

Policy (documented in docs/TOKENS.md): an annex only ever runs jobs of its owners (`-owner`, a
list; `-no-owner` drops this clause, as in the old tool), and of those only jobs that opt in — `+TargetAnnexName = "<annex>"` (this annex) or `+MayUseAWS = True` (any of
the owner's annexes, the reference tool's convention). A custom START expression can only narrow
that further. Values that come from users (owner, trust domain) are escaped for the ClassAd
string they sit in and for HTCondor's `$(...)` macro expansion, so they can never add config.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

from condor_annex import contract
from condor_annex.collector import parse_collector
from condor_annex.errors import InvalidInput
from condor_annex.inputs import narrowed_start

CONFIG_FILE_MODE = 0o644
TOKEN_FILE_MODE = 0o600
IS_ANNEX_ATTRIBUTE = "IsAnnex"
CONFIG_DIR_MEMBER_PREFIX = "60-"
"""A -config-dir file `x.config` travels as `60-x.config`: after `50-annex.config` in config.d."""
MAX_CONFIG_DIR_FILES = 64
MAX_CONFIG_DIR_FILE_BYTES = 64 * 1024
MAX_CONFIG_DIR_TOTAL_BYTES = 512 * 1024
_CONFIG_DIR_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}$")
# HTCondor's default LOCAL_CONFIG_DIR_EXCLUDE_REGEXP: files it would never read.
_HTCONDOR_SKIPS = re.compile(r"^((\..*)|(.*~)|(#.*)|(.*\.rpmsave)|(.*\.rpmnew))$")
TARBALL_MTIME = 0
"""Fixed member and gzip mtime: identical inputs give identical bytes."""
EXECUTE_NODE_DAEMONS = ("MASTER", "STARTD")

_TRUST_DOMAIN = re.compile(r"^[A-Za-z0-9@._:-]{1,253}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class AnnexConfig:
    """Everything that goes into one annex's tarball."""

    annex_name: str
    owner: str
    collector_host: str
    """`host` or `host:port` of the pool's collector."""
    idle_seconds: int
    lease_expires_at: datetime
    token: str
    trust_domain: str | None = None
    start_expression: str | None = None
    """Extra ClassAd condition ANDed into START (can only narrow the default policy)."""
    extra_config: str = ""
    """Admin-supplied HTCondor config appended verbatim at the end (trusted input)."""
    start_owners: Optional[tuple[str, ...]] = None
    """Whose jobs START admits: None means just `owner`; () means anyone's (`-no-owner`)."""
    config_files: tuple[tuple[str, bytes], ...] = ()
    """`-config-dir` files (name, content) as `read_config_dir` returns them."""


def classad_string(value: str) -> str:
    """`value` as a ClassAd string literal that is also inert in an HTCondor config file.

    ClassAd escapes `"` and `\\`; HTCondor's config layer expands `$(...)`, `$ENV(...)` etc.
    anywhere in a value, so every `$` becomes `$(DOLLAR)` (HTCondor's built-in literal dollar).
    Line breaks and other control characters cannot be represented on one config line: refused.
    """
    if _CONTROL.search(value):
        raise InvalidInput(f"{value!r} contains a control character or line break")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$(DOLLAR)")
    return f'"{escaped}"'


def _validate(cfg: AnnexConfig) -> None:
    try:
        contract.validate_annex_name(cfg.annex_name)
    except contract.InvalidAnnexName as exc:
        raise InvalidInput(str(exc)) from None
    if not cfg.owner:
        raise InvalidInput("the annex owner is empty", next_step="pass -owner USER")
    for owner in cfg.start_owners or ():
        if not owner or _CONTROL.search(owner):
            raise InvalidInput(f"{owner!r} is not a user name", next_step="fix -owner")
    # The same parser as the connectivity check: every form accepted there is written here.
    parse_collector(cfg.collector_host)
    if cfg.trust_domain is not None and not _TRUST_DOMAIN.fullmatch(cfg.trust_domain):
        raise InvalidInput(f"{cfg.trust_domain!r} is not a usable TRUST_DOMAIN")
    if isinstance(cfg.idle_seconds, bool) or int(cfg.idle_seconds) <= 0:
        raise InvalidInput("-idle must be a positive number of seconds")
    if cfg.lease_expires_at.tzinfo is None:
        raise InvalidInput("the lease expiry must be timezone-aware")
    if cfg.start_expression is not None and (
        _CONTROL.search(cfg.start_expression) or not cfg.start_expression.strip()
    ):
        raise InvalidInput("the START expression must be one non-empty line")
    token = cfg.token.strip()
    if not token or _CONTROL.search(token) or token.count(".") != 2:
        raise InvalidInput("the annex token is not a JWT")


def _host_only(address: str) -> str:
    host, _ = parse_collector(address)
    return f"[{host}]" if ":" in host else host


def render_annex_config(cfg: AnnexConfig) -> str:
    """The HTCondor configuration for `contract.TARBALL_CONFIG_FILE`."""
    _validate(cfg)
    name_attr = contract.ANNEX_NAME_ATTRIBUTE
    owner_attr = contract.ANNEX_OWNER_ATTRIBUTE
    lease_attr = contract.ANNEX_LEASE_EXPIRY_ATTRIBUTE
    # IsAnnex: what HTCondor's own `condor_status -annex` and `condor_off -annex` look for.
    advertised = f"{name_attr} {owner_attr} {lease_attr} {IS_ANNEX_ATTRIBUTE}"
    owner = classad_string(cfg.owner)
    opted_in = (
        f"((TARGET.{contract.JOB_TARGET_ANNEX_ATTRIBUTE} =?= MY.{name_attr}) || "
        f"(TARGET.{contract.JOB_MAY_USE_AWS_ATTRIBUTE} =?= True))"
    )
    owners = (cfg.owner,) if cfg.start_owners is None else cfg.start_owners
    if owners:
        anyone_of = " || ".join(f"(TARGET.Owner =?= {classad_string(o)})" for o in owners)
        start = f"({anyone_of}) && {opted_in}" if len(owners) > 1 else f"{anyone_of} && {opted_in}"
    else:
        start = opted_in
    start = narrowed_start(start, cfg.start_expression)
    lines = [
        f"# condor_annex: configuration of annex {cfg.annex_name} (generated; do not edit).",
        "",
        "# The pool this node joins.",
        f"CONDOR_HOST = {_host_only(cfg.collector_host)}",
        f"COLLECTOR_HOST = {cfg.collector_host.strip()}",
    ]
    if cfg.trust_domain is not None:
        lines.append(f"TRUST_DOMAIN = {cfg.trust_domain}")
    lines += [
        "",
        "# An execute node: the master and a startd.",
        f"DAEMON_LIST = {', '.join(EXECUTE_NODE_DAEMONS)}",
        "",
        "# Annex identity, advertised by the startd and the master.",
        f"{name_attr} = {classad_string(cfg.annex_name)}",
        f"{owner_attr} = {owner}",
        "# The lease end (Unix seconds); `extend` rewrites it with a fresh token. Informational:",
        "# the AWS-side schedule ends the lease, nothing on the node acts on this value.",
        f"{lease_attr} = {int(cfg.lease_expires_at.timestamp())}",
        f"{IS_ANNEX_ATTRIBUTE} = True",
        f"STARTD_ATTRS = $(STARTD_ATTRS) {advertised}",
        f"MASTER_ATTRS = $(MASTER_ATTRS) {advertised}",
        "",
        "# Only the owners' jobs (anyone's with -no-owner), and only those that ask for this annex",
        "# (TargetAnnexName) or for any annex (MayUseAWS, the reference tool's convention).",
        f"START = {start}",
        "",
        "# Turn HTCondor (and with it the instance) off after this long without a claim.",
        f"STARTD_NOCLAIM_SHUTDOWN = {int(cfg.idle_seconds)}",
        "",
        "# Security: the token below authenticates this node; integrity and encryption always.",
        f"SEC_TOKEN_DIRECTORY = $(LOCAL_CONFIG_DIR)/{contract.TARBALL_TOKEN_DIR}",
        "SEC_DEFAULT_AUTHENTICATION = REQUIRED",
        "SEC_DEFAULT_AUTHENTICATION_METHODS = FS, IDTOKENS",
        "SEC_CLIENT_AUTHENTICATION_METHODS = FS, IDTOKENS",
        "SEC_DEFAULT_INTEGRITY = REQUIRED",
        "SEC_DEFAULT_ENCRYPTION = REQUIRED",
        "",
    ]
    text = "\n".join(lines)
    if cfg.extra_config.strip():
        extra = cfg.extra_config if cfg.extra_config.endswith("\n") else cfg.extra_config + "\n"
        text += "# Extra configuration supplied by the pool admin.\n" + extra
    return text


def _add_member(archive: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = TARBALL_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.type = tarfile.REGTYPE
    archive.addfile(info, io.BytesIO(data))


def build_config_tarball(cfg: AnnexConfig) -> bytes:
    """The gzip'd tar for `contract.config_key(cfg.annex_name)`: config (0644) + token (0600)."""
    config_text = render_annex_config(cfg)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        _add_member(
            archive, contract.TARBALL_CONFIG_FILE, config_text.encode("utf-8"), CONFIG_FILE_MODE
        )
        _add_member(
            archive,
            contract.TARBALL_TOKEN_FILE,
            (cfg.token.strip() + "\n").encode("ascii"),
            TOKEN_FILE_MODE,
        )
        for name, content in cfg.config_files:
            _add_member(archive, config_dir_member(name), content, CONFIG_FILE_MODE)
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=TARBALL_MTIME) as gz:
        gz.write(raw.getvalue())
    return compressed.getvalue()


# --- A fresh token for a running annex (extend) ------------------------------------------------

MAX_REFRESH_TARBALL_BYTES = 16 * 1024 * 1024
"""The agent's own cap on a tarball; anything bigger is not one this CLI wrote."""


def _members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    if len(data) > MAX_REFRESH_TARBALL_BYTES:
        raise InvalidInput("the annex's configuration tarball is larger than any this tool writes")
    members = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for info in archive.getmembers():
                stream = archive.extractfile(info) if info.isreg() else None
                members.append((info, stream.read() if stream is not None else b""))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidInput(
            f"the annex's configuration tarball is unreadable ({type(exc).__name__})"
        ) from None
    return members


def token_in(data: bytes) -> Optional[str]:
    """The annex token in a tarball of this CLI's layout; None for any other layout."""
    names = {info.name: content for info, content in _members(data) if info.isreg()}
    if contract.TARBALL_CONFIG_FILE not in names or contract.TARBALL_TOKEN_FILE not in names:
        return None
    return names[contract.TARBALL_TOKEN_FILE].decode("ascii", errors="replace").strip()


def with_fresh_token(data: bytes, token: str, lease_expires_at: datetime) -> bytes:
    """The same tarball with `token` in place of the old one and the new lease end advertised.

    Every other member stays byte for byte as `create` wrote it (owners, START, idle timeout,
    -config-dir files): extend knows none of those inputs and must not change them.
    """
    token = token.strip()
    if not token or _CONTROL.search(token) or token.count(".") != 2:
        raise InvalidInput("the annex token is not a JWT")
    lease_line = re.compile(rf"^{contract.ANNEX_LEASE_EXPIRY_ATTRIBUTE} = \d+$", re.MULTILINE)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for info, content in _members(data):
            if info.name == contract.TARBALL_TOKEN_FILE:
                content = (token + "\n").encode("ascii")
            elif info.name == contract.TARBALL_CONFIG_FILE:
                seconds = int(lease_expires_at.timestamp())
                content = lease_line.sub(
                    f"{contract.ANNEX_LEASE_EXPIRY_ATTRIBUTE} = {seconds}", content.decode("utf-8")
                ).encode("utf-8")
            if info.isreg():
                _add_member(archive, info.name, content, info.mode)
            else:
                archive.addfile(info)
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=TARBALL_MTIME) as gz:
        gz.write(raw.getvalue())
    return compressed.getvalue()


# --- -config-dir --------------------------------------------------------------------------------


def config_dir_member(name: str) -> str:
    """The tarball (and config.d) name of the -config-dir file `name`."""
    return f"{CONFIG_DIR_MEMBER_PREFIX}{name}"


def read_config_dir(directory: Path) -> tuple[tuple[str, bytes], ...]:
    """The files of `-config-dir DIR`, checked, sorted by name; InvalidInput naming the problem.

    Regular files only (no subdirectories, links or devices), names HTCondor would read, text
    without NUL bytes, at most MAX_CONFIG_DIR_FILES files of MAX_CONFIG_DIR_FILE_BYTES each and
    MAX_CONFIG_DIR_TOTAL_BYTES together. Files HTCondor skips by default (`.hidden`, `x~`,
    `#x`, `.rpmsave`, `.rpmnew`) are left out, as HTCondor itself would ignore them.
    """
    fix = "put only plain HTCondor config files in the -config-dir directory"
    if not directory.is_dir():
        raise InvalidInput(f"-config-dir {directory} is not a directory", next_step=fix)
    files: list[tuple[str, bytes]] = []
    total = 0
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        name = entry.name
        if _HTCONDOR_SKIPS.match(name):
            continue
        if entry.is_symlink() or not entry.is_file():
            kind = "a symbolic link" if entry.is_symlink() else "not a regular file"
            if entry.is_dir() and not entry.is_symlink():
                kind = "a subdirectory (only the directory's own files are used)"
            raise InvalidInput(f"-config-dir: {entry} is {kind}", next_step=fix)
        if not _CONFIG_DIR_NAME.match(name):
            raise InvalidInput(
                f"-config-dir: the file name {name!r} may only use letters, digits and . _ + -",
                next_step="rename the file",
            )
        size = entry.stat().st_size
        if size > MAX_CONFIG_DIR_FILE_BYTES:
            raise InvalidInput(
                f"-config-dir: {entry} has {size} bytes; at most {MAX_CONFIG_DIR_FILE_BYTES} "
                "per file",
                next_step=fix,
            )
        content = entry.read_bytes()
        if b"\0" in content:
            raise InvalidInput(f"-config-dir: {entry} is not a text file", next_step=fix)
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"-config-dir: {entry} is not UTF-8 text", next_step=fix) from None
        total += len(content)
        files.append((name, content))
    if len(files) > MAX_CONFIG_DIR_FILES:
        raise InvalidInput(
            f"-config-dir {directory} holds {len(files)} files; at most {MAX_CONFIG_DIR_FILES}",
            next_step=fix,
        )
    if total > MAX_CONFIG_DIR_TOTAL_BYTES:
        raise InvalidInput(
            f"-config-dir {directory} holds {total} bytes; at most {MAX_CONFIG_DIR_TOTAL_BYTES}",
            next_step=fix,
        )
    if not files:
        raise InvalidInput(f"-config-dir {directory} holds no config files", next_step=fix)
    return tuple(files)


_PARSE_PROBE = """
import sys
try:
    import htcondor2
except ImportError:
    print("no-bindings")
    sys.exit(0)
htcondor2.param.get("START")
print("parsed")
"""
CONFIG_PARSE_TIMEOUT_SECONDS = 60


def check_config_files(files: Sequence[tuple[str, bytes]]) -> Optional[str]:
    """Have HTCondor's own parser read the -config-dir files as config.d will hold them.

    InvalidInput with HTCondor's message (naming the user's file and line) on a syntax error.
    Returns a note when the check could not run (no `htcondor2` bindings here), else None. The
    parse runs in a subprocess: HTCondor's library exits the process on a bad config.
    """
    with tempfile.TemporaryDirectory(prefix="condor-annex-config-dir-") as scratch:
        config_d = Path(scratch) / "config.d"
        config_d.mkdir()
        for name, content in files:
            (config_d / config_dir_member(name)).write_bytes(content)
        top = Path(scratch) / "condor_config"
        top.write_text(f"LOCAL_CONFIG_DIR = {config_d}\n")
        try:
            done = subprocess.run(
                [sys.executable, "-c", _PARSE_PROBE],
                env={"CONDOR_CONFIG": str(top), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                capture_output=True,
                text=True,
                timeout=CONFIG_PARSE_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"-config-dir files not checked by HTCondor's parser ({exc})"
        if done.returncode == 0 and "no-bindings" in done.stdout:
            return "-config-dir files not checked: the htcondor2 bindings are not installed"
        if done.returncode == 0 and "parsed" in done.stdout:
            return None
        message = (done.stderr + done.stdout).strip().replace(f"{config_d}/", "")
        for name, _ in files:
            message = message.replace(config_dir_member(name), name)
        first = " ".join(message.splitlines()[:2]) or f"exit status {done.returncode}"
        raise InvalidInput(
            f"-config-dir: HTCondor cannot parse the files: {first}",
            next_step="fix the file and line named",
        )
