"""Annex instances join the real pool: the startd ad carries the annex attributes, and
`condor_annex status` says, from the real collector, which instances joined and which never did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from condor_annex import contract
from tests.fixtures.htcondor_pool import AnnexPool, slot_constraint
from tests.integration.annex_env import minimal_annex_env

__all__ = ["minimal_annex_env"]


def _status(pool: AnnexPool, annex: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONDOR_CONFIG": str(pool.manager.config_file)}
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "condor_annex"),
            "status",
            "-annex-name",
            annex,
            "-collector",
            pool.manager.address,
            "-config-file",
            str(pool.env.config_file),
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_booted_instance_joins_with_annex_attributes_and_status_shows_who_joined(
    annex_pool: AnnexPool,
) -> None:
    annex = annex_pool.unique("join")
    created = annex_pool.create(annex, count=2, owner="alice")
    joined_id, silent_id = sorted(created.instance_ids)
    annex_pool.boot([joined_id])
    annex_pool.boot([silent_id], start=False)  # booted, but its HTCondor never starts

    [slot] = annex_pool.manager.wait_for(slot_constraint(joined_id))
    assert slot[contract.ANNEX_NAME_ATTRIBUTE] == annex
    assert slot[contract.ANNEX_OWNER_ATTRIBUTE] == "alice"
    assert slot[contract.INSTANCE_ID_ATTRIBUTE] == joined_id
    assert slot[contract.ANNEX_LEASE_EXPIRY_ATTRIBUTE] == int(created.expires_at.timestamp())
    # It got in with the annex token, the only credential it has.
    assert slot["AuthenticatedIdentity"] == f"condor_pool@{annex_pool.manager.trust_domain}"
    annex_pool.manager.wait_for(slot_constraint(joined_id), kind="-master")

    result = _status(annex_pool, annex, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["pool_checked"] is True
    [listed] = report["annexes"]
    joined = {i["instance_id"]: i["joined_pool"] for i in listed["instances"]}
    assert joined == {joined_id: True, silent_id: False}

    table = _status(annex_pool, annex).stdout
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith("i-")}
    assert rows[joined_id].rstrip().endswith("yes"), table
    assert not rows[silent_id].rstrip().endswith("yes"), table
