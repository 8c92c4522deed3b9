"""`-setup`, `-check-setup`, `-destroy-setup`: argument plumbing and rendering around setup.py."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from condor_annex import contract
from condor_annex.errors import InvalidInput
from condor_annex.target import session_for

if TYPE_CHECKING:
    from condor_annex.cli.main import CliContext


def _config_file(args: argparse.Namespace) -> Path:
    from condor_annex.user_config import user_config_path

    return Path(args.config_file).expanduser() if args.config_file else user_config_path()


def _region(args: argparse.Namespace, config_file: Path) -> Optional[str]:
    from condor_annex.user_config import read_annex_macros

    if args.region:
        return str(args.region)
    recorded = read_annex_macros(config_file).get(contract.MACRO_AWS_REGION)
    return recorded or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def run(mode: str, args: argparse.Namespace, ctx: CliContext) -> int:
    from condor_annex import setup

    config_file = _config_file(args)
    region = _region(args, config_file)

    def progress(line: str) -> None:
        if not args.json:
            ctx.stderr.write(f"  {line}\n")
            ctx.stderr.flush()

    if mode == "setup":
        if not region:
            raise InvalidInput("no AWS region given", next_step="pass -aws-region REGION")
        keys = tuple(Path(p).expanduser() for p in args.setup)
        credentials = (keys[0], keys[1] if len(keys) > 1 else None) if keys else None
        result = setup.run_setup(
            region=region,
            pool_cidrs=list(args.pool_cidr),
            config_file=config_file,
            progress=progress,
            credentials_files=credentials,
            profile=args.profile,
        )
        if args.json:
            from condor_annex.cli.render import to_json

            ctx.stdout.write(to_json(result) + "\n")
        else:
            ctx.stdout.write(
                f"Setup {result.stack_name} in {result.region} is ready; "
                f"{len(result.outputs)} settings written to {result.config_file}.\n"
            )
        return 0

    session = session_for(region, args.profile)
    if mode == "check-setup":
        collector = args.collector
        if collector is None and ctx.collector_lookup is not None:
            collector = ctx.collector_lookup()
        check = setup.check_setup(
            session=session,
            config_file=config_file,
            collector=collector,
            connectivity_probe=ctx.setup_connectivity_probe,
        )
        if args.json:
            from condor_annex.cli.render import to_json

            ctx.stdout.write(to_json(check) + "\n")
        else:
            for line in check.checked:
                ctx.stdout.write(f"ok: {line}\n")
            for problem in check.problems:
                ctx.stdout.write(f"PROBLEM: {problem.what} — next: {problem.next_step}\n")
        setup.raise_for_problems(check)
        return 0

    # destroy-setup
    if not region:
        raise InvalidInput("no AWS region given", next_step="pass -aws-region REGION")
    from condor_annex.user_config import read_annex_macros

    stack_name = (
        read_annex_macros(config_file).get(contract.MACRO_STACK_NAME) or contract.STACK_NAME
    )
    where = f"{region} (profile {args.profile})" if args.profile else f"{region}"
    if not args.yes and not (ctx.confirm or _no_tty_confirm)(
        f"Remove the condor_annex setup {stack_name} in {where}? (the account is checked "
        "against the one recorded at -setup before anything is removed)"
    ):
        ctx.stderr.write("condor_annex: nothing was changed.\n")
        return 1
    setup.destroy_setup(
        session=session,
        config_file=config_file,
        stack_name=stack_name,
        region=region or "",
        progress=progress,
        profile=args.profile,
    )
    ctx.stdout.write(f"Setup {stack_name} removed; its macros were taken out of {config_file}.\n")
    return 0


def _no_tty_confirm(question: str) -> bool:
    import sys

    if not sys.stdin.isatty():
        raise InvalidInput("confirmation needed but there is no terminal", next_step="pass -yes")
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in {"y", "yes"}
