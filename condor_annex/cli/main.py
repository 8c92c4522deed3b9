"""`condor_annex`: parse, call one verb, render its result; errors are one line on stderr.

Exit codes (docs/CLI.md): 0 success; 1 other error; 2 invalid input; 3 setup missing or
incomplete; 4 credentials; 5 throttled; 6 capacity/quota; 7 connectivity; 130 interrupted.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from condor_annex import contract
from condor_annex.annex_settings import NEEDED_FOR_STATUS, AnnexClients, Settings, load_settings
from condor_annex.cli import parser as cli_parser
from condor_annex.cli import render
from condor_annex.errors import AnnexError, InvalidInput, translate_aws_error

EXIT_OK = 0
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
    confirm: Optional[Callable[[str], bool]] = None
    collector_lookup: Optional[Callable[[], Optional[str]]] = None
    setup_connectivity_probe: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None
    """For -check-setup: the connectivity function's view (default: invoke the Lambda)."""


def _default_confirm(stderr: TextIO) -> Callable[[str], bool]:
    def confirm(question: str) -> bool:
        if not sys.stdin.isatty():
            raise InvalidInput(
                "confirmation needed but there is no terminal", next_step="pass -yes"
            )
        stderr.write(f"{question} [y/N] ")
        stderr.flush()
        return sys.stdin.readline().strip().lower() in {"y", "yes"}

    return confirm


def _collector(args: argparse.Namespace, ctx: CliContext) -> Optional[str]:
    if args.collector:
        return str(args.collector)
    if ctx.collector_lookup is not None:
        return ctx.collector_lookup()
    from condor_annex.user_config import condor_params

    return condor_params(["COLLECTOR_HOST"]).get("COLLECTOR_HOST")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(Path(args.config_file).expanduser() if args.config_file else None)


def _clients(
    args: argparse.Namespace,
    ctx: CliContext,
    settings: Settings,
    needed: tuple[contract.StackOutput, ...] = NEEDED_FOR_STATUS,
) -> AnnexClients:
    """Clients for the region in use, once the user config says a setup exists there."""
    from condor_annex.annex_settings import require_setup

    region = args.region or settings.region or None
    require_setup(settings, needed, region or "")
    if ctx.clients is not None:
        return ctx.clients(region, args.profile)
    return AnnexClients.from_session(region=region, profile=args.profile)


def _user_data(args: argparse.Namespace) -> Optional[bytes]:
    if args.user_data is not None:
        return str(args.user_data).encode()
    if args.user_data_file is not None:
        try:
            return Path(args.user_data_file).read_bytes()
        except OSError as exc:
            raise InvalidInput(
                f"cannot read the user data file {args.user_data_file}: {exc.strerror}"
            ) from None
    return None


def _path(value: Optional[str]) -> Optional[Path]:
    return Path(value).expanduser() if value else None


def run_create(args: argparse.Namespace, ctx: CliContext) -> int:
    from condor_annex import cost, spot
    from condor_annex.annex_settings import (
        NEEDED_FOR_ON_DEMAND,
        NEEDED_FOR_SPOT_FLEET,
        require_setup,
    )
    from condor_annex.create import (
        CreateHooks,
        CreateRequest,
        cost_preview,
        create_annex,
        spot_plan,
        validate_request,
    )

    duration = (
        cli_parser.parse_duration(args.duration)
        if args.duration
        else contract.LEASE_DEFAULT_SECONDS
    )
    idle = cli_parser.parse_duration(args.idle) if args.idle else contract.IDLE_DEFAULT_SECONDS
    collector = _collector(args, ctx)
    if not collector:
        raise InvalidInput(
            "no collector is known",
            next_step="pass -collector HOST[:PORT] or set COLLECTOR_HOST in the HTCondor config",
        )
    settings = _settings(args)
    instance_types = [t.strip() for v in args.instance_types for t in v.split(",") if t.strip()]
    cap_text = args.max_price_per_hour or settings.max_price_per_hour
    max_price = cost.parse_price(cap_text) if cap_text else None
    request = CreateRequest(
        annex_name=args.annex_name,
        collector=collector,
        count=args.count,
        slots=args.slots,
        duration_seconds=duration,
        idle_seconds=idle,
        instance_type=instance_types[0] if instance_types else CreateRequest.instance_type,
        fallback_instance_types=tuple(instance_types[1:]),
        max_price_per_hour=max_price,
        aws_fleet=settings.aws_fleet if args.aws_fleet is None else bool(args.aws_fleet),
        ec2_fleet_type=args.ec2_fleet_type,
        on_demand_allocation_strategy=args.on_demand_allocation_strategy,
        ami_id=args.ami_id,
        spot_instance_types=spot.parse_instance_types(args.spot_instance_types),
        spot_fleet_config_file=_path(args.spot_fleet_config_file),
        spot_allocation_strategy=args.spot_allocation_strategy,
        spot_fleet_type=args.spot_fleet_type,
        key_name=args.key_name,
        subnet_ids=tuple(args.subnet_ids),
        tags=tuple((k, v) for k, v in args.tag),
        owner=args.owner or getpass.getuser(),
        user_data=_user_data(args),
        start_expression=args.start_expression,
        token_file=_path(args.token_file),
        signing_key_file=_path(args.signing_key_file),
        trust_domain=args.trust_domain,
    )
    # Everything that needs no AWS call is checked before asking for confirmation.
    validate_request(request)
    spot_fleet = request.kind == contract.FLEET_KIND_SPOT_FLEET
    require_setup(
        settings,
        NEEDED_FOR_SPOT_FLEET if spot_fleet else NEEDED_FOR_ON_DEMAND,
        args.region or settings.region,
    )
    hooks = ctx.create_hooks or CreateHooks()
    clients = _clients(args, ctx, settings)
    # The bill before anything starts; over the cap is refused here, before any AWS change.
    preview = cost_preview(
        request, clients, plan=spot_plan(request, settings), cache_dir=hooks.price_cache_dir
    )
    cost.check_cap(preview, aws_enforces_cap=request.kind != contract.FLEET_KIND_ON_DEMAND)
    if not args.json:
        ctx.stderr.write(render.render_preview(preview) + "\n")
        ctx.stderr.flush()
    if not args.yes:
        if request.kind == contract.FLEET_KIND_EC2_FLEET:
            size = f"an EC2 Fleet ({request.fleet_type}) of {request.size} {request.market} " + (
                "instance(s)" if request.market == "on-demand" else "slot(s)"
            )
        elif request.count is not None:
            size = f"{request.count} on-demand {request.instance_type} instance(s)"
        else:
            size = f"a Spot Fleet of {request.slots} slot(s)"
        question = (
            f"Start {size} as annex {request.annex_name} for "
            f"{duration / 3600:.2f} h (idle shutdown after {idle / 60:.0f} min)?"
        )
        if not preview.known:
            question = f"The price of this annex is UNKNOWN (see above). {question}"
        if not (ctx.confirm or _default_confirm(ctx.stderr))(question):
            ctx.stderr.write("condor_annex: nothing was started.\n")
            return 1
    if hooks.progress is None and not args.json:

        def progress(step: str, state: str) -> None:
            if state == "done":
                ctx.stderr.write(f"  {step}: done\n")
                ctx.stderr.flush()

        hooks.progress = progress
    result = create_annex(request, settings=settings, clients=clients, hooks=hooks, preview=preview)
    ctx.stdout.write((render.to_json(result) if args.json else render.render_create(result)) + "\n")
    return EXIT_OK


