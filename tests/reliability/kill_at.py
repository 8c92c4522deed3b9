"""Run `condor_annex` and SIGKILL it at one create step: a kill at a known instant, not a race.

    python -m tests.reliability.kill_at STEP STATE ARGV...

STEP/STATE are a create progress event (`tarball done`, `lease done`, ...). The process kills
itself inside the progress callback, so no AWS request of its own is in flight when it dies and
what it leaves is exactly what the steps before that instant made.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from condor_annex.cli.main import CliContext, main
from condor_annex.create import CreateHooks


def run(argv: Sequence[str]) -> int:
    step, state, *rest = argv

    def progress(at_step: str, at_state: str) -> None:
        print(f"  {at_step}: {at_state}", file=sys.stderr, flush=True)
        if (at_step, at_state) == (step, state):
            os.kill(os.getpid(), signal.SIGKILL)

    return main(rest, CliContext(create_hooks=CreateHooks(progress=progress)))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
