"""`python -m bench [--quick] [--only NAME ...] [--publish]`: run the benchmarks.

Each benchmark prints its numbers and ratios against a baseline measured in the same run, and
writes `bench/results/<name>.json` and its plot(s) `bench/results/*.png`. `--publish` also
copies the plots to docs/img/ (what docs/PERFORMANCE.md shows). A benchmark whose piece is
missing prints `SKIPPED: <reason>` and the others still run. Exit status: 0 when every benchmark
that ran met its correctness checks (e.g. zero failed boots), 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Optional

from bench.harness import (
    DOCS_IMG_DIR,
    RESULTS_DIR,
    Context,
    Result,
    Skipped,
    current_commit,
    publish_plots,
    write_json,
)

BENCHMARKS: dict[str, str] = {
    "agent": "bench.bench_agent",
    "scale": "bench.bench_scale",
    "lease": "bench.bench_lease",
    "status": "bench.bench_status",
    "setup": "bench.bench_setup",
    "pool": "bench.bench_pool",
}
"""Name → module with `run(ctx) -> Result`, in the order they run."""


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (about 3 minutes)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help="copy plots to docs/img/ and rewrite the results block of docs/PERFORMANCE.md",
    )
    parser.add_argument("--scale", type=int, help="instances in the scale benchmark (default 1000)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the instance roots and logs under /tmp"
    )
    return parser.parse_args(argv)


def _forget(name: str) -> None:
    """Drop an earlier run's result of a benchmark that did not run now (never report stale numbers)."""
    (RESULTS_DIR / f"{name}.json").unlink(missing_ok=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse(argv)
    ctx = Context(
        quick=args.quick,
        results_dir=RESULTS_DIR,
        publish_dir=DOCS_IMG_DIR if args.publish else None,
        scale=args.scale,
        command=" ".join(
            [".venv/bin/python -m bench", *(argv if argv is not None else sys.argv[1:])]
        ),
    )
    names = [n for n in BENCHMARKS if not args.only or n in args.only]
    outcome: dict[str, str] = {}
    started = time.perf_counter()
    for name in names:
        print(f"== {name}", flush=True)
        began = time.perf_counter()
        try:
            run: Callable[[Context], Result] = importlib.import_module(BENCHMARKS[name]).run
            result = run(ctx)
        except Skipped as skip:
            print(f"  SKIPPED: {skip}", flush=True)
            outcome[name] = f"skipped: {skip}"
            _forget(name)
            continue
        except ImportError as error:
            print(f"  SKIPPED: a piece it measures is missing ({error})", flush=True)
            outcome[name] = f"skipped: {error}"
            _forget(name)
            continue
        except Exception:
            traceback.print_exc()
            outcome[name] = "error"
            _forget(name)
            continue
        result.seconds = time.perf_counter() - began
        path = write_json(ctx, result)
        publish_plots(ctx, result)
        outcome[name] = "failed" if result.failures else "ok"
        plots = ", ".join(str(p.relative_to(RESULTS_DIR.parent.parent)) for p in result.plots)
        print(
            f"  -> {path.name}{'; ' + plots if plots else ''} ({result.seconds:.0f}s)", flush=True
        )
    total = time.perf_counter() - started
    if not args.keep:
        from bench.world import remove_scratch

        remove_scratch()
    print(f"== done in {total:.0f}s: {json.dumps(outcome)}", flush=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "run.json").write_text(
        json.dumps({"argv": list(argv or sys.argv[1:]), "quick": ctx.quick, "seconds": round(total, 1),
                    "outcome": outcome, "commit": current_commit()}, indent=2) + "\n"
    )  # fmt: skip
    if args.publish:
        from bench.report import publish

        document = DOCS_IMG_DIR.parent / "PERFORMANCE.md"
        publish(RESULTS_DIR, document)
        print(f"== results written into {document.relative_to(DOCS_IMG_DIR.parent.parent)}")
    return 1 if any(v in ("failed", "error") for v in outcome.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
