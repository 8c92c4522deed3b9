"""Verify and unpack `config-<annex>.tar.gz` into HTCondor's configuration directories.

The tarball is data from S3: everything about it is checked before anything is written. Only
regular files and directories with relative, non-escaping names are accepted; sizes are enforced
while decompressing (gzip headers are not trusted). Files land in a temporary directory beside
the target first, so a refused tarball writes nothing.

Three layouts are accepted, told apart by their top-level members (`LAYOUT_RULES`): this CLI's
own, the old condor_annex's (unpacked into /etc/condor, as its boot script did) and the
customization guide's plain config files. Anything that fits none, or more than one, is refused.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from condor_annex import contract
from condor_annex.agent.files import (
    CONFIG_FILE_MODE,
    DIRECTORY_MODE,
    SECRET_DIRECTORY_MODE,
    SECRET_FILE_MODE,
    ensure_directory,
    set_owner_and_mode,
)
from condor_annex.agent.root import Root

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Limits:
    compressed_bytes: int = 16 * 1024 * 1024
    member_bytes: int = 1024 * 1024
    total_bytes: int = 16 * 1024 * 1024
    members: int = 256


class TarballRefused(Exception):
    """The tarball failed verification; nothing was written."""

    def __init__(self, reason: str, member: Optional[str] = None) -> None:
        super().__init__(reason if member is None else f"{reason}: {member}")
        self.reason = reason
        self.member = member


class Layout(str, Enum):
    """Where a tarball's members belong on the instance."""

    CLI = "cli"
    """This CLI's: `50-annex.config`, `tokens.d/` and -config-dir files, for config.d."""
    OLD_TOOL = "old-tool"
    """The old condor_annex's: `config.d/`, `tokens.d/`, `passwords.d/` and files, for /etc/condor."""
    GUIDE = "guide"
    """The customization guide's: plain config files (and directories), for config.d."""

    def target(self, root: Root) -> Path:
        return root.condor_dir if self is Layout.OLD_TOOL else root.config_dir


OLD_TOOL_CONFIG_DIR = "config.d"
PASSWORD_DIR = "passwords.d"  # noqa: S105 - a directory name, not a secret
SECRET_DIRS = (contract.TARBALL_TOKEN_DIR, PASSWORD_DIR)
"""Top-level directories whose contents are secrets: root-only, 0700 directories, 0600 files."""

LAYOUT_RULES = (
    "tarball layouts: (1) this CLI's: a top-level file 50-annex.config (optionally tokens.d/), "
    "unpacked into /etc/condor/config.d; (2) the old condor_annex's: a top-level config.d/ "
    "directory with optional tokens.d/ and passwords.d/ directories and plain files (no other "
    "directories, no 50-annex.config), unpacked into /etc/condor; (3) the customization guide's: "
    "plain config files and directories, none named config.d, tokens.d or passwords.d, unpacked "
    "into /etc/condor/config.d"
)


@dataclass(frozen=True)
class Member:
    name: str
    """Normalized relative POSIX path (relative to the layout's target directory)."""
    is_dir: bool
    content: bytes = b""
    mode: int = CONFIG_FILE_MODE
    """Set by `verify` from the layout: secrets 0600 (directories 0700), the rest 0644/0755."""


@dataclass(frozen=True)
class Tarball:
    """A verified tarball: its layout and its members with their final modes, sorted by name."""

    layout: Layout
    members: list[Member]

    def target(self, root: Root) -> Path:
        return self.layout.target(root)


class _CappedReader(io.RawIOBase):
    """Decompressed bytes, refused as soon as more than `cap` have been produced."""

    def __init__(self, source: Any, cap: int) -> None:
        self._source = source
        self._cap = cap
        self.produced = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._cap + 1 - self.produced
        chunk: bytes = self._source.read(min(size, self._cap + 1 - self.produced))
        self.produced += len(chunk)
        if self.produced > self._cap:
            raise TarballRefused(f"uncompressed size exceeds {self._cap} bytes")
        return chunk

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _member_name(raw: str) -> str:
    if not raw or "\x00" in raw or any(ord(c) < 32 for c in raw):
        raise TarballRefused("unusable member name", repr(raw))
    if raw.startswith("/"):
        raise TarballRefused("absolute path", raw)
    parts = [p for p in PurePosixPath(raw).parts if p != "."]
    if ".." in parts:
        raise TarballRefused("path escapes the directory", raw)
    if not parts:
        return ""
    return "/".join(parts)


def _kind(info: tarfile.TarInfo) -> str:
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "fifo"
    if info.issparse():
        return "sparse file"
    return "special file"


