"""Benchmark harness pieces that need no emulator: lease invocation counts, result files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.bench_lease import invocations_per_lifetime
from bench.harness import Context, Result, write_json


def test_old_design_fires_every_five_minutes_for_the_whole_lease() -> None:
    assert invocations_per_lifetime(50 * 60)["old"] == 10


def test_old_design_counts_the_firing_after_a_partial_period() -> None:
    assert invocations_per_lifetime(52 * 60)["old"] == 11


def test_ours_is_one_schedule_plus_the_sweep_share() -> None:
    counts = invocations_per_lifetime(45 * 60, concurrent_annexes=1)
    assert counts["ours"] == pytest.approx(1 + 3)  # three 15-minute sweeps
    shared = invocations_per_lifetime(45 * 60, concurrent_annexes=3)
    assert shared["ours"] == pytest.approx(2)


def test_invocations_refuse_an_empty_lease() -> None:
    with pytest.raises(ValueError):
        invocations_per_lifetime(0)


def test_result_file_holds_summary_data_and_failures(tmp_path: Path) -> None:
    result = Result("demo", lines=["x 2.0x faster"], data={"n": 3}, failures=["one boot failed"])
    path = write_json(Context(results_dir=tmp_path), result)
    written = json.loads(path.read_text())
    assert written["benchmark"] == "demo"
    assert written["data"] == {"n": 3}
    assert written["failures"] == ["one boot failed"]
    assert "load_average_1m" in written["environment"]
