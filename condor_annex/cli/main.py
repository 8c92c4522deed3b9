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


def main(argv: Optional[Sequence[str]] = None, ctx: Optional[CliContext] = None) -> int:
    """Run condor_annex; returns the exit code (documented in docs/CLI.md)."""
    ctx = ctx or CliContext()
    try:
        args = cli_parser.parse_args(argv)
        mode = cli_parser.mode_of(args)
        return COMMANDS[mode](args, ctx)
    except SystemExit as exc:  # -help / -version
        return int(exc.code or 0)
    except KeyboardInterrupt:
        ctx.stderr.write("condor_annex: interrupted (a create in progress was rolled back).\n")
        return EXIT_INTERRUPTED
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
