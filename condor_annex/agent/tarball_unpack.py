"""Verify and unpack `config-<annex>.tar.gz` into HTCondor's config directory.

The tarball is data from S3: everything about it is checked before anything is written. Only
regular files and directories with relative, non-escaping names are accepted; sizes are enforced
while decompressing (gzip headers are not trusted). Files land in a temporary directory beside
the target first, so a refused tarball writes nothing into config.d.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from condor_annex import contract
from condor_annex.agent.files import (
    CONFIG_FILE_MODE,
    DIRECTORY_MODE,
    SECRET_FILE_MODE,
    ensure_directory,
    set_owner_and_mode,
)

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


@dataclass(frozen=True)
class Member:
    name: str
    """Normalized relative POSIX path."""
    is_dir: bool
    content: bytes = b""

    @property
    def mode(self) -> int:
        if self.is_dir:
            return DIRECTORY_MODE
        top = PurePosixPath(self.name).parts[0]
        return SECRET_FILE_MODE if top == contract.TARBALL_TOKEN_DIR else CONFIG_FILE_MODE


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


def verify(data: bytes, limits: Optional[Limits] = None) -> list[Member]:
    """The tarball's members after every check, or TarballRefused."""
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
    config = members.get(contract.TARBALL_CONFIG_FILE)
    if config is None or config.is_dir:
        raise TarballRefused("missing member", contract.TARBALL_CONFIG_FILE)
    return sorted(members.values(), key=lambda m: m.name)


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

    Returns the relative names of the files written. Modes: 0755 directories, 0600 anything under
    tokens.d/, 0644 other files; owner root:root when `privileged`.
    """
    ensure_directory(target.parent, privileged)
    staging = Path(tempfile.mkdtemp(prefix=".annex-unpack-", dir=target.parent))
    try:
        for member in members:
            path = staging / member.name
            if member.is_dir:
                path.mkdir(mode=DIRECTORY_MODE, exist_ok=True)
            else:
                path.parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
                with open(path, "xb") as stream:
                    stream.write(member.content)
            set_owner_and_mode(path, member.mode, privileged)
        ensure_directory(target, privileged)
        # Directories first (refusing symlinks in the way), then atomic renames of each file.
        for member in members:
            if member.is_dir:
                ensure_directory(target / member.name, privileged)
                set_owner_and_mode(target / member.name, DIRECTORY_MODE, privileged)
        written = []
        for member in members:
            if not member.is_dir:
                (staging / member.name).replace(target / member.name)
                written.append(member.name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
