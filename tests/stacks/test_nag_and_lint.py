"""cdk-nag AwsSolutions passes with every finding acknowledged; cfn-lint is clean."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from aws_cdk import App, CfnElement, Stack
from aws_cdk import aws_iam as iam

from stacks.nag import wildcard_finding


def _metadata(synthesized_setup) -> dict[str, list[dict[str, Any]]]:
    path = synthesized_setup.outdir / f"{synthesized_setup.artifact_id}.metadata.json"
    data: dict[str, list[dict[str, Any]]] = json.loads(path.read_text())
    return data


def _acknowledgments(synthesized_setup) -> dict[str, dict[str, str]]:
    """construct path → {rule id: reason}, from the cloud assembly's metadata."""
    found: dict[str, dict[str, str]] = {}
    for path, entries in _metadata(synthesized_setup).items():
        for entry in entries:
            if entry["type"] == "aws:cdk:acknowledged-rules":
                found.setdefault(path, {}).update(entry["data"])
    return found


def test_unacknowledged_finding_fails_the_synth(tmp_path):
    from aws_cdk import aws_s3 as s3

    from stacks.setup_stack import build_setup_app
    from tests.fixtures.cdk import TEST_CONTEXT

    app, stack = build_setup_app(TEST_CONTEXT, str(tmp_path))
    s3.Bucket(stack, "Careless")  # no TLS policy, no access logs: AwsSolutions-S1 and -S10
    with pytest.raises(RuntimeError, match="ValidationFailed") as failure:
        app.synth()
    message = str(failure.value)
    assert "AwsSolutions::AwsSolutions-S1'" in message
    assert "AwsSolutions::AwsSolutions-S10'" in message
    paths = re.findall(r"^\s+(Setup/\S+)", message, flags=re.MULTILINE)
    assert paths and all(p.startswith("Setup/Careless/") for p in paths)


def test_synthesis_leaves_no_warnings(synthesized_setup):
    warnings = [
        (path, entry["data"])
        for path, entries in _metadata(synthesized_setup).items()
        for entry in entries
        if entry["type"] in ("aws:cdk:warning", "aws:cdk:error")
    ]
    assert warnings == []


def test_every_acknowledgment_has_a_reason(synthesized_setup):
    acknowledged = _acknowledgments(synthesized_setup)
    assert acknowledged, "expected acknowledged cdk-nag findings in the assembly metadata"
    for path, rules in acknowledged.items():
        for rule, reason in rules.items():
            assert "AwsSolutions-" in rule, (path, rule)
            assert len(reason) >= 40, (path, rule, reason)


def test_wildcard_finding_ids_match_what_cdk_nag_reports():
    stack = Stack(App(), "Probe")
    assert wildcard_finding(stack, "*") == "AwsSolutions-IAM5[Resource::*]"
    role = iam.Role(stack, "R", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
    logical_id = stack.get_logical_id(cast(CfnElement, role.node.default_child))
    assert wildcard_finding(stack, f"{role.role_arn}/x*") == (
        f"AwsSolutions-IAM5[Resource::<{stack.resolve(logical_id)}.Arn>/x*]"
    )


def test_template_is_cfn_lint_clean(synthesized_setup):
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "cfn-lint"),
            "--ignore-checks",
            "W3005",  # DependsOn also implied by GetAtt: CDK adds both on purpose
            "--",
            str(synthesized_setup.template_path),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
