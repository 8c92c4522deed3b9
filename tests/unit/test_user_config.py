"""The user's HTCondor config file: which one, and editing ANNEX_DEFAULT_* macros safely."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from condor_annex import contract
from condor_annex.user_config import (
    BLOCK_BEGIN,
    BLOCK_END,
    read_annex_macros,
    remove_annex_macros,
    user_config_path,
    write_annex_macros,
)

BUCKET = contract.OUTPUT_CONFIG_BUCKET.macro
PROFILE = contract.OUTPUT_INSTANCE_PROFILE_ARN.macro
REGION = contract.MACRO_AWS_REGION

EXISTING = """\
# my personal HTCondor settings
SCHEDD_HOST = submit.example.org

ANNEX_DEFAULT_S3_BUCKET = old-bucket
TOOL_DEBUG = D_FULLDEBUG \\
    D_SECURITY
# trailing comment
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), **extra}


def test_default_user_config_is_home_dot_condor_user_config(tmp_path):
    env = _env(tmp_path, CONDOR_CONFIG="/dev/null")
    assert user_config_path(env) == tmp_path / "home" / ".condor" / "user_config"


def test_absolute_user_config_file_from_htcondor_config_is_honoured(tmp_path):
    config = tmp_path / "condor_config"
    config.write_text(f"USER_CONFIG_FILE = {tmp_path}/elsewhere/annex.conf\n")
    env = _env(tmp_path, CONDOR_CONFIG=str(config))
    assert user_config_path(env) == tmp_path / "elsewhere" / "annex.conf"


def test_relative_user_config_file_lives_in_dot_condor(tmp_path):
    config = tmp_path / "condor_config"
    config.write_text("USER_CONFIG_FILE = annex_settings\n")
    env = _env(tmp_path, CONDOR_CONFIG=str(config))
    assert user_config_path(env) == tmp_path / "home" / ".condor" / "annex_settings"


def test_user_config_file_from_the_environment_is_honoured(tmp_path):
    env = _env(
        tmp_path, CONDOR_CONFIG="/dev/null", _condor_USER_CONFIG_FILE=str(tmp_path / "env.conf")
    )
    assert user_config_path(env) == tmp_path / "env.conf"


def test_broken_htcondor_config_falls_back_to_the_default(tmp_path):
    config = tmp_path / "condor_config"
    config.write_text("if true\nUSER_CONFIG_FILE = /nowhere\n")  # unterminated if: fatal
    env = _env(tmp_path, CONDOR_CONFIG=str(config))
    assert user_config_path(env) == tmp_path / "home" / ".condor" / "user_config"


def test_write_creates_the_file_with_a_marked_block(tmp_path):
    path = tmp_path / ".condor" / "user_config"
    write_annex_macros(path, {BUCKET: "b1", REGION: "us-west-2"})
    text = path.read_text()
    assert text.splitlines() == [
        BLOCK_BEGIN,
        f"{BUCKET} = b1",
        f"{REGION} = us-west-2",
        BLOCK_END,
    ]
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_updates_in_place_and_preserves_every_other_line(tmp_path):
    path = tmp_path / "user_config"
    path.write_text(EXISTING)
    write_annex_macros(path, {BUCKET: "new-bucket", PROFILE: "arn:aws:iam::1:instance-profile/p"})
    lines = path.read_text().splitlines()
    original = EXISTING.splitlines()
    # Everything we do not own is untouched and in its original order, before our block.
    assert lines[: len(original)] == [
        f"{BUCKET} = new-bucket" if line.startswith(BUCKET) else line for line in original
    ]
    assert lines[len(original) :] == [
        "",
        BLOCK_BEGIN,
        f"{PROFILE} = arn:aws:iam::1:instance-profile/p",
        BLOCK_END,
    ]


def test_write_is_idempotent(tmp_path):
    path = tmp_path / "user_config"
    path.write_text(EXISTING)
    macros = {BUCKET: "b2", PROFILE: "p", REGION: "eu-central-1"}
    write_annex_macros(path, macros)
    once = path.read_bytes()
    write_annex_macros(path, macros)
    assert path.read_bytes() == once


def test_second_write_adds_new_macros_inside_the_existing_block(tmp_path):
    path = tmp_path / "user_config"
    path.write_text(EXISTING)
    write_annex_macros(path, {PROFILE: "p"})
    write_annex_macros(path, {REGION: "us-east-2"})
    text = path.read_text()
    assert text.count(BLOCK_BEGIN) == 1
    block = text[text.index(BLOCK_BEGIN) : text.index(BLOCK_END)]
    assert f"{PROFILE} = p" in block and f"{REGION} = us-east-2" in block


def test_write_keeps_the_file_mode(tmp_path):
    path = tmp_path / "user_config"
    path.write_text(EXISTING)
    path.chmod(0o600)
    write_annex_macros(path, {BUCKET: "b3"})
    assert path.stat().st_mode & 0o777 == 0o600


def test_write_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "user_config"
    write_annex_macros(path, {BUCKET: "b"})
    write_annex_macros(path, {BUCKET: "c"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user_config"]


def test_write_through_a_symlink_keeps_the_link(tmp_path):
    target = tmp_path / "dotfiles" / "user_config"
    target.parent.mkdir()
    target.write_text(EXISTING)
    link = tmp_path / "user_config"
    link.symlink_to(target)
    write_annex_macros(link, {BUCKET: "via-link"})
    assert link.is_symlink()
    assert read_annex_macros(target)[BUCKET] == "via-link"


def test_read_returns_annex_macros_only_case_insensitively(tmp_path):
    path = tmp_path / "user_config"
    path.write_text(EXISTING + "annex_default_vpc_id = vpc-1\n#ANNEX_DEFAULT_AWS_REGION = x\n")
    assert read_annex_macros(path) == {BUCKET: "old-bucket", "ANNEX_DEFAULT_VPC_ID": "vpc-1"}


def test_read_of_a_missing_file_is_empty(tmp_path):
    assert read_annex_macros(tmp_path / "absent") == {}


def test_a_value_that_would_span_lines_is_refused(tmp_path):
    with pytest.raises(ValueError):
        write_annex_macros(tmp_path / "user_config", {BUCKET: "b\nSTART = True"})


def test_remove_deletes_only_the_named_macros_and_the_empty_block(tmp_path):
    path = tmp_path / "user_config"
    path.write_text(EXISTING)
    write_annex_macros(path, {PROFILE: "p", REGION: "r"})
    remove_annex_macros(path, [BUCKET, PROFILE, REGION])
    assert path.read_text() == EXISTING.replace("ANNEX_DEFAULT_S3_BUCKET = old-bucket\n", "")


def test_htcondor_reads_the_written_macros(tmp_path):
    path = tmp_path / "user_config"
    path.write_text(EXISTING)
    write_annex_macros(path, {BUCKET: "bucket-x", PROFILE: "arn:aws:iam::1:instance-profile/p"})
    config = tmp_path / "condor_config"
    config.write_text(f"LOCAL_CONFIG_FILE = {path}\n")
    probe = (
        "import htcondor2, json, sys; "
        "print(json.dumps({n: htcondor2.param.get(n) for n in sys.argv[1:]}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, BUCKET, PROFILE, "TOOL_DEBUG"],
        capture_output=True,
        text=True,
        env={**os.environ, "CONDOR_CONFIG": str(config)},
        check=True,
    )
    values = json.loads(result.stdout)
    assert values[BUCKET] == "bucket-x"
    assert values[PROFILE] == "arn:aws:iam::1:instance-profile/p"
    assert values["TOOL_DEBUG"].split() == ["D_FULLDEBUG", "D_SECURITY"]