def verify(data: bytes, limits: Optional[Limits] = None) -> Tarball:
    """The tarball's layout and members after every check, or TarballRefused."""
    limits = limits or Limits()
    if len(data) > limits.compressed_bytes:
        raise TarballRefused(f"compressed size exceeds {limits.compressed_bytes} bytes")
    if not data.startswith(_GZIP_MAGIC):
        raise TarballRefused("not gzip")
    reader = _CappedReader(gzip.GzipFile(fileobj=io.BytesIO(data)), limits.total_bytes)
    members: dict[str, Member] = {}
    try:
        with tarfile.open(fileobj=io.BufferedReader(reader), mode="r|") as archive:
            for info in archive:
                name = _member_name(info.name)
                if len(members) >= limits.members:
                    raise TarballRefused(f"more than {limits.members} members")
                if info.isdir():
                    if name:
                        members.setdefault(name, Member(name, True))
                    continue
                if not info.isreg() or info.issparse():
                    raise TarballRefused(_kind(info), info.name)
                if not name:
                    raise TarballRefused("unusable member name", info.name)
                if info.size > limits.member_bytes:
                    raise TarballRefused(f"member larger than {limits.member_bytes} bytes", name)
                if name in members:
                    raise TarballRefused("duplicate member", name)
                stream = archive.extractfile(info)
                content = stream.read() if stream is not None else b""
                members[name] = Member(name, False, content)
        # Read to the end so gzip checks its CRC and length trailer (and trailing garbage).
        while reader.read(64 * 1024):
            pass
    except TarballRefused:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise TarballRefused(f"corrupt archive ({type(error).__name__})") from error
    _check_tree(members)
    layout = detect_layout(members)
    moded = [_with_mode(member) for member in members.values()]
    return Tarball(layout, sorted(moded, key=lambda m: m.name))


def _refuse_layout(reason: str, member: Optional[str] = None) -> TarballRefused:
    return TarballRefused(f"{reason}; {LAYOUT_RULES}", member)


def detect_layout(members: dict[str, Member]) -> Layout:
    """Which of the three layouts the members form; ambiguous or mixed ones are refused."""
    top: dict[str, bool] = {}
    for member in members.values():
        head = PurePosixPath(member.name).parts[0]
        top[head] = top.get(head, False) or member.is_dir or head != member.name
    if not any(not m.is_dir for m in members.values()):
        raise _refuse_layout("no files in the tarball")
    has_cli_config = top.get(contract.TARBALL_CONFIG_FILE) is False
    has_old_config_dir = top.get(OLD_TOOL_CONFIG_DIR) is True
    if has_cli_config and has_old_config_dir:
        raise _refuse_layout(
            f"mixed layouts: both {contract.TARBALL_CONFIG_FILE} and {OLD_TOOL_CONFIG_DIR}/"
        )
    for name in (OLD_TOOL_CONFIG_DIR, *SECRET_DIRS, contract.TARBALL_CONFIG_FILE):
        if name in top and top[name] != (name != contract.TARBALL_CONFIG_FILE):
            kind = "a file" if not top[name] else "a directory"
            raise _refuse_layout(f"{name} is {kind}", name)
    if has_old_config_dir:
        for name, is_dir in sorted(top.items()):
            if is_dir and name not in (OLD_TOOL_CONFIG_DIR, *SECRET_DIRS):
                raise _refuse_layout("old condor_annex layout with an unexpected directory", name)
        return Layout.OLD_TOOL
    if has_cli_config:
        if PASSWORD_DIR in top:
            raise _refuse_layout("mixed layouts: passwords.d/ belongs to the old layout")
        return Layout.CLI
    for name in SECRET_DIRS:
        if name in top:
            raise _refuse_layout(
                f"ambiguous: {name}/ without {contract.TARBALL_CONFIG_FILE} or "
                f"{OLD_TOOL_CONFIG_DIR}/ (for /etc/condor or for config.d?)",
                name,
            )
    return Layout.GUIDE


def _with_mode(member: Member) -> Member:
    secret = PurePosixPath(member.name).parts[0] in SECRET_DIRS
    if member.is_dir:
        return replace(member, mode=SECRET_DIRECTORY_MODE if secret else DIRECTORY_MODE)
    return replace(member, mode=SECRET_FILE_MODE if secret else CONFIG_FILE_MODE)


def _check_tree(members: dict[str, Member]) -> None:
    """Every parent of a member must be a directory (not also a file in the archive)."""
    for name in list(members):
        parents = PurePosixPath(name).parents
        for parent in list(parents)[:-1]:
            existing = members.get(str(parent))
            if existing is not None and not existing.is_dir:
                raise TarballRefused("file used as a directory", str(parent))
            members.setdefault(str(parent), Member(str(parent), True))


def install(members: list[Member], target: Path, privileged: bool) -> list[str]:
    """Write verified members under `target` via a temporary directory beside it.

    Returns the relative names of the files written, each with the mode `verify` gave it (0600
    in tokens.d/ and passwords.d/, which are 0700; 0644 and 0755 elsewhere); owner root:root when
    `privileged`.
    """
    ensure_directory(target.parent, privileged)
    staging = Path(tempfile.mkdtemp(prefix=".annex-unpack-", dir=target.parent))
    try:
        for member in members:
            path = staging / member.name
            if member.is_dir:
                path.mkdir(mode=member.mode, exist_ok=True)
            else:
                path.parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
                with open(path, "xb") as stream:
                    stream.write(member.content)
            set_owner_and_mode(path, member.mode, privileged)
        ensure_directory(target, privileged)
        # Directories first (refusing symlinks in the way), then atomic renames of each file.
        for member in members:
            if member.is_dir:
                ensure_directory(target / member.name, privileged, member.mode)
                set_owner_and_mode(target / member.name, member.mode, privileged)
        written = []
        for member in members:
            if not member.is_dir:
                (staging / member.name).replace(target / member.name)
                written.append(member.name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
