"""The Spot interruption watcher against the IMDS emulator, as a process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from annex_sandbox.imds import EmulatedInstance, ImdsServer
from condor_annex.agent.spot_watcher import DRAIN_CONFIG_FILE
from tests.integration.test_agent_world import WATCHER

INSTANCE = "i-0feedfacecafe0001"


def _start(url: str, tmp_path: Path, max_polls: int) -> subprocess.Popen[str]:
    log = tmp_path / "commands.log"
    env = {**os.environ, "AWS_EC2_METADATA_SERVICE_ENDPOINT": url}
    return subprocess.Popen(
        [
            str(WATCHER),
            "--root",
            str(tmp_path / "root"),
            "--interval",
            "0.2",
            "--max-polls",
            str(max_polls),
            "--reconfig-command",
            f"sh -c 'echo reconfig >> {log}'",
            "--vacate-command",
            f"sh -c 'echo vacate >> {log}'",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def _drain_file(tmp_path: Path) -> Path:
    return tmp_path / "root/etc/condor/config.d" / DRAIN_CONFIG_FILE


def test_interruption_notice_stops_matches_and_vacates(
    imds_server: ImdsServer, tmp_path: Path
) -> None:
    url = imds_server.add_instance(EmulatedInstance(INSTANCE, instance_lifecycle="spot"))
    watcher = _start(url, tmp_path, max_polls=200)
    imds_server.schedule_spot_interruption(INSTANCE)
    _, stderr = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, stderr
    assert "START = False" in _drain_file(tmp_path).read_text()
    assert (tmp_path / "commands.log").read_text().split() == ["reconfig", "vacate"]
    assert 'step=interruption result=ok notice="terminate at' in stderr


def test_rebalance_recommendation_only_stops_new_matches(
    imds_server: ImdsServer, tmp_path: Path
) -> None:
    url = imds_server.add_instance(EmulatedInstance(INSTANCE, instance_lifecycle="spot"))
    imds_server.schedule_rebalance_recommendation(INSTANCE)
    watcher = _start(url, tmp_path, max_polls=5)
    _, stderr = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, stderr
    assert "START = False" in _drain_file(tmp_path).read_text()
    assert (tmp_path / "commands.log").read_text().split() == ["reconfig"]


def test_no_notice_changes_nothing(imds_server: ImdsServer, tmp_path: Path) -> None:
    url = imds_server.add_instance(EmulatedInstance(INSTANCE, instance_lifecycle="spot"))
    watcher = _start(url, tmp_path, max_polls=3)
    _, stderr = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, stderr
    assert not _drain_file(tmp_path).exists()
    assert not (tmp_path / "commands.log").exists()
