"""Extending a lease keeps a running instance in the real pool past its old token's expiry.

Time is compressed: the instances start with a token that expires TOKEN_SECONDS after their
daemons start (the CLI's shortest lease is far longer). An established security session outlives its token (a startd
keeps updating the collector over it; HTCondor's sessions last a day), so past the old expiry
both instances' startds are restarted: a new process has to authenticate again, as every daemon
eventually does.

Two instances of one annex boot with the short token; the lease is extended (a fresh token in
the tarball) and only one of them runs `condor-annex-ec2 refresh`. After the restart that one
is back in the collector advertising the new lease end; the other, the control, is refused.
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

TOKEN_SECONDS = 30
UPDATE_SECONDS = 2


def test_extend_then_refresh_keeps_the_instance_in_the_pool_past_the_old_expiry(
    annex_pool: AnnexPool,
) -> None:
    annex = annex_pool.unique("extend")
    created = annex_pool.create(annex, count=2, duration_seconds=3600)
    refreshed, control = annex_pool.boot(
        sorted(created.instance_ids),
        start=False,
        # The master restarts an exited startd after 1 s instead of its default backoff.
        host_config=(f"UPDATE_INTERVAL = {UPDATE_SECONDS}", "MASTER_BACKOFF_CONSTANT = 1"),
    )
    # Minted as the daemons start, so boot time under load cannot eat into it.
    old_end = datetime.now(timezone.utc) + timedelta(seconds=TOKEN_SECONDS)
    short = annex_pool.token_until(old_end)
    for one in (refreshed, control):
        assert one.agent_exit == 0, one.agent_output
        (one.root / "etc/condor/config.d" / contract.TARBALL_TOKEN_FILE).write_text(short + "\n")
        one.node.start()
    for one in (refreshed, control):
        annex_pool.manager.wait_for(
            slot_constraint(one.instance_id), timeout=max(1.0, old_end.timestamp() - time.time())
        )

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

    time.sleep(max(0.0, old_end.timestamp() + 1 - time.time()))
    for one in (refreshed, control):
        startd = one.node.child_pid("condor_startd")
        assert startd is not None, one.node.log_text("MasterLog")[-2000:]
        os.kill(startd, signal.SIGKILL)  # no goodbye to the collector; its master restarts it
    restarted = f"DaemonStartTime > {int(old_end.timestamp())}"
    [slot] = annex_pool.manager.wait_for(
        slot_constraint(refreshed.instance_id, restarted), timeout=60
    )
    assert slot[contract.ANNEX_LEASE_EXPIRY_ATTRIBUTE] == int(extended.expires_at.timestamp())
    # The control's new startd has only the expired token: the collector refuses it.
    time.sleep(3 * UPDATE_SECONDS)
    assert not annex_pool.manager.query("-startd", slot_constraint(control.instance_id, restarted))
    assert "failed to authenticate using idtokens" in control.node.log_text("StartLog").lower()
