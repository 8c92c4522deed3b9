"""What every benchmark shares: its context, its result record, JSON output and plots."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DOCS_IMG_DIR = REPO_ROOT / "docs" / "img"


class Skipped(Exception):
    """A benchmark cannot run here (a piece it measures is missing); the others still run."""


@dataclass
class Context:
    """Options every benchmark sees."""

    quick: bool = False
    results_dir: Path = RESULTS_DIR
    publish_dir: Path | None = None
    """When set, plots are also copied here (docs/img for docs/PERFORMANCE.md)."""
    scale: int | None = None
    """Override the number of instances of the scale benchmarks."""
    command: str = ".venv/bin/python -m bench"
    """The command line this run was started with (recorded in every result)."""

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


@dataclass
class Result:
    """One benchmark's outcome: printed lines, the JSON data and the plots it wrote."""

    name: str
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(f"  {line}", flush=True)

    def fail(self, reason: str) -> None:
        """Record a correctness failure (the run exits non-zero), and keep measuring."""
        self.failures.append(reason)
        print(f"  FAILED: {reason}", flush=True)


GENERATED = ("docs/PERFORMANCE.*", "docs/img/*", "docs/RELIABILITY.*")
"""Pages the runs themselves rewrite: changes there do not make a run's code "uncommitted"."""


def current_commit(ignore: Sequence[str] = GENERATED) -> str:
    """The commit the working tree is at (`+ uncommitted changes` when the code differs), or ""."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                *(f":!{pattern}" for pattern in ignore),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f"{head} + uncommitted changes" if changed else head


def environment() -> dict[str, Any]:
    """Where (and on which commit) the numbers were measured."""
    return {
        "commit": current_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def write_json(ctx: Context, result: Result) -> Path:
    ctx.results_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.results_dir / f"{result.name}.json"
    payload = {
        "benchmark": result.name,
        "command": ctx.command,
        "quick": ctx.quick,
        "environment": environment(),
        "seconds": round(result.seconds, 3),
        "failures": result.failures,
        "summary": result.lines,
        "data": result.data,
        "plots": [p.name for p in result.plots],
    }
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


def publish_plots(ctx: Context, result: Result) -> None:
    if ctx.publish_dir is None:
        return
    ctx.publish_dir.mkdir(parents=True, exist_ok=True)
    for plot in result.plots:
        shutil.copy2(plot, ctx.publish_dir / plot.name)


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """`with stopwatch() as t: ...` then `t[0]` holds the elapsed seconds."""
    box = [0.0]
    started = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - started


def plt() -> Any:
    """matplotlib.pyplot with the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def save_figure(ctx: Context, result: Result, figure: Any, stem: str) -> Path:
    ctx.results_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.results_dir / f"{stem}.png"
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt().close(figure)
    result.plots.append(path)
    return path


def bar_pair(
    ctx: Context,
    result: Result,
    stem: str,
    title: str,
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    ylabel: str,
) -> Path:
    """Grouped bars: one group per label, one bar per series (e.g. ours beside the baseline)."""
    pyplot = plt()
    figure, axes = pyplot.subplots(figsize=(7, 4))
    width = 0.8 / max(len(series), 1)
    for index, (name, values) in enumerate(series.items()):
        positions = [i + (index - (len(series) - 1) / 2) * width for i in range(len(labels))]
        bars = axes.bar(positions, values, width=width, label=name)
        axes.bar_label(bars, fmt="%.3g", fontsize=8)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend()
    return save_figure(ctx, result, figure, stem)
