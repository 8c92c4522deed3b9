"""`python app.py` is an ordinary CDK app: it honours CDK_OUTDIR and synthesizes quickly."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from condor_annex import contract
from tests.fixtures.cdk import PLACEHOLDER_VPC_ID

REPO = Path(__file__).resolve().parents[2]
SYNTH_BUDGET_SECONDS = 15


@pytest.mark.cdk
def test_app_synthesizes_into_cdk_outdir_within_budget(tmp_path):
    env = {
        **os.environ,
        "CDK_OUTDIR": str(tmp_path),
        "CDK_CONTEXT_JSON": json.dumps({"vpcId": PLACEHOLDER_VPC_ID}),
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    }
    started = time.monotonic()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    elapsed = time.monotonic() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of python + node (jsii): what the synth costs, whatever else shares the cores.
    cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )

    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    stacks = [a for a in manifest["artifacts"].values() if a["type"] == "aws:cloudformation:stack"]
    assert [s["properties"]["stackName"] for s in stacks] == [contract.STACK_NAME]
    assert (tmp_path / stacks[0]["properties"]["templateFile"]).is_file()
    print(f"python app.py: {elapsed:.1f} s wall, {cpu:.1f} s CPU")
    assert cpu < SYNTH_BUDGET_SECONDS, f"python app.py used {cpu:.1f} s CPU ({elapsed:.1f} s wall)"


def test_cdk_json_runs_app_py_and_holds_only_known_context_keys():
    from stacks.settings import CONTEXT_KEYS

    cdk_json = json.loads((REPO / "cdk.json").read_text())
    assert cdk_json["app"].endswith("app.py")
    assert set(cdk_json["context"]) <= set(CONTEXT_KEYS)
