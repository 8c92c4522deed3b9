"""`check-image` against root filesystems with and without each requirement."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from condor_annex.agent.image_check import all_musts_met, check
from condor_annex.agent.root import Root

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "image" / "install-al2023.sh"


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """A root filesystem prepared by the image install script (files only)."""
    root = tmp_path / "image"
    done = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--no-packages"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return root


def _by_name(root: Path) -> dict[str, bool]:
    return {r.name: r.met for r in check(Root(root))}


def test_installed_image_meets_every_requirement(image_root: Path) -> None:
    results = check(Root(image_root))
    assert all(r.met for r in results), [r for r in results if not r.met]
    assert all_musts_met(results)


def test_empty_root_meets_nothing(tmp_path: Path) -> None:
    results = check(Root(tmp_path))
    assert not any(r.met for r in results)
    assert not all_musts_met(results)


def test_disabled_unit_is_reported(image_root: Path) -> None:
    for wants in (image_root / "etc/systemd/system").glob("*.*s"):
        if wants.is_dir():
            shutil.rmtree(wants)
    assert _by_name(image_root)["agent-unit"] is False


def test_world_writable_shutdown_script_is_reported(image_root: Path) -> None:
    os.chmod(image_root / "usr/libexec/condor-annex/master-shutdown", 0o777)  # noqa: S103 - the point
    assert _by_name(image_root)["master-shutdown-script"] is False


def test_script_that_does_not_power_off_is_reported(image_root: Path) -> None:
    (image_root / "usr/libexec/condor-annex/master-shutdown").write_text("#!/bin/sh\nexit 0\n")
    assert _by_name(image_root)["master-shutdown-script"] is False


def test_missing_idle_shutdown_is_reported(image_root: Path) -> None:
    config = image_root / "etc/condor/config.d/10-annex-image.config"
    config.write_text(config.read_text().replace("STARTD_NOCLAIM_SHUTDOWN", "#"))
    assert _by_name(image_root)["idle-shutdown"] is False


def test_should_requirements_do_not_fail_the_image(image_root: Path) -> None:
    config = image_root / "etc/condor/config.d/10-annex-image.config"
    config.write_text(config.read_text().replace("= REQUIRED", "= OPTIONAL"))
    results = check(Root(image_root))
    assert {r.name: r.met for r in results}["integrity-encryption"] is False
    assert all_musts_met(results)


def test_editor_backup_files_are_ignored_like_htcondor_does(image_root: Path) -> None:
    config = image_root / "etc/condor/config.d/10-annex-image.config"
    backup = config.with_name(config.name + "~")
    config.rename(backup)
    assert _by_name(image_root)["idle-shutdown"] is False
