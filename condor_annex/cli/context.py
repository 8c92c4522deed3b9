"""What every CLI command shares: the context `main` hands it and the lookups it starts from.

Commands (cli/commands.py) import this module, never `cli.main`, so the CLI has no import cycle.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO

from condor_annex import contract
from condor_annex.annex_settings import NEEDED_FOR_STATUS, AnnexClients, Settings, load_settings
from condor_annex.errors import InvalidInput
from condor_annex.target import AwsTarget

EXIT_OK = 0
EXIT_DECLINED = 1
EXIT_INTERRUPTED = 130


@dataclass
class CliContext:
    """What `main` talks to; tests replace parts (the defaults reach AWS, HTCondor and the tty)."""

    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    clients: Optional[Callable[[Optional[str], Optional[str]], AnnexClients]] = None
    create_hooks: Optional[Any] = None
    """A `create.CreateHooks`; its progress callback is filled in by the CLI when unset."""
    pool_view: Optional[Callable[[], set[str]]] = None
    pool_shutdown: Optional[Callable[[str], int]] = None
    pool_remaining: Optional[Callable[[str], int]] = None
    """For off's drain: how many of the annex's daemons the pool still lists."""
    drain_clock: Optional[Any] = None
    """An `off.DrainClock` (tests make time pass without waiting)."""
    run_condor_status: Optional[Callable[[list[str]], tuple[int, str, str]]] = None
    """For `status -- ARGS`: run condor_status with these arguments (default: the real one)."""
    confirm: Optional[Callable[[str], bool]] = None
    collector_lookup: Optional[Callable[[], Optional[str]]] = None
    setup_connectivity_probe: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None
    """For -check-setup: the connectivity function's view (default: invoke the Lambda)."""
    target: Optional[Callable[..., AwsTarget]] = None
    """`target.resolve_target` (tests may replace it)."""


def confirm(ctx: CliContext, question: str) -> bool:
    """Ask on the terminal (or through `ctx.confirm`); without a terminal, say to pass -yes."""
    if ctx.confirm is not None:
        return ctx.confirm(question)
    if not sys.stdin.isatty():
        raise InvalidInput("confirmation needed but there is no terminal", next_step="pass -yes")
    ctx.stderr.write(f"{question} [y/N] ")
    ctx.stderr.flush()
    return sys.stdin.readline().strip().lower() in {"y", "yes"}


def collector_of(args: argparse.Namespace, ctx: CliContext) -> Optional[str]:
    if args.collector:
        return str(args.collector)
    if ctx.collector_lookup is not None:
        return ctx.collector_lookup()
    from condor_annex.user_config import condor_params

    return condor_params(["COLLECTOR_HOST"]).get("COLLECTOR_HOST")


def config_file_of(args: argparse.Namespace) -> Path:
    from condor_annex.user_config import user_config_path

    return Path(args.config_file).expanduser() if args.config_file else user_config_path()


def region_of(args: argparse.Namespace, config_file: Path) -> Optional[str]:
    from condor_annex.user_config import read_annex_macros

    if args.region:
        return str(args.region)
    recorded = read_annex_macros(config_file).get(contract.MACRO_AWS_REGION)
    return recorded or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def settings_of(args: argparse.Namespace) -> Settings:
    """The setup and the user's defaults for the region in use (per-region macros win)."""
    return load_settings(
        Path(args.config_file).expanduser() if args.config_file else None, args.region
    )


def target_of(
    args: argparse.Namespace, ctx: CliContext, settings: Settings, action: str
) -> AwsTarget:
    """The one account and region this command acts in (one STS call), refused when it is not
    the account the region's setup was recorded in."""
    from condor_annex.target import check_recorded, resolve_target

    target = (ctx.target or resolve_target)(
        region=args.region or settings.region or None, profile=args.profile, action=action
    )
    check_recorded(
        target,
        account_id=settings.account_id,
        region=settings.region,
        config_file=str(config_file_of(args)),
        action=action,
    )
    return target


def clients_for(
    args: argparse.Namespace,
    ctx: CliContext,
    settings: Settings,
    needed: tuple[contract.StackOutput, ...] = NEEDED_FOR_STATUS,
    *,
    action: str = "reach the annex's AWS account",
    target: Optional[AwsTarget] = None,
) -> AnnexClients:
    """Clients for the account and region of the recorded setup, once one is known to exist."""
    from condor_annex.annex_settings import require_setup

    require_setup(settings, needed, args.region or settings.region or "")
    target = target or target_of(args, ctx, settings, action)
    if ctx.clients is not None:
        return ctx.clients(target.region, args.profile)
    return AnnexClients.from_target(target)


def user_data_of(args: argparse.Namespace) -> Optional[bytes]:
    if args.user_data is not None:
        return str(args.user_data).encode()
    if args.user_data_file is not None:
        from condor_annex.create_request import MAX_USER_DATA_BYTES
        from condor_annex.files import read_input_bytes

        return read_input_bytes(
            Path(args.user_data_file).expanduser(),
            flag="-aws-user-data-file",
            what="user data file",
            max_bytes=MAX_USER_DATA_BYTES,
        )
    return None


def path_of(value: Optional[str]) -> Optional[Path]:
    return Path(value).expanduser() if value else None
