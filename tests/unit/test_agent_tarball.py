"""The tarball gate: only plain files and directories with safe names and sane sizes get in."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from condor_annex import contract
from condor_annex.agent.tarball_unpack import Limits, TarballRefused, install, verify

CONFIG = b'AnnexName = "demo"\n'
TOKEN = b"eyJhbGciOiJIUzI1NiJ9.e30.sig\n"


def _tar(entries: list[tarfile.TarInfo | tuple[str, bytes]], *, compress: bool = True) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                archive.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o777
                info.uid = 4242
                archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue()) if compress else raw.getvalue()


def _good() -> bytes:
    return _tar([(contract.TARBALL_CONFIG_FILE, CONFIG), (contract.TARBALL_TOKEN_FILE, TOKEN)])


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def test_good_tarball_unpacks_with_config_and_token_modes(tmp_path: Path) -> None:
    target = tmp_path / "etc/condor/config.d"
    written = install(verify(_good()).members, target, privileged=os.geteuid() == 0)
    assert sorted(written) == sorted([contract.TARBALL_CONFIG_FILE, contract.TARBALL_TOKEN_FILE])
    config = target / contract.TARBALL_CONFIG_FILE
    token = target / contract.TARBALL_TOKEN_FILE
    assert config.read_bytes() == CONFIG and token.read_bytes() == TOKEN
    assert stat.S_IMODE(config.stat().st_mode) == 0o644
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to root needs root")
def test_unpacked_files_are_owned_by_root_not_the_archive_uid(tmp_path: Path) -> None:
    target = tmp_path / "config.d"
    install(verify(_good()).members, target, privileged=True)
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in target.rglob("*")}
    assert owners == {(0, 0)}


def test_unpack_leaves_no_staging_directory_behind(tmp_path: Path) -> None:
    target = tmp_path / "condor" / "config.d"
    install(verify(_good()).members, target, privileged=False)
    assert sorted(p.name for p in target.parent.iterdir()) == ["config.d"]


def test_unpack_replaces_previous_boot_files(tmp_path: Path) -> None:
    target = tmp_path / "config.d"
    target.mkdir()
    (target / contract.TARBALL_CONFIG_FILE).write_text("old\n")
    (target / "10-annex-image.config").write_text("image\n")
    install(verify(_good()).members, target, privileged=False)
    assert (target / contract.TARBALL_CONFIG_FILE).read_bytes() == CONFIG
    assert (target / "10-annex-image.config").read_text() == "image\n"


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (("../evil.config", b"x"), "path escapes the directory"),
        (("tokens.d/../../evil", b"x"), "path escapes the directory"),
        (("/etc/passwd", b"x"), "absolute path"),
        (_special("link.config", tarfile.SYMTYPE, "/etc/shadow"), "symlink"),
        (_special("hard.config", tarfile.LNKTYPE, contract.TARBALL_CONFIG_FILE), "hardlink"),
        (_special("null", tarfile.CHRTYPE), "device"),
        (_special("disk", tarfile.BLKTYPE), "device"),
        (_special("pipe", tarfile.FIFOTYPE), "fifo"),
    ],
    ids=["traversal", "nested-traversal", "absolute", "symlink", "hardlink", "chr", "blk", "fifo"],
)
def test_hostile_member_is_refused_and_nothing_is_written(
    tmp_path: Path, entry: tarfile.TarInfo | tuple[str, bytes], reason: str
) -> None:
    data = _tar([(contract.TARBALL_CONFIG_FILE, CONFIG), entry])
    with pytest.raises(TarballRefused) as refused:
        verify(data)
    assert refused.value.reason == reason
    assert not (tmp_path / "config.d").exists()


def test_not_gzip_is_refused() -> None:
    with pytest.raises(TarballRefused, match="not gzip"):
        verify(_tar([(contract.TARBALL_CONFIG_FILE, CONFIG)], compress=False))


def test_truncated_gzip_is_refused() -> None:
    data = _good()
    with pytest.raises(TarballRefused, match="corrupt"):
        verify(data[: len(data) // 2])


def test_corrupted_gzip_crc_is_refused() -> None:
    data = bytearray(_good())
    data[-6] ^= 0xFF  # the CRC32 in the gzip trailer
    with pytest.raises(TarballRefused, match="corrupt"):
        verify(bytes(data))


def _gigabyte_of_zeros_member() -> bytes:
    """A tar.gz holding one 1 GiB file of zeros, built from repeated gzip members (cheap)."""
    header = tarfile.TarInfo(contract.TARBALL_CONFIG_FILE)
    header.size = 1 << 30
    chunk = gzip.compress(b"\0" * (1 << 20), compresslevel=1)
    return gzip.compress(header.tobuf(format=tarfile.USTAR_FORMAT)) + chunk * 1024


def test_gigabyte_member_is_refused_by_its_size() -> None:
    with pytest.raises(TarballRefused, match="member larger than"):
        verify(_gigabyte_of_zeros_member())


def test_many_small_members_over_the_total_cap_are_refused_while_decompressing() -> None:
    members: list[tarfile.TarInfo | tuple[str, bytes]] = [(contract.TARBALL_CONFIG_FILE, CONFIG)]
    members += [(f"{i:03}.config", b"\0" * 60_000) for i in range(40)]
    with pytest.raises(TarballRefused, match="uncompressed size exceeds"):
        verify(_tar(members), Limits(total_bytes=1_000_000))


def test_gzip_bomb_without_tar_headers_stops_at_the_cap() -> None:
    chunk = gzip.compress(b"\x01" * (1 << 20), compresslevel=1)
    with pytest.raises(TarballRefused):
        verify(chunk * 64, Limits(total_bytes=4 << 20))


def test_compressed_size_cap() -> None:
    with pytest.raises(TarballRefused, match="compressed size exceeds"):
        verify(_good(), Limits(compressed_bytes=10))


def test_tokens_without_a_layout_marker_are_refused_as_ambiguous() -> None:
    with pytest.raises(TarballRefused, match="ambiguous") as refused:
        verify(_tar([(contract.TARBALL_TOKEN_FILE, TOKEN)]))
    assert "tarball layouts:" in str(refused.value)


def test_duplicate_member_is_refused() -> None:
    data = _tar([(contract.TARBALL_CONFIG_FILE, CONFIG), (contract.TARBALL_CONFIG_FILE, b"x")])
    with pytest.raises(TarballRefused, match="duplicate"):
        verify(data)


def test_file_used_as_directory_is_refused() -> None:
    data = _tar([(contract.TARBALL_CONFIG_FILE, CONFIG), ("a", b"x"), ("a/b", b"y")])
    with pytest.raises(TarballRefused, match="file used as a directory"):
        verify(data)


def test_symlinked_token_directory_in_target_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "config.d"
    target.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (target / contract.TARBALL_TOKEN_DIR).symlink_to(elsewhere)
    with pytest.raises(NotADirectoryError):
        install(verify(_good()).members, target, privileged=False)
    assert list(elsewhere.iterdir()) == []
    assert not (target / contract.TARBALL_CONFIG_FILE).exists()
