"""docs/SECURITY.md's trust model is what the IAM engine decides for the deployed setup now.

The table between the `trust-model` markers is generated: the setup stack is deployed into the
local AWS, and every principal it creates (the operator policy, the instance, lease, sweep,
scheduler and Spot Fleet roles) is asked every question of `annex_sandbox.authz.trust_model`
about its own annex, another annex and a resource of no annex. A policy change that changes an
answer fails this test until the page is regenerated:

    ANNEX_WRITE_SECURITY_DOC=1 .venv/bin/pytest tests/integration/test_security_doc.py
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from annex_sandbox.authz.trust_model import Principal, Setup, render, trust_table
from annex_sandbox.authz.world import Caller
from condor_annex import contract

PAGE = Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md"
BEGIN, END = "<!-- trust-model: generated, do not edit -->", "<!-- /trust-model -->"
WRITE_ENV = "ANNEX_WRITE_SECURITY_DOC"


def _principals(aws: Any, outputs: dict[str, str]) -> list[Principal]:
    iam, functions = aws.client("iam"), aws.client("lambda")
    try:
        operator = iam.get_user(UserName="annex-operator")["User"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        operator = iam.create_user(UserName="annex-operator")["User"]["Arn"]
        # Every operator policy the setup outputs (the operator's grants may be split by verb
        # to stay under IAM's managed-policy size): an operator attaches them all.
        for key, arn in outputs.items():
            if key.startswith("Operator") and key.endswith("PolicyArn"):
                iam.attach_user_policy(UserName="annex-operator", PolicyArn=arn)

    def function_role(output: contract.StackOutput) -> str:
        return str(
            functions.get_function(FunctionName=outputs[output.key])["Configuration"]["Role"]
        )

    return [
        Principal(
            "operator (operator policies)",
            caller=Caller("user", operator, aws.account_id, "annex-operator"),
        ),
        Principal("instance role", role_arn=outputs[contract.OUTPUT_INSTANCE_ROLE_ARN.key]),
        Principal(
            "lease function role", role_arn=function_role(contract.OUTPUT_LEASE_FUNCTION_ARN)
        ),
        Principal(
            "sweep function role", role_arn=function_role(contract.OUTPUT_SWEEP_FUNCTION_ARN)
        ),
        Principal("scheduler role", role_arn=outputs[contract.OUTPUT_SCHEDULER_ROLE_ARN.key]),
        Principal("Spot Fleet role", role_arn=outputs[contract.OUTPUT_SPOT_FLEET_ROLE_ARN.key]),
    ]


def _table(aws: Any, outputs: dict[str, str]) -> str:
    setup = Setup(
        account=aws.account_id,
        region=aws.region,
        bucket=outputs[contract.OUTPUT_CONFIG_BUCKET.key],
        instance_profile_arn=outputs[contract.OUTPUT_INSTANCE_PROFILE_ARN.key],
        lease_function_arn=outputs[contract.OUTPUT_LEASE_FUNCTION_ARN.key],
        annex_tag=contract.TAG_ANNEX_NAME,
        config_key=contract.config_key,
        lease_key=contract.lease_key,
        schedule_name=contract.schedule_name,
    )
    rows = trust_table(aws.state.authorizer, setup, _principals(aws, outputs))
    return render(rows)


def _generated_block(page: str) -> str:
    match = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), page, re.S)
    assert match, f"docs/SECURITY.md has no {BEGIN} … {END} block"
    return match.group(1)


def test_security_page_states_what_the_engine_decides(aws, setup_outputs) -> None:
    table = _table(aws, setup_outputs)
    page = PAGE.read_text()
    if os.environ.get(WRITE_ENV):
        _generated_block(page)
        start, end = page.index(BEGIN) + len(BEGIN), page.index(END)
        PAGE.write_text(page[:start] + "\n" + table + page[end:])
        page = PAGE.read_text()
    assert _generated_block(page) == table, (
        f"docs/SECURITY.md is stale: regenerate it with {WRITE_ENV}=1 "
        "pytest tests/integration/test_security_doc.py"
    )
    # The table answers: the operator ends its annexes, never what no annex owns.
    lines = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in table.splitlines()}
    terminate = lines[("operator (operator policies)", "terminate an instance")]
    assert terminate.rstrip(" |").endswith("| deny"), terminate
    assert "**allow**" in terminate


def test_a_changed_policy_changes_the_table(aws, setup_outputs) -> None:
    """The table is the engine's answer, not a copy: a role given `*` answers allow everywhere."""
    role = setup_outputs[contract.OUTPUT_INSTANCE_ROLE_ARN.key].rsplit("/", 1)[-1]
    before = _table(aws, setup_outputs)
    aws.client("iam").put_role_policy(
        RoleName=role,
        PolicyName="everything",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    aws.state.authorizer.world.invalidate()
    after = _table(aws, setup_outputs)
    assert before != after
    instance_rows = [line for line in after.splitlines() if line.startswith("| instance role |")]
    assert instance_rows and all("deny" not in line for line in instance_rows)
