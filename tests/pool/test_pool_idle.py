"""Idle shutdown with the real daemons: an unclaimed startd exits, the master follows and runs
the image's shutdown script, and the power-off hook is called exactly once."""

from __future__ import annotations

from tests.fixtures.htcondor_pool import AnnexPool, slot_constraint
from tests.integration.annex_env import minimal_annex_env

__all__ = ["minimal_annex_env"]

IDLE_SECONDS = 10


def test_idle_instance_turns_htcondor_off_and_powers_off_once(annex_pool: AnnexPool) -> None:
    annex = annex_pool.unique("idle")
    [booted] = annex_pool.create_and_boot(annex, idle_seconds=IDLE_SECONDS)
    node = booted.node
    annex_pool.manager.wait_for(slot_constraint(booted.instance_id))

    # Nobody claims the slot: the master must exit by itself (no signal from us).
    assert node.wait_exit(timeout=120), node.log_text("MasterLog")[-3000:]
    assert node.poweroffs == 1, node.poweroff_log.read_text()
    annex_pool.manager.wait_for(slot_constraint(booted.instance_id), absent=True, timeout=30)
