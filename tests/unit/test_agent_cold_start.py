"""The agent's cold-start discipline: what its entry point loads, and which API models it parses.

Timings live in bench/bench_agent.py; these tests guard the mechanisms that make the start fast:
the entry point does not import boto3 or the subcommands' modules, and the agent's session
parses the trimmed API models (`condor_annex.agent.service_models`), not botocore's full ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import botocore.session
import pytest

from condor_annex.agent.service_models import AGENT_OPERATIONS, MODEL_FILE, MODELS_DIR
from condor_annex.aws import make_client, make_client_session, make_session

_LOADED_BY_IMPORT = (
    "import sys, json, condor_annex.agent.main; "
    "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('boto3', 'condor_annex')))))"
)
_LOADED_BY_CLIENTS = (
    "import sys, condor_annex.agent.main; "
    "from condor_annex.aws import make_client, make_client_session; "
    "from condor_annex.agent.service_models import AGENT_OPERATIONS, MODELS_DIR; "
    "session = make_client_session(region='us-east-1', model_dirs=[MODELS_DIR]); "
    "[make_client(session, service) for service in AGENT_OPERATIONS]; "
    "print('boto3' in sys.modules)"
)


def test_importing_the_agent_loads_neither_boto3_nor_the_subcommands_modules() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LOADED_BY_IMPORT], capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(done.stdout))
    # boto3 comes with the session, after the metadata step; image_check only for `check-image`.
    assert "boto3" not in loaded
    assert "condor_annex.agent.image_check" not in loaded
    outside_the_agent = {
        m for m in loaded if not m.startswith("condor_annex.agent") and m != "condor_annex"
    }
    assert outside_the_agent <= {
        "condor_annex.contract",
        "condor_annex.aws",
        "condor_annex.backoff",
    }


def test_the_agents_clients_come_without_boto3s_resources_and_transfer_manager() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LOADED_BY_CLIENTS], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"


def test_the_agents_session_parses_only_the_trimmed_models() -> None:
    session = make_client_session(region="us-east-1", model_dirs=[MODELS_DIR])
    for service, operations in AGENT_OPERATIONS.items():
        client = make_client(session, service)
        assert sorted(client.meta.service_model.operation_names) == sorted(operations), service


def test_a_session_without_them_still_parses_the_full_models() -> None:
    client = make_client(make_session(region="us-east-1"), "ec2")
    assert "RunInstances" in client.meta.service_model.operation_names


@pytest.mark.parametrize("service", sorted(AGENT_OPERATIONS))
def test_each_trimmed_model_is_complete_and_current(service: str) -> None:
    loader = botocore.session.get_session().get_component("data_loader")
    latest = loader.determine_latest_version(service, "service-2")
    path = MODELS_DIR / service / latest / MODEL_FILE
    # A newer API version in botocore would hide ours (botocore picks the newest version).
    assert path.exists(), "regenerate: .venv/bin/python -m condor_annex.agent.service_models"
    model: dict[str, Any] = json.loads(path.read_text())
    assert sorted(model["operations"]) == sorted(AGENT_OPERATIONS[service])
    shapes = model["shapes"]
    referenced = [
        ref["shape"]
        for operation in model["operations"].values()
        for ref in [operation.get("input"), operation.get("output"), *operation.get("errors", [])]
        if ref
    ]
    for shape in shapes.values():
        referenced += [shape[p]["shape"] for p in ("member", "key", "value") if p in shape]
        referenced += [m["shape"] for m in shape.get("members", {}).values()]
    assert sorted(set(referenced) - set(shapes)) == []


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-3", "cn-north-1", "us-gov-west-1"])
def test_the_trimmed_endpoints_resolve_like_botocores(
    region: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    trimmed = make_client_session(region=region, model_dirs=[MODELS_DIR])
    full = make_session(region=region)
    for service in AGENT_OPERATIONS:
        ours, theirs = make_client(trimmed, service), make_client(full, service)
        assert ours.meta.endpoint_url == theirs.meta.endpoint_url, service
        assert ours.meta.region_name == theirs.meta.region_name, service
        # IAM is global: signed for the partition's home region whatever the instance's region.
        assert ours._request_signer.region_name == theirs._request_signer.region_name, service
