"""Where the real HTCondor daemons come from, for tests, the demo and the benchmarks.

Looked for in this order (the first that exists wins):

1. the install prefix named by `$CONDOR_ANNEX_HTCONDOR_PREFIX` (`sbin/condor_master` inside);
2. the tarball in `../shared/htcondor/` beside the project root, unpacked once into a cache
   (`$CONDOR_ANNEX_HTCONDOR_CACHE`, default `/var/tmp/condor_annex-htcondor`) that every user can
   traverse — the daemons run as `condor`, jobs as their submitting user;
3. `condor_master` on `PATH` (a pool admin's own machine).

`find()` never raises for "not there": it returns `Missing` with the reason, which callers print
(tests skip with it, the demo falls back with it). Unpacking is safe under concurrency (pytest
workers, parallel benchmarks): one process unpacks under a lock, into a temporary directory that
is renamed into place, so nobody ever sees half a prefix.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

PREFIX_ENV = "CONDOR_ANNEX_HTCONDOR_PREFIX"
CACHE_ENV = "CONDOR_ANNEX_HTCONDOR_CACHE"
# Not under $HOME: root's home is 0700 and the daemons (user condor) must traverse the prefix.
# A shared location, so `_check_owned` refuses a directory someone else made or can write.
DEFAULT_CACHE = Path("/var/tmp/condor_annex-htcondor")  # noqa: S108
PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = PROJECT_ROOT.parent / "shared" / "htcondor"
TARBALL_GLOB = "htcondor-*.tar.gz"
CONDOR_USER = "condor"
MASTER = "condor_master"
# The startd restarts forever without this helper (shared/htcondor/README.md, fact 4).
REQUIRED_LIBEXEC = "condor_gpu_discovery"


@dataclass(frozen=True)
class Distribution:
    """An HTCondor install whose daemons this machine can run."""

    prefix: Path
    bin: Path
    sbin: Path
    libexec: Path
    source: str
    """How it was found, for messages: `$CONDOR_ANNEX_HTCONDOR_PREFIX`, the tarball, or PATH."""

    def program(self, name: str) -> Path:
        """The absolute path of an HTCondor program (daemons in sbin, tools in bin)."""
        for directory in (self.sbin, self.bin, self.libexec):
            candidate = directory / name
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"{name} is not part of the HTCondor install at {self.prefix}")

    def path_env(self, base: Optional[str] = None) -> str:
        """`PATH` with this install's bin and sbin first."""
        rest = os.environ.get("PATH", "") if base is None else base
        return os.pathsep.join([str(self.bin), str(self.sbin), *filter(None, [rest])])

    def config_lines(self) -> list[str]:
        """Config lines that point HTCondor at this install (fact 6 of the README)."""
        return [
            f"RELEASE_DIR = {self.prefix}",
            f"BIN = {self.bin}",
            f"SBIN = {self.sbin}",
            f"LIBEXEC = {self.libexec}",
        ]


@dataclass(frozen=True)
class Missing:
    """No usable daemons; `reason` says why and what would provide them."""

    reason: str


Found = Union[Distribution, Missing]


