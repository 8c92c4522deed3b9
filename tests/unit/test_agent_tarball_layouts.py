"""The three tarball layouts the agent accepts, built the way their authors build them.

The old condor_annex wrote `config.d/00ec2-dynamic.config`, `tokens.d/<annex>.<user>@<domain>`
and `passwords.d/POOL` (plus the -config-dir files at the top) into a temporary directory and ran
`tar -z -c -f <tarball> *` there (`createConfigTarball` in htcondor/htcondor src/annex/annex.cpp);
its boot script untarred that into /etc/condor. The customization guide's tarball is plain config
files untarred into /etc/condor/config.d. Both are built here with GNU tar exactly so.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from condor_annex import contract
from condor_annex.agent.root import Root
from condor_annex.agent.tarball_unpack import Layout, TarballRefused, install, verify

DYNAMIC_CONFIG = b'AnnexName = "old"\nIsAnnex = TRUE\nSTARTD_ATTRS = $(STARTD_ATTRS) AnnexName\n'
TOKEN = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln\n"
POOL_PASSWORD = b"\x8f\x01pool-password-bytes\n"
TOKEN_NAME = "old.alice@pool.example.org"


def _write(path: Path, content: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(mode)


def _gnu_tar(directory: Path, *arguments: str) -> bytes:
    """`tar -z -c -f OUT ARGS` run inside `directory`, as the old tool and the guide do.

    A lone `*` is expanded as the shell behind the old tool's system() call expands it: the
    directory's names not starting with a dot, sorted.
    """
    out = directory.parent / f"{directory.name}.tar.gz"
    names: list[str] = []
    for argument in arguments:
        if argument in ("*", "*.config"):
            names += sorted(
                n
                for n in os.listdir(directory)
                if not n.startswith(".") and (argument == "*" or n.endswith(".config"))
            )
        else:
            names.append(argument)
    subprocess.run(["tar", "-z", "-c", "-f", str(out), *names], cwd=directory, check=True)
    return out.read_bytes()


def old_tool_tarball(tmp_path: Path, *, config_dir_file: bool = True) -> bytes:
    staging = tmp_path / ".condor_annex.Xa1b2c"
    _write(staging / "config.d/00ec2-dynamic.config", DYNAMIC_CONFIG, 0o644)
    _write(staging / "tokens.d" / TOKEN_NAME, TOKEN, 0o600)  # condor_token_fetch writes 0600
    _write(staging / "passwords.d/POOL", POOL_PASSWORD, 0o600)  # cp of a 0600 password file
    if config_dir_file:
        _write(staging / "my-site.config", b"MY_SITE = 1\n", 0o644)  # `cp -a DIR/*`
    return _gnu_tar(staging, "*")


def guide_tarball(tmp_path: Path, *arguments: str) -> bytes:
    staging = tmp_path / "guide"
    _write(staging / "10-custom.config", b"CUSTOM = 1\n", 0o644)
    _write(staging / "20-more.config", b"MORE = 2\n", 0o664)
    return _gnu_tar(staging, *(arguments or ("*.config",)))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_old_tool_tarball_lands_in_etc_condor_with_secrets_root_only(tmp_path: Path) -> None:
    data = old_tool_tarball(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        names = sorted(archive.getnames())
    assert names == [
        "config.d",
        "config.d/00ec2-dynamic.config",
        "my-site.config",
        "passwords.d",
        "passwords.d/POOL",
        "tokens.d",
        f"tokens.d/{TOKEN_NAME}",
    ]
    tarball = verify(data)
    assert tarball.layout is Layout.OLD_TOOL
    root = Root(tmp_path / "root")
    target = tarball.target(root)
    assert target == root.condor_dir
    (root.config_dir).mkdir(parents=True)  # the image ships config.d
    written = install(tarball.members, target, privileged=os.geteuid() == 0)
    assert sorted(written) == [
        "config.d/00ec2-dynamic.config",
        "my-site.config",
        "passwords.d/POOL",
        f"tokens.d/{TOKEN_NAME}",
    ]
    etc = root.condor_dir
    assert (etc / "config.d/00ec2-dynamic.config").read_bytes() == DYNAMIC_CONFIG
    assert (etc / "tokens.d" / TOKEN_NAME).read_bytes() == TOKEN
    assert (etc / "passwords.d/POOL").read_bytes() == POOL_PASSWORD
    assert _mode(etc / "config.d/00ec2-dynamic.config") == 0o644
    assert _mode(etc / "my-site.config") == 0o644
    for secret_dir in ("tokens.d", "passwords.d"):
        assert _mode(etc / secret_dir) == 0o700
        assert {_mode(p) for p in (etc / secret_dir).iterdir()} == {0o600}
    # Nothing of it landed one level too deep, where HTCondor would never read it.
    assert not (etc / "config.d/config.d").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to root needs root")
def test_old_tool_secrets_are_owned_by_root(tmp_path: Path) -> None:
    tarball = verify(old_tool_tarball(tmp_path))
    target = tmp_path / "etc/condor"
    install(tarball.members, target, privileged=True)
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in target.rglob("*")}
    assert owners == {(0, 0)}


@pytest.mark.parametrize("arguments", [("*.config",), (".",)], ids=["star", "dot"])
def test_guide_tarball_of_plain_config_files_lands_in_config_d(
    tmp_path: Path, arguments: tuple[str, ...]
) -> None:
    tarball = verify(guide_tarball(tmp_path, *arguments))
    assert tarball.layout is Layout.GUIDE
    root = Root(tmp_path / "root")
    assert tarball.target(root) == root.config_dir
    written = install(tarball.members, root.config_dir, privileged=False)
    assert sorted(written) == ["10-custom.config", "20-more.config"]
    assert (root.config_dir / "20-more.config").read_bytes() == b"MORE = 2\n"
    assert {_mode(p) for p in root.config_dir.iterdir()} == {0o644}  # 0664 in the archive


def test_cli_tarball_is_its_own_layout(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for name, body in (
            (contract.TARBALL_CONFIG_FILE, b"A = 1\n"),
            (contract.TARBALL_TOKEN_FILE, TOKEN),
            ("60-site.config", b"B = 2\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    tarball = verify(gzip.compress(raw.getvalue()))
    assert tarball.layout is Layout.CLI
    assert {m.name: m.mode for m in tarball.members} == {
        contract.TARBALL_CONFIG_FILE: 0o644,
        contract.TARBALL_TOKEN_DIR: 0o700,
        contract.TARBALL_TOKEN_FILE: 0o600,
        "60-site.config": 0o644,
    }


# --- Hostile variants of each: refused before anything is written ------------------------------


def _hostile_old(tmp_path: Path, change: str) -> bytes:
    staging = tmp_path / ".condor_annex.hostile"
    _write(staging / "config.d/00ec2-dynamic.config", DYNAMIC_CONFIG, 0o644)
    _write(staging / "passwords.d/POOL", POOL_PASSWORD, 0o600)
    if change == "token-symlink":
        (staging / "tokens.d").mkdir()
        (staging / "tokens.d/evil").symlink_to("/etc/shadow")
    elif change == "secret-dir-symlink":
        (staging / "tokens.d").symlink_to("/root")
    elif change == "extra-directory":
        _write(staging / "cron.d/evil", b"* * * * * root sh\n", 0o644)
    elif change == "mixed":
        _write(staging / contract.TARBALL_CONFIG_FILE, b"A = 1\n", 0o644)
    elif change == "password-fifo":
        os.mkfifo(staging / "passwords.d/PIPE")
    return _gnu_tar(staging, "*")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("token-symlink", "symlink"),
        ("secret-dir-symlink", "symlink"),
        ("extra-directory", "old condor_annex layout with an unexpected directory"),
        ("mixed", "mixed layouts"),
        ("password-fifo", "fifo"),
    ],
)
def test_hostile_old_tool_tarball_is_refused(tmp_path: Path, change: str, reason: str) -> None:
    with pytest.raises(TarballRefused) as refused:
        verify(_hostile_old(tmp_path, change))
    assert refused.value.reason.startswith(reason)


def _traversal(tmp_path: Path) -> bytes:
    staging = tmp_path / "guide-evil"
    _write(staging / "10-custom.config", b"A = 1\n", 0o644)
    return _gnu_tar(staging, "-P", "--transform=s,^,../../etc/cron.d/,", "10-custom.config")


def _absolute(tmp_path: Path) -> bytes:
    staging = tmp_path / "guide-abs"
    _write(staging / "10-custom.config", b"A = 1\n", 0o644)
    return _gnu_tar(staging, "-P", "--transform=s,^,/etc/sudoers.d/,", "10-custom.config")


def _guide_with(tmp_path: Path, relative: str, content: bytes = b"x") -> bytes:
    staging = tmp_path / "guide-ambiguous"
    _write(staging / "10-custom.config", b"A = 1\n", 0o644)
    _write(staging / relative, content, 0o600)
    return _gnu_tar(staging, "*")


def _guide_symlink(tmp_path: Path) -> bytes:
    staging = tmp_path / "guide-link"
    _write(staging / "10-custom.config", b"A = 1\n", 0o644)
    (staging / "20-shadow.config").symlink_to("/etc/shadow")
    return _gnu_tar(staging, "*")


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (_traversal, "path escapes the directory"),
        (_absolute, "absolute path"),
        (_guide_symlink, "symlink"),
        (lambda p: _guide_with(p, "passwords.d/POOL"), "ambiguous: passwords.d/"),
        (lambda p: _guide_with(p, "tokens.d/t"), "ambiguous: tokens.d/"),
        (lambda p: _guide_with(p, "config.d"), "config.d is a file"),
    ],
    ids=["traversal", "absolute", "symlink", "passwords-ambiguous", "tokens-ambiguous", "file"],
)
def test_hostile_guide_tarball_is_refused(tmp_path: Path, build: object, reason: str) -> None:
    assert callable(build)
    with pytest.raises(TarballRefused) as refused:
        verify(build(tmp_path))
    assert refused.value.reason.startswith(reason)
    if "ambiguous" in reason:
        # The refusal names the rules, so whoever built it knows what to change.
        assert "tarball layouts:" in str(refused.value)


def test_empty_tarball_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/sub").mkdir()
    with pytest.raises(TarballRefused, match="no files in the tarball"):
        verify(_gnu_tar(tmp_path / "empty", "sub"))
