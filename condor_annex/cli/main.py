"""`condor_annex`: parse, call one verb, render its result; errors are one line on stderr.

Exit codes (docs/CLI.md): 0 success; 1 other error; 2 invalid input; 3 setup missing or
incomplete; 4 credentials; 5 throttled; 6 capacity/quota; 7 connectivity; 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Optional

from botocore.exceptions import BotoCoreError, ClientError

from condor_annex.cli import parser as cli_parser
from condor_annex.cli.commands import COMMANDS
from condor_annex.cli.context import EXIT_INTERRUPTED, CliContext
from condor_annex.errors import AnnexError, translate_aws_error

__all__ = ["CliContext", "main"]


_AFTER_INTERRUPT = {
    "off": "run the same `off` again to finish (it is safe to repeat)",
    "extend": "run `status` to see which lease is in force, then extend again",
    "setup": "re-run `-setup` (it resumes safely)",
    "destroy-setup": "re-run `-destroy-setup` to finish",
}


def _interrupted(mode: str, exc: KeyboardInterrupt, ctx: CliContext) -> int:
    signal_name = getattr(exc, "signal_name", "SIGINT")
    verb = {"status": "status", "off": "off"}.get(mode, f"-{mode}" if "setup" in mode else mode)
    next_step = _AFTER_INTERRUPT.get(mode, "nothing was changed")
    ctx.stderr.write(f"condor_annex: {verb} interrupted by {signal_name} — next: {next_step}\n")
    return EXIT_INTERRUPTED


def main(argv: Optional[Sequence[str]] = None, ctx: Optional[CliContext] = None) -> int:
    """Run condor_annex; returns the exit code (documented in docs/CLI.md).

    Run as the command (no `ctx`), SIGINT, SIGTERM and SIGHUP all interrupt it the same way
    (`condor_annex.interrupts`): a create rolls back, a second signal is acknowledged.
    """
    if ctx is None:
        from condor_annex import interrupts

        def acknowledge(text: str) -> None:
            sys.stderr.write(f"condor_annex: {text}\n")
            sys.stderr.flush()

        interrupts.install(acknowledge)
    ctx = ctx or CliContext()
    mode = "condor_annex"
    try:
        args = cli_parser.parse_args(argv)
        mode = cli_parser.mode_of(args)
        return COMMANDS[mode](args, ctx)
    except SystemExit as exc:  # -help / -version
        return int(exc.code or 0)
    except KeyboardInterrupt as exc:
        return _interrupted(mode, exc, ctx)
    except AnnexError as exc:
        ctx.stderr.write(f"condor_annex: {exc}\n")
        return exc.exit_code
    except (ClientError, BotoCoreError) as exc:
        error = translate_aws_error(exc, action="complete the request")
        ctx.stderr.write(f"condor_annex: {error}\n")
        return error.exit_code
    except Exception as exc:  # a bug: one line, not a traceback, and what to do about it
        ctx.stderr.write(
            f"condor_annex: internal error: {type(exc).__name__}: {exc} — next: rerun with "
            "CONDOR_ANNEX_DEBUG=1 for the traceback and report it\n"
        )
        if os.environ.get("CONDOR_ANNEX_DEBUG"):
            raise
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
