"""docs/RELIABILITY.md says only what the reliability tests asserted.

The page's matrix must be exactly the claims recorded in docs/RELIABILITY.json by the last
`make reliability-doc`, every claim backed by an assertion, and every row's test must still
exist. The mutations below (a row edited by hand, a claim recorded without an assertion, a
false claim) show the checks can fail.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.reliability import Row, page_problems, render

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "RELIABILITY.md"
RECORDS = PAGE.with_suffix(".json")


def _rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(RECORDS.read_text())
    return rows


def test_committed_page_is_exactly_its_recorded_assertions() -> None:
    assert page_problems(PAGE.read_text(), _rows()) == []


def test_every_row_names_a_test_that_still_exists() -> None:
    missing = []
    for row in _rows():
        path, name = row["test"].split("::")[0], row["test"].split("::")[1].split("[")[0]
        source = REPO / path
        if not source.exists() or not re.search(rf"^def {name}\(", source.read_text(), re.M):
            missing.append(row["test"])
    assert missing == []


def _sample() -> list[dict[str, Any]]:
    claims = [
        {"text": "exit 2", "asserted": True, "held": True},
        {"text": "left: nothing", "asserted": True, "held": True},
    ]
    return [
        {"area": "input", "case": "-count 0", "claims": claims, "result": "passed",
         "test": "tests/reliability/test_input.py::test_x"},
    ]  # fmt: skip


def test_a_row_edited_by_hand_is_caught() -> None:
    rows = _sample()
    page = render(rows).replace("exit 2", "exit 0")
    assert page_problems(render(rows), rows) == []
    assert any("not recorded" in p for p in page_problems(page, rows))


def test_a_claim_without_an_assertion_is_caught() -> None:
    rows = _sample()
    rows[0]["claims"].append({"text": "lease record kept", "asserted": False, "held": True})
    assert any("no assertion backs" in p for p in page_problems(render(rows), rows))


def test_a_row_with_no_claim_is_caught() -> None:
    rows = _sample()
    rows[0]["claims"] = []
    assert any("no claim" in p for p in page_problems(render(rows), rows))


def test_a_passed_row_with_a_false_claim_is_caught() -> None:
    rows = copy.deepcopy(_sample())
    rows[0]["claims"][0]["held"] = False
    assert any("did not hold" in p for p in page_problems(render(rows), rows))


def test_a_false_claim_fails_the_test_that_makes_it() -> None:
    recorded: list[Any] = []
    row = Row("throttling", "status while EC2 throttles", lambda name, v: recorded.append(v))
    with pytest.raises(AssertionError, match="0 EC2 calls answered with throttling"):
        row.check("0 EC2 calls answered with throttling", 0 > 0)
    assert recorded[-1]["claims"] == [
        {"text": "0 EC2 calls answered with throttling", "asserted": True, "held": False}
    ]


def test_a_failing_assertion_behind_a_claim_fails_it() -> None:
    row = Row("a", "b", lambda name, v: None)

    def refuse() -> None:
        raise AssertionError("nope")

    with pytest.raises(AssertionError, match="nope"):
        row.holds("condor_annex: clear error", refuse)
    assert row.claims[-1]["held"] is False
