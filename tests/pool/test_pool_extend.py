"""Extending a lease keeps a running instance in the real pool past its old token's expiry.

Time is compressed: once both instances have joined, the token each holds is replaced by one of
the same pool that expires TOKEN_SECONDS later (the CLI's shortest lease is far longer), so the
instances' own boot time under load never eats into it. An established security session
outlives its token (a startd keeps updating the collector over it; HTCondor's sessions last a
day), so past the old expiry both startds are restarted: a new process has to authenticate
again, as every daemon eventually does.

The lease is extended (a fresh token in the tarball) and only one instance runs
`condor-annex-ec2 refresh`. After the restart that one is back in the collector advertising the
new lease end; the other, the control, is refused.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timedelta, timezone

from condor_annex import contract
from condor_annex.extend import TokenSource, extend_lease
from tests.fixtures.htcondor_pool import AnnexPool, slot_constraint
from tests.integration.annex_env import minimal_annex_env

__all__ = ["minimal_annex_env"]

TOKEN_SECONDS = 15
UPDATE_SECONDS = 2


def test_extend_then_refresh_keeps_the_instance_in_the_pool_past_the_old_expiry(
    annex_pool: AnnexPool,
) -> None:
    annex = annex_pool.unique("extend")
    created = annex_pool.create(annex, count=2, duration_seconds=3600)
    refreshed, control = annex_pool.boot(
        sorted(created.instance_ids),
        # The master restarts an exited startd after 1 s instead of its default backoff.
        host_config=(f"UPDATE_INTERVAL = {UPDATE_SECONDS}", "MASTER_BACKOFF_CONSTANT = 1"),
    )
    for one in (refreshed, control):
        assert one.agent_exit == 0, one.agent_output
        annex_pool.manager.wait_for(slot_constraint(one.instance_id))
    old_end = datetime.now(timezone.utc) + timedelta(seconds=TOKEN_SECONDS)
    short = annex_pool.token_until(old_end)
    for one in (refreshed, control):
        (one.root / "etc/condor/config.d" / contract.TARBALL_TOKEN_FILE).write_text(short + "\n")

    extended = extend_lease(
        annex,
        7200,
        settings=annex_pool.env.settings,
        clients=annex_pool.env.clients,
        token_source=TokenSource(signing_key_file=annex_pool.manager.key_file),
    )
    assert extended.token_refreshed, extended.notes
    first = annex_pool.refresh(refreshed)
    assert first.returncode == 0, first.stderr
    assert "step=refresh result=installed" in first.stderr, first.stderr
    # The timer's next run: S3 answers 304, nothing is rewritten, HTCondor is left alone.
    again = annex_pool.refresh(refreshed)
    assert "step=refresh result=unchanged" in again.stderr, again.stderr
    # condor_reconfig reached the running startd: it advertises the new lease end already.
    new_end = int(extended.expires_at.timestamp())
    annex_pool.manager.wait_for(
        slot_constraint(
            refreshed.instance_id, f"{contract.ANNEX_LEASE_EXPIRY_ATTRIBUTE} == {new_end}"
        )
    )

    time.sleep(max(0.0, old_end.timestamp() + 1 - time.time()))
    for one in (refreshed, control):
        startd = one.node.child_pid("condor_startd")
        assert startd is not None, one.node.log_text("MasterLog")[-2000:]
        os.kill(startd, signal.SIGKILL)  # no goodbye to the collector; its master restarts it
    restarted = f"DaemonStartTime > {int(old_end.timestamp())}"
    [slot] = annex_pool.manager.wait_for(
        slot_constraint(refreshed.instance_id, restarted), timeout=60
    )
    assert slot[contract.ANNEX_LEASE_EXPIRY_ATTRIBUTE] == new_end
    # The control's new startd has only the expired token: the collector refuses it.
    refused = "failed to authenticate using idtokens"
    deadline = time.monotonic() + 60
    while refused not in control.node.log_text("StartLog").lower():
        assert time.monotonic() < deadline, control.node.log_text("StartLog")[-2000:]
        time.sleep(0.5)
    assert not annex_pool.manager.query("-startd", slot_constraint(control.instance_id, restarted))
