"""Run `condor_annex` and send it signals at known instants: no race, the same every run.

    python -m tests.reliability.signal_at SIGNAL STEP STATE EXTRA ARGV...

The process installs the CLI's signal handling (as the `condor_annex` command does), then sends
itself SIGNAL inside the create progress callback for STEP/STATE (`lease done`), and EXTRA more
of the same signal as its rollback begins (inside the rollback, before its first undo step).
STEP `after` sends the signal once the create has finished, just before its result is printed.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from condor_annex import create, interrupts
from condor_annex.cli import render
from condor_annex.cli.main import CliContext, main
from condor_annex.create import CreateHooks


def run(argv: Sequence[str]) -> int:
    name, step, state, extra, *rest = argv
    signum = getattr(signal, name)

    def send() -> None:
        os.kill(os.getpid(), signum)

    def progress(at_step: str, at_state: str) -> None:
        print(f"  {at_step}: {at_state}", file=sys.stderr, flush=True)
        if (at_step, at_state) == (step, state):
            send()

    undo_run = create._Undo.run

    def rollback(self: Any) -> None:
        for _ in range(int(extra)):
            send()
        undo_run(self)

    create._Undo.run = rollback  # type: ignore[method-assign]
    if step == "after":
        render_create = render.render_create

        def late(result: Any) -> str:
            send()
            return render_create(result)

        render.render_create = late  # type: ignore[assignment]

    def acknowledge(text: str) -> None:
        print(f"condor_annex: {text}", file=sys.stderr, flush=True)

    interrupts.install(acknowledge)
    return main(rest, CliContext(create_hooks=CreateHooks(progress=progress)))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
