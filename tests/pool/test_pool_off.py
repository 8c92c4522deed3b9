"""`condor_annex off` with the real pool: the annex's daemons are shut down peacefully through the
collector, and only that annex's — names that differ only in case, or that are a prefix of it,
keep running — then its instances are terminated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fixtures.htcondor_pool import AnnexPool, Booted, slot_constraint
from tests.integration.annex_env import minimal_annex_env

__all__ = ["minimal_annex_env"]


def _off(pool: AnnexPool, annex: str) -> subprocess.CompletedProcess[str]:
    # Run as the pool admin on the central manager: its HTCondor config and tools on PATH.
    # IDTOKENS only (no FS, which only works because everything shares one host here): the
    # command reaches the annex master with the collector's remote-administration capability.
    env = pool.manager.env({"_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS": "IDTOKENS"})
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "condor_annex"),
            "off",
            "-annex-name",
            annex,
            "-collector",
            pool.manager.address,
            "-config-file",
            str(pool.env.config_file),
            "-yes",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_off_shuts_down_only_that_annex_peacefully_then_terminates_it(
    annex_pool: AnnexPool,
) -> None:
    manager = annex_pool.manager
    base = annex_pool.unique("off")
    target, same_but_case, longer = f"{base}Ab", f"{base}aB", f"{base}Abc"
    nodes: dict[str, Booted] = {}
    for name in (target, same_but_case, longer):
        [nodes[name]] = annex_pool.create_and_boot(name)
    for booted in nodes.values():
        manager.wait_for(slot_constraint(booted.instance_id))
        manager.wait_for(slot_constraint(booted.instance_id), kind="-master")

    result = _off(annex_pool, target)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["peaceful_requests"] == 1, report["notes"]
    assert report["terminated_instances"] == [nodes[target].instance_id]

    # The target's startd shut down peacefully (asked through the pool, not by a signal of ours).
    off = nodes[target]
    manager.wait_for(slot_constraint(off.instance_id), absent=True, timeout=60)
    assert "peaceful" in off.node.log_text("StartLog").lower()
    assert off.node.wait_exit(timeout=60), off.node.log_text("MasterLog")[-2000:]
    assert off.node.poweroffs == 1

    # The look-alikes are untouched: still in the pool, their instances still running.
    for name in (same_but_case, longer):
        kept = nodes[name]
        assert kept.node.running(), name
        assert manager.query("-startd", slot_constraint(kept.instance_id)), name
        assert "peaceful" not in kept.node.log_text("StartLog").lower(), name
        assert [i["InstanceId"] for i in annex_pool.env.live_instances(name)] == [kept.instance_id]
    assert annex_pool.env.live_instances(target) == []
