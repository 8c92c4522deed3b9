"""The agent's own copies of the EC2, IAM and S3 API models, cut down to the calls it makes.

Why: making a client parses that service's whole API model, and EC2's is about 5 MB of JSON
(over 800 operations): parsing it cost the agent's cold start more than any other step, to make
one DescribeInstances call. Likewise the first client parses `endpoints.json` (1.2 MB, every
service in every partition). botocore looks for its data in its `data_path` directories before
its own, so a session given `MODELS_DIR` parses these small files instead; requests and
responses are byte-for-byte the same (each model keeps its operations' shapes unchanged, minus
prose; the endpoints keep every partition and region, and the three services' entries whole).

The files are data, not code: a model of an older botocore stays valid for the API version it
names. When the agent calls a new operation, add it to `AGENT_OPERATIONS` and regenerate:

    .venv/bin/python -m condor_annex.agent.service_models
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).with_name("models")
MODEL_FILE = "service-2.json"
ENDPOINTS_FILE = "endpoints.json"

AGENT_OPERATIONS: dict[str, tuple[str, ...]] = {
    "ec2": ("DescribeInstances", "DescribeSpotFleetRequests", "DescribeFleets"),
    # GetRolePolicy is the one call of a normal boot; the rest is the full scan's fallback.
    "iam": (
        "GetRolePolicy",
        "GetInstanceProfile",
        "ListRolePolicies",
        "ListAttachedRolePolicies",
        "GetPolicy",
        "GetPolicyVersion",
    ),
    "s3": ("GetObject",),
}
"""Service → the operations (API names) of every call the agent can make."""


def _shapes_reached(shapes: dict[str, Any], roots: Iterable[str]) -> set[str]:
    reached: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in reached:
            continue
        reached.add(name)
        shape = shapes[name]
        pending += [shape[part]["shape"] for part in ("member", "key", "value") if part in shape]
        pending += [member["shape"] for member in shape.get("members", {}).values()]
    return reached


def _without_prose(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_prose(v) for k, v in value.items() if k != "documentation"}
    if isinstance(value, list):
        return [_without_prose(v) for v in value]
    return value


def trimmed_model(full: dict[str, Any], operations: Iterable[str]) -> dict[str, Any]:
    """`full` (a botocore service-2 model) with only `operations` and the shapes they reach."""
    kept = {name: full["operations"][name] for name in operations}
    roots = [
        ref["shape"]
        for operation in kept.values()
        for ref in [operation.get("input"), operation.get("output"), *operation.get("errors", [])]
        if ref
    ]
    shapes = full["shapes"]
    model = {
        "version": full.get("version", "2.0"),
        "metadata": full["metadata"],
        "operations": kept,
        "shapes": {name: shapes[name] for name in sorted(_shapes_reached(shapes, roots))},
    }
    trimmed: dict[str, Any] = _without_prose(model)
    return trimmed


def trimmed_endpoints(full: dict[str, Any], services: Iterable[str]) -> dict[str, Any]:
    """botocore's `endpoints.json` with only `services` (endpoint prefixes) in each partition."""
    wanted = set(services)
    partitions = [
        {**partition, "services": {k: v for k, v in partition["services"].items() if k in wanted}}
        for partition in full["partitions"]
    ]
    return {**full, "partitions": partitions}


def model_path(service: str, api_version: str) -> Path:
    return MODELS_DIR / service / api_version / MODEL_FILE


def regenerate() -> list[Path]:
    """Write the trimmed models from the installed botocore's (a development step)."""
    import botocore.session

    loader = botocore.session.get_session().get_component("data_loader")
    written = []
    prefixes = []
    for service, operations in AGENT_OPERATIONS.items():
        api_version = loader.determine_latest_version(service, "service-2")
        # load_data, not load_service_model: botocore merges its sdk-extras at load time itself.
        full = loader.load_data(f"{service}/{api_version}/service-2")
        prefixes.append(full["metadata"]["endpointPrefix"])
        path = model_path(service, api_version)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(trimmed_model(full, operations), indent=0, sort_keys=True))
        written.append(path)
    endpoints = MODELS_DIR / ENDPOINTS_FILE
    endpoints.write_text(
        json.dumps(trimmed_endpoints(loader.load_data("endpoints"), prefixes), indent=0)
    )
    written.append(endpoints)
    return written


if __name__ == "__main__":
    for written_path in regenerate():
        print(written_path)
    sys.exit(0)
