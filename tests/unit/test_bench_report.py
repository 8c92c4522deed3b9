"""docs/PERFORMANCE.md's results block is regenerated from one run's JSON files."""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import BEGIN, END, publish


def _results(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    results.mkdir()
    (results / "run.json").write_text(
        json.dumps({"argv": ["--quick"], "seconds": 12.0, "outcome": {}})
    )
    lease = {
        "quick": True,
        "seconds": 3.0,
        "failures": [],
        "environment": {"when": "2026-01-01T00:00:00Z", "cpus": 2, "load_average_1m": 1.0},
        "data": {
            "rows": [
                {"kind": "on-demand", "instances": 10, "function_s": 0.3, "to_all_terminated_s": 0.4,
                 "aws_calls_by_function": 9, "old_mean_latency_after_expiry_s": 150.4,
                 "old_worst_latency_after_expiry_s": 300.4},
            ],
            "invocations": [{"lease_minutes": 50, "concurrent_annexes": 1, "ours": 4.33, "old": 10.0, "ratio": 2.3}],
        },
    }  # fmt: skip
    (results / "lease.json").write_text(json.dumps(lease))
    return results


def test_publish_replaces_only_the_marked_block(tmp_path: Path) -> None:
    document = tmp_path / "PERFORMANCE.md"
    document.write_text(f"# Performance\n\nintro\n\n{BEGIN}\nold numbers\n{END}\n\nafterword\n")
    publish(_results(tmp_path), document)
    text = document.read_text()
    assert "old numbers" not in text
    assert text.startswith("# Performance\n\nintro")
    assert text.rstrip().endswith("afterword")
    assert "Last command: `.venv/bin/python -m bench --quick`" in text
    assert "| on-demand | 10 | 0.30 s | 0.40 s | 9 | 150 s / 300 s |" in text


def test_benchmarks_without_results_are_named_as_not_run(tmp_path: Path) -> None:
    document = tmp_path / "PERFORMANCE.md"
    publish(_results(tmp_path), document)
    text = document.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "### Scale: concurrent boots under the API throttles\n\nNot run" in text


def test_publish_names_the_commit_and_keeps_the_raw_results_beside_the_page(
    tmp_path: Path,
) -> None:
    results = _results(tmp_path)
    run = json.loads((results / "run.json").read_text())
    (results / "run.json").write_text(json.dumps({**run, "commit": "0123456789ab"}))
    lease = json.loads((results / "lease.json").read_text())
    lease["environment"]["commit"] = "0123456789ab"
    (results / "lease.json").write_text(json.dumps(lease))
    document = tmp_path / "PERFORMANCE.md"
    publish(results, document)
    text = document.read_text()
    assert "on commit `0123456789ab`" in text
    raw = json.loads((tmp_path / "PERFORMANCE.json").read_text())
    assert raw["run"]["commit"] == "0123456789ab"
    assert raw["results"]["lease"]["data"]["rows"][0]["function_s"] == 0.3
    assert "computed, not measured" in text  # the old design's latency is labelled as such


def test_pool_waves_are_rendered_with_median_p90_and_create_to_all_visible(
    tmp_path: Path,
) -> None:
    results = _results(tmp_path)
    joined = {"n": 10, "median": 4.25, "p90": 6.5, "mean": 4.5, "p99": 7.0, "min": 3.0,
              "max": 7.1, "stdev": 1.0}  # fmt: skip
    pool = {
        "quick": True,
        "seconds": 60.0,
        "failures": [],
        "environment": {"when": "2026-01-01T00:00:00Z", "cpus": 2, "load_average_1m": 1.0},
        "data": {
            "poll_seconds": 0.25,
            "waves": [
                {"instances": 10, "joined": 10, "create_s": 1.5, "boot_to_join": joined,
                 "agent": {**joined, "median": 1.25}, "create_to_all_visible_s": 12.0,
                 "failures": []},
                {"instances": 50, "joined": 0, "create_s": 2.0, "boot_to_join": None,
                 "agent": None, "create_to_all_visible_s": float("nan"), "failures": ["x"]},
            ],
        },
    }  # fmt: skip
    (results / "pool.json").write_text(json.dumps(pool))
    document = tmp_path / "PERFORMANCE.md"
    publish(results, document)
    text = document.read_text()
    assert "### Boot-to-join with real HTCondor daemons" in text
    assert "| 10 | 10 | 4.2 s / 6.5 s | 1.2 s | 1.5 s | 12.0 s |" in text
    assert "| 50 | 0 | n/a / n/a | n/a | 2.0 s | n/a |" in text