def run_extend(args: argparse.Namespace, ctx: CliContext) -> int:
    from condor_annex.create import extend_lease

    settings = _settings(args)
    result = extend_lease(
        args.annex_name,
        cli_parser.parse_duration(args.duration),
        settings=settings,
        clients=_clients(args, ctx, settings),
    )
    ctx.stdout.write((render.to_json(result) if args.json else render.render_extend(result)) + "\n")
    return EXIT_OK


def run_status(args: argparse.Namespace, ctx: CliContext) -> int:
    from condor_annex.status import annex_status, htcondor_pool_view

    settings = _settings(args)
    pool_view = ctx.pool_view
    if pool_view is None:
        collector = _collector(args, ctx)
        pool_view = htcondor_pool_view(collector) if collector else None
    report = annex_status(
        settings=settings,
        clients=_clients(args, ctx, settings),
        annex_name=args.annex_name,
        pool_view=pool_view,
    )
    ctx.stdout.write((render.to_json(report) if args.json else render.render_status(report)) + "\n")
    return EXIT_OK


def run_off(args: argparse.Namespace, ctx: CliContext) -> int:
    from condor_annex.off import annex_off, htcondor_pool_shutdown

    settings = _settings(args)
    if not args.yes and not (ctx.confirm or _default_confirm(ctx.stderr))(
        f"Terminate every instance of annex {args.annex_name} now?"
    ):
        ctx.stderr.write("condor_annex: nothing was changed.\n")
        return 1
    shutdown = ctx.pool_shutdown
    if shutdown is None:
        collector = _collector(args, ctx)
        shutdown = htcondor_pool_shutdown(collector) if collector else None
    result = annex_off(
        args.annex_name,
        settings=settings,
        clients=_clients(args, ctx, settings),
        pool_shutdown=shutdown,
    )
    ctx.stdout.write((render.to_json(result) if args.json else render.render_off(result)) + "\n")
    return EXIT_OK


def run_setup_verb(mode: str, args: argparse.Namespace, ctx: CliContext) -> int:
    """-setup / -check-setup / -destroy-setup: thin wrappers over condor_annex.setup."""
    from condor_annex.cli import setup_verbs

    return setup_verbs.run(mode, args, ctx)


_RUNNERS: dict[str, Callable[[argparse.Namespace, CliContext], int]] = {
    "create": run_create,
    "extend": run_extend,
    cli_parser.VERB_STATUS: run_status,
    cli_parser.VERB_OFF: run_off,
}


def main(argv: Optional[Sequence[str]] = None, ctx: Optional[CliContext] = None) -> int:
    """Run condor_annex; returns the exit code (documented in docs/CLI.md)."""
    ctx = ctx or CliContext()
    try:
        args = cli_parser.parse_args(argv)
        mode = cli_parser.mode_of(args)
        if mode in ("setup", "check-setup", "destroy-setup"):
            return run_setup_verb(mode, args, ctx)
        return _RUNNERS[mode](args, ctx)
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