def _from_prefix(prefix: Path, source: str) -> Found:
    sbin, bin_, libexec = prefix / "sbin", prefix / "bin", prefix / "libexec"
    if not (sbin / MASTER).is_file():
        return Missing(f"{source}: {prefix} has no sbin/{MASTER}")
    if not (libexec / REQUIRED_LIBEXEC).exists() and (libexec / "condor").is_dir():
        libexec = libexec / "condor"  # Debian/RPM layout
    return Distribution(prefix=prefix, bin=bin_, sbin=sbin, libexec=libexec, source=source)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def find_tarball(shared_dir: Path = SHARED_DIR) -> Optional[Path]:
    """The newest-named HTCondor tarball in `shared_dir`, if any."""
    candidates = sorted(shared_dir.glob(TARBALL_GLOB)) if shared_dir.is_dir() else []
    return candidates[-1] if candidates else None


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def _make_traversable(directory: Path) -> None:
    """mkdir -p with 0755 on every directory created (daemons run as `condor`, jobs as users)."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        path.chmod(0o755)


def _check_owned(directory: Path) -> None:
    """Refuse a cache that is a symlink, not ours, or writable by others (programs run from it)."""
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise OSError(f"{directory} is not a directory owned by uid {os.geteuid()}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise OSError(f"{directory} is writable by others (mode {stat.S_IMODE(info.st_mode):04o})")


def unpack_once(tarball: Path, cache: Optional[Path] = None) -> Path:
    """The install prefix unpacked from `tarball` into the cache (unpacked only the first time).

    The cache entry is named after the tarball's content hash, so a rebuilt tarball gets a new
    entry rather than mixing with an old one.
    """
    cache = cache or cache_dir()
    _make_traversable(cache)
    _check_owned(cache)
    entry = cache / f"{tarball.name.removesuffix('.tar.gz')}-{_digest(tarball)}"
    with (cache / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if entry.is_dir():
            return _prefix_in(entry)
        staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=cache))
        try:
            with tarfile.open(tarball) as archive:
                # "data" refuses absolute paths, links out of the tree and device files.
                archive.extractall(staging, filter="data")
            for path in [staging, *staging.rglob("*")]:
                if path.is_dir() and not path.is_symlink():
                    path.chmod(0o755)
            staging.rename(entry)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return _prefix_in(entry)


def _prefix_in(entry: Path) -> Path:
    """The tarball unpacks to one top directory (`htcondor-<version>/`); that is the prefix."""
    children = [child for child in entry.iterdir() if child.is_dir()]
    if len(children) == 1 and not (entry / "sbin").is_dir():
        return children[0]
    return entry


def find(shared_dir: Path = SHARED_DIR, cache: Optional[Path] = None) -> Found:
    """The daemons to use, or why there are none (see the module docstring for the order)."""
    named = os.environ.get(PREFIX_ENV)
    if named:
        return _from_prefix(Path(named).resolve(), f"${PREFIX_ENV}")
    tarball = find_tarball(shared_dir)
    if tarball is not None:
        try:
            prefix = unpack_once(tarball, cache)
        except (OSError, tarfile.TarError) as error:
            return Missing(f"cannot unpack {tarball}: {error}")
        return _from_prefix(prefix, str(tarball))
    on_path = shutil.which(MASTER)
    if on_path is not None:
        found = _from_prefix(Path(on_path).resolve().parent.parent, "PATH")
        if isinstance(found, Distribution):
            tool = shutil.which("condor_status")
            bin_ = Path(tool).resolve().parent if tool else found.bin
            return Distribution(found.prefix, bin_, found.sbin, found.libexec, found.source)
        return found
    return Missing(
        f"no HTCondor daemons: ${PREFIX_ENV} is unset, no {TARBALL_GLOB} in {shared_dir}, "
        f"and {MASTER} is not on PATH"
    )


# --- Users ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ids:
    uid: int
    gid: int

    @property
    def condor_ids(self) -> str:
        """The `CONDOR_IDS` value (`uid.gid`)."""
        return f"{self.uid}.{self.gid}"


def ensure_user(name: str, *, system: bool = False, home: bool = False) -> Ids:
    """The uid/gid of `name`, creating the account first when it is missing and we are root.

    Only root can create users or run daemons as another user: a non-root caller gets its own
    ids for `condor` (HTCondor then runs everything as that user) and an error for others.
    """
    try:
        entry = pwd.getpwnam(name)
        return Ids(entry.pw_uid, entry.pw_gid)
    except KeyError:
        pass
    if os.geteuid() != 0:
        if name == CONDOR_USER:
            return Ids(os.getuid(), os.getgid())
        raise PermissionError(f"user {name!r} does not exist and only root can create it")
    with (_lock_dir() / ".users.lock").open("a") as lock:
        # useradd fails when another useradd holds /etc/passwd's lock: one at a time.
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _useradd(name, system=system, home=home)


def _lock_dir() -> Path:
    directory = cache_dir()
    _make_traversable(directory)
    _check_owned(directory)
    return directory


def _useradd(name: str, *, system: bool, home: bool) -> Ids:
    try:
        entry = pwd.getpwnam(name)
        return Ids(entry.pw_uid, entry.pw_gid)
    except KeyError:
        pass
    # sbin may be missing from PATH (tests narrow it); useradd lives there.
    useradd = shutil.which("useradd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if useradd is None:
        raise OSError(f"cannot create user {name!r}: useradd is not installed")
    command = [useradd, "--shell", "/usr/sbin/nologin" if system else "/bin/sh"]
    command += ["--system"] if system else []
    command += ["--create-home"] if home else ["--no-create-home"]
    completed = subprocess.run(
        [*command, name], capture_output=True, text=True, check=False, timeout=60
    )
    if completed.returncode != 0:
        raise OSError(f"useradd {name} failed: {completed.stderr.strip()}")
    entry = pwd.getpwnam(name)
    return Ids(entry.pw_uid, entry.pw_gid)


def condor_ids() -> Ids:
    """The ids HTCondor's daemons run as (user `condor`, created when missing and root)."""
    return ensure_user(CONDOR_USER, system=True)


def main() -> int:
    """`python -m annex_sandbox.htcondor_dist`: print where the daemons are, or why not."""
    found = find()
    if isinstance(found, Missing):
        print(f"HTCondor daemons not available: {found.reason}")
        return 1
    print(f"{found.prefix} (from {found.source})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
