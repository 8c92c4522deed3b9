"""ARNs name the stack's own partition; names derived from `stackName` fit IAM's limits at synth.

IAM rejects a policy naming another partition's ARNs (`MalformedPolicyDocument: Partition "aws" is
not valid`, in aws-cn and aws-us-gov), and a role name over 64 characters fails the deploy halfway
(IAM quotas, "IAM name requirements").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stacks.naming import LONGEST_REGION_NAME, ROLE_NAME_LIMIT
from stacks.settings import SettingsError
from tests.fixtures.cdk import TEST_CONTEXT

REPO = Path(__file__).resolve().parents[2]
COMMERCIAL_ARN = "arn:" + "aws:"
"""Spelled in two parts so this file does not match its own search."""
LONGEST_SUFFIX = "annex-instance"


def test_synthesized_template_names_no_literal_partition(synthesized_setup):
    text = json.dumps(synthesized_setup.template)
    assert COMMERCIAL_ARN not in text
    assert "AWS::Partition" in text


def test_product_source_names_no_literal_partition():
    sources = [REPO / "app.py"] + [
        path
        for folder in ("stacks", "lambda", "condor_annex")
        for path in sorted((REPO / folder).rglob("*"))
        if path.suffix in (".py", ".json", ".sh", ".cfg") and path.is_file()
    ]
    assert len(sources) > 20
    offending = [
        f"{path.relative_to(REPO)}:{number}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if COMMERCIAL_ARN in line
    ]
    assert offending == []


def _build(stack_name: str) -> None:
    from stacks.setup_stack import build_setup_app

    build_setup_app({**TEST_CONTEXT, "stackName": stack_name}, None)


def test_a_stack_name_that_makes_role_names_too_long_is_refused_at_synth():
    longest_allowed = ROLE_NAME_LIMIT - len(f"-{LONGEST_REGION_NAME}-{LONGEST_SUFFIX}")
    with pytest.raises(SettingsError) as refused:
        _build("A" * (longest_allowed + 1))
    message = str(refused.value)
    assert "stackName" in message
    assert f"limit of {ROLE_NAME_LIMIT}" in message
    assert f"at most {longest_allowed} characters" in message
    _build("A" * longest_allowed)


def test_app_py_reports_the_stack_name_limit_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    context = {**TEST_CONTEXT, "stackName": "S" * 60}
    env = {**os.environ, "CDK_OUTDIR": str(tmp_path), "CDK_CONTEXT_JSON": json.dumps(context)}
    done = subprocess.run(
        [sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"limit of {ROLE_NAME_LIMIT}" in done.stderr
