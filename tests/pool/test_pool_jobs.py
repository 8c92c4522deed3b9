"""The owner policy with real jobs: each of the annex owners' jobs runs on the annex slot,
another user's job does not."""

from __future__ import annotations

import time

from annex_sandbox.pool import CentralManager
from tests.fixtures.htcondor_pool import AnnexPool, slot_constraint
from tests.integration.annex_env import minimal_annex_env

__all__ = ["minimal_annex_env"]

OWNER = "alice11"
SECOND_OWNER = "carol11"
OTHER = "bob11"


def job_description(annex: str, message: str) -> str:
    # The annex is another UID domain: the job runs as nobody there, so it transfers files.
    return (
        "executable = /bin/echo\n"
        f"arguments = {message}\n"
        "transfer_executable = false\n"
        "should_transfer_files = YES\n"
        "when_to_transfer_output = ON_EXIT\n"
        "output = out.txt\n"
        "error = err.txt\n"
        "log = job.log\n"
        "request_memory = 64\n"
        "request_disk = 1024\n"
        f'+TargetAnnexName = "{annex}"\n'
        "queue\n"
    )


def wait_for_job(manager: CentralManager, cluster: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ad = manager.job(cluster)
        if ad is not None and ad.get("JobStatus") == 4:
            return ad
        time.sleep(0.5)
    raise AssertionError(f"job {cluster} did not complete: {manager.job(cluster)}")


def test_each_owners_job_runs_on_the_annex_slot_and_another_users_does_not(
    annex_pool: AnnexPool,
) -> None:
    manager = annex_pool.manager
    annex = annex_pool.unique("jobs")
    [booted] = annex_pool.create_and_boot(
        annex, owner=f"{OWNER}, {SECOND_OWNER}", start_owners=(OWNER, SECOND_OWNER)
    )
    manager.wait_for(slot_constraint(booted.instance_id))

    # The other user's job is queued first, while the fresh slot is free: the negotiator
    # considers it and finds no match (the schedd records the rejection): START said no.
    free_since = int(time.time())
    other = manager.submit_as(OTHER, annex_pool.workdir / OTHER, job_description(annex, "bob"))
    deadline = time.monotonic() + 60
    while (manager.job(other) or {}).get("LastRejMatchTime", 0) < free_since:
        assert time.monotonic() < deadline, f"no negotiation considered {other}"
        time.sleep(0.5)

    mine = manager.submit_as(OWNER, annex_pool.workdir / OWNER, job_description(annex, "hello"))
    done = wait_for_job(manager, mine)
    assert done["ExitCode"] == 0
    assert booted.instance_id in done["LastRemoteHost"]
    assert (annex_pool.workdir / OWNER / "out.txt").read_text().strip() == "hello"
    second = manager.submit_as(
        SECOND_OWNER, annex_pool.workdir / SECOND_OWNER, job_description(annex, "hi")
    )
    assert booted.instance_id in wait_for_job(manager, second)["LastRemoteHost"]
    assert (annex_pool.workdir / SECOND_OWNER / "out.txt").read_text().strip() == "hi"

    waiting = manager.job(other)
    assert waiting is not None
    assert waiting["JobStatus"] == 1, waiting  # still idle
    assert waiting.get("NumJobStarts", 0) == 0
    assert not (annex_pool.workdir / OTHER / "out.txt").exists()
    manager.tool("condor_rm", str(other))
