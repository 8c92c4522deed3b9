"""The annex tarball: exact members, deterministic bytes, config HTCondor parses, no injection."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from condor_annex import contract
from condor_annex.errors import InvalidInput
from condor_annex.tarball import AnnexConfig, build_config_tarball, render_annex_config

LEASE_END = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"

BASE = AnnexConfig(
    annex_name="gpu_burst-1",
    owner="alice",
    collector_host="cm.example.org:9618",
    idle_seconds=900,
    lease_expires_at=LEASE_END,
    token=TOKEN,
    trust_domain="cm.example.org",
)

# Runs in a subprocess: a bad config makes the HTCondor library exit the whole process.
_PROBE = r"""
import json, sys
import classad2, htcondor2
names, jobs = json.loads(sys.argv[1])
out = {"params": {n: htcondor2.param.get(n) for n in names}, "start": []}
machine = classad2.ClassAd()
machine["AnnexName"] = classad2.ExprTree(htcondor2.param["AnnexName"])
start = classad2.ExprTree(htcondor2.param["START"])
for job in jobs:
    out["start"].append(start.eval(machine, classad2.ClassAd(job)) is True)
print(json.dumps(out, default=str))
"""


def _unpack(data: bytes, into: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        archive.extractall(into, filter="data")


def _htcondor_view(
    tmp_path: Path, cfg: AnnexConfig, names: list[str], jobs: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    config_dir = tmp_path / "config.d"
    config_dir.mkdir()
    _unpack(build_config_tarball(cfg), config_dir)
    top = tmp_path / "condor_config"
    top.write_text(f"LOCAL_CONFIG_DIR = {config_dir}\nPROTECTED = original\n")
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps([names, list(jobs)])],
        capture_output=True,
        text=True,
        env={**os.environ, "CONDOR_CONFIG": str(top)},
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_tarball_holds_exactly_config_and_token_with_their_modes():
    with tarfile.open(fileobj=io.BytesIO(build_config_tarball(BASE)), mode="r:gz") as archive:
        members = {m.name: m for m in archive.getmembers()}
        token = archive.extractfile(contract.TARBALL_TOKEN_FILE)
        assert token is not None
        token_text = token.read().decode()
    assert sorted(members) == sorted([contract.TARBALL_CONFIG_FILE, contract.TARBALL_TOKEN_FILE])
    assert members[contract.TARBALL_CONFIG_FILE].mode == 0o644
    assert members[contract.TARBALL_TOKEN_FILE].mode == 0o600
    assert all(m.isreg() for m in members.values())
    assert token_text == TOKEN + "\n"


def test_tarball_members_are_owned_by_root_with_a_fixed_mtime():
    with tarfile.open(fileobj=io.BytesIO(build_config_tarball(BASE)), mode="r:gz") as archive:
        for member in archive.getmembers():
            assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "root", "root")
            assert member.mtime == 0


def test_tarball_bytes_are_deterministic():
    assert build_config_tarball(BASE) == build_config_tarball(replace(BASE))


def test_tarball_gzip_header_carries_no_timestamp_or_name():
    data = build_config_tarball(BASE)
    assert data[4:8] == b"\x00\x00\x00\x00"  # MTIME
    assert data[3] & 0x08 == 0  # FNAME flag
    assert gzip.decompress(data)  # and it is valid gzip


def test_config_parses_with_htcondor_and_sets_pool_identity_and_idle(tmp_path):
    view = _htcondor_view(
        tmp_path,
        BASE,
        [
            "COLLECTOR_HOST",
            "CONDOR_HOST",
            "TRUST_DOMAIN",
            "AnnexName",
            "AnnexOwner",
            contract.ANNEX_LEASE_EXPIRY_ATTRIBUTE,
            "STARTD_NOCLAIM_SHUTDOWN",
            "STARTD_ATTRS",
            "MASTER_ATTRS",
            "DAEMON_LIST",
        ],
    )["params"]
    assert view["COLLECTOR_HOST"] == "cm.example.org:9618"
    assert view["CONDOR_HOST"] == "cm.example.org"
    assert view["TRUST_DOMAIN"] == "cm.example.org"
    assert view["AnnexName"] == '"gpu_burst-1"'
    assert view["AnnexOwner"] == '"alice"'
    assert view[contract.ANNEX_LEASE_EXPIRY_ATTRIBUTE] == str(int(LEASE_END.timestamp()))
    assert view["STARTD_NOCLAIM_SHUTDOWN"] == 900  # a typed (integer) HTCondor knob
    for attrs in (view["STARTD_ATTRS"], view["MASTER_ATTRS"]):
        assert {"AnnexName", "AnnexOwner", contract.ANNEX_LEASE_EXPIRY_ATTRIBUTE} <= set(
            attrs.split()
        )
    assert [d.strip() for d in view["DAEMON_LIST"].split(",")] == ["MASTER", "STARTD"]


def test_config_requires_idtokens_integrity_and_encryption(tmp_path):
    view = _htcondor_view(
        tmp_path,
        BASE,
        [
            "SEC_TOKEN_DIRECTORY",
            "SEC_DEFAULT_AUTHENTICATION_METHODS",
            "SEC_DEFAULT_INTEGRITY",
            "SEC_DEFAULT_ENCRYPTION",
        ],
    )["params"]
    assert view["SEC_TOKEN_DIRECTORY"] == str(tmp_path / "config.d" / contract.TARBALL_TOKEN_DIR)
    assert "IDTOKENS" in view["SEC_DEFAULT_AUTHENTICATION_METHODS"]
    assert view["SEC_DEFAULT_INTEGRITY"] == "REQUIRED"
    assert view["SEC_DEFAULT_ENCRYPTION"] == "REQUIRED"


def test_token_lands_in_the_configured_token_directory(tmp_path):
    view = _htcondor_view(tmp_path, BASE, ["SEC_TOKEN_DIRECTORY"])["params"]
    token_file = Path(view["SEC_TOKEN_DIRECTORY"]) / Path(contract.TARBALL_TOKEN_FILE).name
    assert token_file.read_text().strip() == TOKEN


def test_start_admits_only_the_owners_opted_in_jobs(tmp_path):
    jobs: list[dict[str, Any]] = [
        {"Owner": "alice", contract.JOB_TARGET_ANNEX_ATTRIBUTE: "gpu_burst-1"},
        {"Owner": "alice", contract.JOB_MAY_USE_AWS_ATTRIBUTE: True},
        {"Owner": "alice"},
        {"Owner": "alice", contract.JOB_TARGET_ANNEX_ATTRIBUTE: "other"},
        {"Owner": "mallory", contract.JOB_TARGET_ANNEX_ATTRIBUTE: "gpu_burst-1"},
        {"Owner": "mallory", contract.JOB_MAY_USE_AWS_ATTRIBUTE: True},
    ]
    start = _htcondor_view(tmp_path, BASE, [], jobs)["start"]
    assert start == [True, True, False, False, False, False]


def test_custom_start_expression_only_narrows(tmp_path):
    cfg = replace(BASE, start_expression="TARGET.RequestGpus >= 1")
    jobs: list[dict[str, Any]] = [
        {"Owner": "alice", contract.JOB_MAY_USE_AWS_ATTRIBUTE: True, "RequestGpus": 1},
        {"Owner": "alice", contract.JOB_MAY_USE_AWS_ATTRIBUTE: True, "RequestGpus": 0},
        {"Owner": "bob", contract.JOB_MAY_USE_AWS_ATTRIBUTE: True, "RequestGpus": 1},
    ]
    assert _htcondor_view(tmp_path, cfg, [], jobs)["start"] == [True, False, False]


@pytest.mark.parametrize(
    "owner",
    [
        'x") || (true',
        "$(PROTECTED)",
        "$ENV(HOME)",
        'back\\slash"',
        "a # not a comment",
    ],
)
def test_hostile_owner_is_taken_literally(tmp_path, owner):
    cfg = replace(BASE, owner=owner)
    jobs: list[dict[str, Any]] = [
        {"Owner": owner, contract.JOB_MAY_USE_AWS_ATTRIBUTE: True},
        {"Owner": "someone-else", contract.JOB_MAY_USE_AWS_ATTRIBUTE: True},
    ]
    probe = r"""
