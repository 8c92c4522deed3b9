"""A Spot interruption notice from the IMDS emulator drains the real startd: it stops accepting
jobs and the running job is vacated back to the queue."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.htcondor_pool import AnnexPool, slot_constraint
from tests.integration.annex_env import minimal_annex_env

__all__ = ["minimal_annex_env"]

OWNER = "alice11"
WATCHER = Path(sys.executable).parent / "condor-annex-spot-watcher"


def long_job(annex: str) -> str:
    return (
        "executable = /bin/sleep\n"
        "arguments = 600\n"
        "transfer_executable = false\n"
        "should_transfer_files = YES\n"
        "log = job.log\n"
        "request_memory = 64\n"
        "request_disk = 1024\n"
        f'+TargetAnnexName = "{annex}"\n'
        "queue\n"
    )


def test_interruption_notice_stops_matches_and_vacates_the_running_job(
    annex_pool: AnnexPool,
) -> None:
    manager = annex_pool.manager
    annex = annex_pool.unique("spot")
    [booted] = annex_pool.create_and_boot(annex, owner=OWNER)
    manager.wait_for(slot_constraint(booted.instance_id))
    cluster = manager.submit_as(OWNER, annex_pool.workdir / OWNER, long_job(annex))
    # Running means executing: JobStatus turns 2 when the shadow starts, NumJobStarts only once
    # the starter has the job running (a notice in between finds no job to vacate yet).
    deadline = time.monotonic() + 120
    while True:
        job = manager.job(cluster) or {}
        if job.get("JobStatus") == 2 and job.get("NumJobStarts", 0) >= 1:
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.5)

    annex_pool.imds.schedule_spot_interruption(booted.instance_id)
    watcher = subprocess.run(
        [str(WATCHER), "--root", str(booted.root), "--interval", "0.5", "--max-polls", "20"],
        env={
            **booted.node.env(),
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": annex_pool.endpoints[booted.instance_id],
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert watcher.returncode == 0, watcher.stderr
    assert "step=interruption result=ok" in watcher.stderr, watcher.stderr

    # The job goes back to the queue (idle) having started once, and nothing matches again.
    deadline = time.monotonic() + 120
    while True:
        job = manager.job(cluster) or {}
        if job.get("JobStatus") == 1 and job.get("NumJobStarts", 0) >= 1:
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    # The startd left the pool (graceful off) or, while it lingers, advertises START = False.
    slots = manager.query("-startd", slot_constraint(booted.instance_id))
    assert all(slot.get("Start") is False for slot in slots if slot.get("State") == "Unclaimed")
    assert (manager.job(cluster) or {}).get("JobStatus") == 1
    manager.tool("condor_rm", str(cluster))
