"""`config-<annex>.tar.gz`: the HTCondor configuration and token an annex instance boots with.

The boot agent unpacks it into `/etc/condor/config.d`; it holds exactly two members:

- `contract.TARBALL_CONFIG_FILE` (0644): collector, annex identity attributes, the START policy,
  idle shutdown and the security settings (see `render_annex_config`);
- `contract.TARBALL_TOKEN_FILE` (0600): the annex's IDTOKEN.

The archive is deterministic (fixed mtime, owner root:root 0:0, fixed order, gzip without a
timestamp), so the same inputs always give the same bytes.

Policy (documented in docs/TOKENS.md): an annex only ever runs jobs of its owner, and of those
only jobs that opt in — `+TargetAnnexName = "<annex>"` (this annex) or `+MayUseAWS = True` (any of
the owner's annexes, the reference tool's convention). A custom START expression can only narrow
that further. Values that come from users (owner, trust domain) are escaped for the ClassAd
string they sit in and for HTCondor's `$(...)` macro expansion, so they can never add config.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
from dataclasses import dataclass
from datetime import datetime

from condor_annex import contract
from condor_annex.collector import parse_collector
from condor_annex.errors import InvalidInput
from condor_annex.inputs import narrowed_start

CONFIG_FILE_MODE = 0o644
TOKEN_FILE_MODE = 0o600
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
    advertised = f"{name_attr} {owner_attr} {lease_attr}"
    owner = classad_string(cfg.owner)
    start = (
        f"(TARGET.Owner =?= {owner}) && "
        f"((TARGET.{contract.JOB_TARGET_ANNEX_ATTRIBUTE} =?= MY.{name_attr}) || "
        f"(TARGET.{contract.JOB_MAY_USE_AWS_ATTRIBUTE} =?= True))"
    )
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
        "# The lease expiry this annex was launched with (Unix seconds). Extending the lease moves",
        "# the AWS-side schedule only, so nothing on the node acts on this value.",
        f"{lease_attr} = {int(cfg.lease_expires_at.timestamp())}",
        f"STARTD_ATTRS = $(STARTD_ATTRS) {advertised}",
        f"MASTER_ATTRS = $(MASTER_ATTRS) {advertised}",
        "",
        "# Only the owner's jobs, and only those that ask for this annex (TargetAnnexName) or for",
        "# any of the owner's annexes (MayUseAWS, the reference tool's convention).",
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
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=TARBALL_MTIME) as gz:
        gz.write(raw.getvalue())
    return compressed.getvalue()
