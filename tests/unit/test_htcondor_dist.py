"""annex_sandbox.htcondor_dist: where the real daemons come from (prefix, tarball cache, PATH)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from annex_sandbox import htcondor_dist


def _fake_prefix(root: Path) -> Path:
    for sub in ("bin", "sbin", "libexec"):
        (root / sub).mkdir(parents=True)
    for rel in ("sbin/condor_master", "bin/condor_status", "libexec/condor_gpu_discovery"):
        (root / rel).write_text("#!/bin/sh\n")
        (root / rel).chmod(0o755)
    return root


def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def no_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(htcondor_dist.PREFIX_ENV, raising=False)


def test_named_prefix_wins_and_points_config_into_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = _fake_prefix(tmp_path / "install")
    monkeypatch.setenv(htcondor_dist.PREFIX_ENV, str(prefix))
    found = htcondor_dist.find(shared_dir=tmp_path / "no-shared")
    assert isinstance(found, htcondor_dist.Distribution)
    assert found.prefix == prefix.resolve()
    assert found.program("condor_master") == prefix.resolve() / "sbin/condor_master"
    assert f"LIBEXEC = {prefix.resolve() / 'libexec'}" in found.config_lines()
    assert found.path_env("/usr/bin").split(os.pathsep)[-1] == "/usr/bin"


def test_named_prefix_without_master_is_missing_with_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(htcondor_dist.PREFIX_ENV, str(tmp_path))
    found = htcondor_dist.find(shared_dir=tmp_path)
    assert isinstance(found, htcondor_dist.Missing)
    assert htcondor_dist.PREFIX_ENV in found.reason and "condor_master" in found.reason


def test_tarball_is_unpacked_once_into_a_traversable_cache(tmp_path: Path, no_prefix: None) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    members = {
        "htcondor-9.9.9/sbin/condor_master": b"#!/bin/sh\n",
        "htcondor-9.9.9/bin/condor_status": b"#!/bin/sh\n",
        "htcondor-9.9.9/libexec/condor_gpu_discovery": b"#!/bin/sh\n",
    }
    _tarball(shared / "htcondor-9.9.9-test.tar.gz", members)
    cache = tmp_path / "cache" / "deeper"
    first = htcondor_dist.find(shared_dir=shared, cache=cache)
    assert isinstance(first, htcondor_dist.Distribution)
    assert first.prefix.name == "htcondor-9.9.9"
    assert first.program("condor_master").stat().st_mode & stat.S_IXUSR
    marker = first.prefix / "touched-after-unpack"
    marker.write_text("x")
    second = htcondor_dist.find(shared_dir=shared, cache=cache)
    assert isinstance(second, htcondor_dist.Distribution)
    assert second.prefix == first.prefix and marker.exists()  # not unpacked again
    for directory in (cache, cache.parent, first.prefix, first.prefix / "sbin"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755, directory
    assert not [p for p in cache.iterdir() if p.name.startswith(".unpacking-")]


def test_tarball_escaping_its_directory_is_refused_and_leaves_nothing(
    tmp_path: Path, no_prefix: None
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    _tarball(shared / "htcondor-1-evil.tar.gz", {"../../escaped": b"x"})
    cache = tmp_path / "cache"
    found = htcondor_dist.find(shared_dir=shared, cache=cache)
    assert isinstance(found, htcondor_dist.Missing)
    assert "cannot unpack" in found.reason
    assert not (tmp_path / "escaped").exists()
    assert [p.name for p in cache.iterdir()] == [".lock"]


def test_nothing_anywhere_names_all_three_places(
    tmp_path: Path, no_prefix: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    found = htcondor_dist.find(shared_dir=tmp_path / "none")
    assert isinstance(found, htcondor_dist.Missing)
    assert htcondor_dist.PREFIX_ENV in found.reason
    assert "condor_master is not on PATH" in found.reason


def test_condor_master_on_path_is_the_last_resort(
    tmp_path: Path, no_prefix: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = _fake_prefix(tmp_path / "usr")
    monkeypatch.setenv("PATH", f"{prefix / 'bin'}{os.pathsep}{prefix / 'sbin'}")
    found = htcondor_dist.find(shared_dir=tmp_path / "none")
    assert isinstance(found, htcondor_dist.Distribution)
    assert found.source == "PATH" and found.prefix == prefix.resolve()


def test_cache_writable_by_others_is_refused(tmp_path: Path, no_prefix: None) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    _tarball(shared / "htcondor-2-x.tar.gz", {"htcondor-2/sbin/condor_master": b"x"})
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    found = htcondor_dist.find(shared_dir=shared, cache=cache)
    assert isinstance(found, htcondor_dist.Missing)
    assert "writable by others" in found.reason
    assert list(cache.iterdir()) == []
