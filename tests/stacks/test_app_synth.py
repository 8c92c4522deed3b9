"""`python app.py` is an ordinary CDK app: it honours CDK_OUTDIR.

How long the synth takes is measured by `bench/bench_setup.py` against `cdk synth` in the same
run, not asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from condor_annex import contract
from tests.fixtures.cdk import PLACEHOLDER_VPC_ID

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.cdk
def test_app_synthesizes_into_cdk_outdir(tmp_path):
    env = {
        **os.environ,
        "CDK_OUTDIR": str(tmp_path),
        "CDK_CONTEXT_JSON": json.dumps({"vpcId": PLACEHOLDER_VPC_ID}),
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    }
    result = subprocess.run(
        [sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    stacks = [a for a in manifest["artifacts"].values() if a["type"] == "aws:cloudformation:stack"]
    assert [s["properties"]["stackName"] for s in stacks] == [contract.STACK_NAME]
    assert (tmp_path / stacks[0]["properties"]["templateFile"]).is_file()


def test_cdk_json_runs_app_py_and_holds_only_known_context_keys():
    from stacks.settings import CONTEXT_KEYS

    cdk_json = json.loads((REPO / "cdk.json").read_text())
    assert cdk_json["app"].endswith("app.py")
    assert set(cdk_json["context"]) <= set(CONTEXT_KEYS)