import classad2, htcondor2, json
print(json.dumps(classad2.ExprTree(htcondor2.param["AnnexOwner"]).eval()))
"""
    view = _htcondor_view(tmp_path, cfg, ["PROTECTED"], jobs)
    assert view["params"]["PROTECTED"] == "original"
    assert view["start"] == [True, False]
    literal = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "CONDOR_CONFIG": str(tmp_path / "condor_config")},
        check=True,
    )
    assert json.loads(literal.stdout) == owner


@pytest.mark.parametrize(
    "field,value",
    [
        ("owner", "alice\nSTART = True"),
        ("owner", "alice\rx"),
        ("owner", ""),
        ("collector_host", "cm.example.org\nSTART = True"),
        ("collector_host", "cm.example.org $(X)"),
        ("trust_domain", "td\nSEC_DEFAULT_ENCRYPTION = NEVER"),
        ("start_expression", "true\nSEC_DEFAULT_ENCRYPTION = NEVER"),
        ("annex_name", "a\nSTART = True"),
        ("annex_name", 'a"b'),
        ("token", "a.b.c\nSTART = True"),
        ("idle_seconds", 0),
    ],
)
def test_values_that_could_add_config_lines_are_refused(field, value):
    with pytest.raises(InvalidInput):
        render_annex_config(replace(BASE, **{field: value}))


def test_extra_config_is_appended_after_the_generated_settings(tmp_path):
    cfg = replace(BASE, extra_config="STARTD_NOCLAIM_SHUTDOWN = 60\nMY_KNOB = 1")
    view = _htcondor_view(tmp_path, cfg, ["STARTD_NOCLAIM_SHUTDOWN", "MY_KNOB"])["params"]
    assert view == {"STARTD_NOCLAIM_SHUTDOWN": 60, "MY_KNOB": "1"}


def test_config_without_trust_domain_leaves_htcondor_default():
    assert "TRUST_DOMAIN" not in render_annex_config(replace(BASE, trust_domain=None))


# --- extend: a fresh token in an existing tarball -------------------------------------------


def _members_of(data: bytes) -> dict[str, tuple[bytes, int]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return {
            m.name: (archive.extractfile(m).read(), m.mode)  # type: ignore[union-attr]
            for m in archive.getmembers()
        }


def test_fresh_token_replaces_only_the_token_and_the_advertised_lease_end() -> None:
    from condor_annex.tarball import token_in, with_fresh_token

    cfg = replace(BASE, config_files=(("site.config", b"X = 1\n"),))
    before = build_config_tarball(cfg)
    later = datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    fresh = "aaa.bbb.ccc"
    after = with_fresh_token(before, fresh, later)
    old, new = _members_of(before), _members_of(after)
    assert token_in(before) == BASE.token.strip()
    assert token_in(after) == fresh
    assert list(new) == list(old)  # same members, same order
    assert new[contract.TARBALL_TOKEN_FILE] == (b"aaa.bbb.ccc\n", 0o600)
    assert new["60-site.config"] == old["60-site.config"]
    assert (
        new[contract.TARBALL_CONFIG_FILE][0]
        == render_annex_config(replace(cfg, lease_expires_at=later)).encode()
    )
    assert with_fresh_token(before, fresh, later) == after  # deterministic bytes


def test_a_tarball_of_another_layout_has_no_token_to_renew() -> None:
    from condor_annex.tarball import token_in

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        info = tarfile.TarInfo("config.d/50-old.config")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"X\n"))
    assert token_in(gzip.compress(raw.getvalue())) is None
    with pytest.raises(InvalidInput, match="unreadable"):
        token_in(b"\x1f\x8b not really gzip")
