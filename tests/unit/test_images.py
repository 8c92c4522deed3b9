"""The first-boot script for a stock AL2023 image and its multipart MIME user data, tested as far
as this machine allows: bash's syntax check, a dry run into a root directory, and the MIME
document read back by Python's email parser (the format cloud-init reads)."""

from __future__ import annotations

import email
import email.message
import os
import stat
import subprocess
from pathlib import Path

import pytest

from condor_annex import images
from condor_annex.errors import InvalidInput

IMAGE = Path(__file__).resolve().parents[2] / "image"


def test_first_boot_script_is_valid_bash() -> None:
    done = subprocess.run(
        ["bash", "-n"], input=images.first_boot_script(), text=True, capture_output=True
    )
    assert done.returncode == 0, done.stderr


def test_first_boot_dry_run_writes_the_image_files_and_plans_the_rest(tmp_path: Path) -> None:
    script = tmp_path / "first-boot.sh"
    script.write_text(images.first_boot_script())
    root = tmp_path / "root"
    done = subprocess.run(
        ["bash", str(script)],
        env={"ROOT": str(root), "DRY_RUN": "1", "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    config = root / "etc/condor/config.d/10-annex-image.config"
    shutdown = root / "usr/libexec/condor-annex/master-shutdown"
    assert config.read_text() == (IMAGE / "condor/config.d/10-annex-image.config").read_text()
    assert shutdown.read_text() == (IMAGE / "libexec/master-shutdown").read_text()
    assert stat.S_IMODE(shutdown.stat().st_mode) == 0o755
    assert stat.S_IMODE(config.stat().st_mode) == 0o644
    for unit in (IMAGE / "systemd").glob("*.service"):
        assert (root / "etc/systemd/system" / unit.name).read_text() == unit.read_text()
    planned = [line for line in done.stdout.splitlines() if line.startswith("would run: ")]
    assert any("htcondor-release-current.amzn2023" in line for line in planned)
    assert any(images.AGENT_PIP_SPEC in line for line in planned)
    # HTCondor starts only after the agent configured it.
    starts = [line for line in planned if "systemctl start" in line]
    assert [s.split()[-1] for s in starts][:2] == [
        "condor-annex-firewall.service",
        "condor-annex-ec2.service",
    ]
    assert "condor.service" in starts[-1]


def _parts(document: bytes) -> list[email.message.Message]:
    message = email.message_from_bytes(document)
    assert message.get_content_type() == "multipart/mixed"
    return [p for p in message.walk() if not p.is_multipart()]


def test_user_data_keeps_the_users_own_part_byte_for_byte() -> None:
    theirs = b"#cloud-config\npackages: [htop]\nruncmd:\n  - echo 'h\xc3\xa9llo' > /tmp/x\n"
    parts = _parts(images.compose_user_data(images.first_boot_script(), theirs))
    assert [p.get_content_type() for p in parts] == ["text/x-shellscript", "text/cloud-config"]
    assert parts[0].get_payload(decode=True) == images.first_boot_script().encode()
    assert parts[1].get_payload(decode=True) == theirs


@pytest.mark.parametrize(
    ("first_line", "content_type"),
    [
        (b"#!/bin/sh", "text/x-shellscript"),
        (b"#cloud-boothook", "text/cloud-boothook"),
        (b"#include", "text/x-include-url"),
        (b"just words", "text/plain"),
    ],
)
def test_user_part_type_follows_its_first_line(first_line: bytes, content_type: str) -> None:
    parts = _parts(images.compose_user_data("#!/bin/bash\n", first_line + b"\nmore\n"))
    assert parts[1].get_content_type() == content_type


def test_without_user_data_only_the_first_boot_part(tmp_path: Path) -> None:
    parts = _parts(images.compose_user_data(images.first_boot_script(), None))
    assert len(parts) == 1


def test_binary_user_data_with_a_stock_image_is_refused_clearly() -> None:
    with pytest.raises(InvalidInput, match="must be text"):
        images.compose_user_data("#!/bin/bash\n", b"\x1f\x8b\x08\x00binary")


def test_image_kinds() -> None:
    stock = {"ImageOwnerAlias": "amazon", "Name": "al2023-ami-2023.6-kernel-6.1-x86_64"}
    ready = {"Name": "my-annex-image", "Tags": [{"Key": images.READY_IMAGE_TAG, "Value": "1"}]}
    assert images.kind_of(stock) is images.ImageKind.STOCK_AL2023
    assert images.kind_of(ready) is images.ImageKind.READY
    assert images.kind_of({"Name": "al2023-ami-copy", "OwnerId": "123"}) is images.ImageKind.OTHER
