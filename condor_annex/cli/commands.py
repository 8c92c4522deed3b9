"""Every `condor_annex` command, and the one table `main` dispatches through.

Each command turns parsed arguments into one call of a verb module (create, status, off,
setup) and hands the result to `render`. Commands import verb modules, `context` and `render`;
never `cli.main` and never each other.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from condor_annex import contract
from condor_annex.annex_settings import USER_DEFAULT_MACROS, Settings
from condor_annex.cli import parser as cli_parser
from condor_annex.cli import render
from condor_annex.cli.context import (
    EXIT_DECLINED,
    EXIT_OK,
    CliContext,
    clients_for,
    collector_of,
    config_file_of,
    confirm,
    path_of,
    region_of,
    settings_of,
    target_of,
    user_data_of,
)
from condor_annex.errors import InvalidInput
from condor_annex.target import session_for


def _default_duration(flag: Optional[str], macro: str, value: Optional[str], builtin: int) -> int:
    """flag > macro (seconds, as the old tool read it) > built-in."""
    if flag:
        return cli_parser.parse_duration(flag)
    if value:
        try:
            return cli_parser.parse_duration(value, default_unit="s")
        except InvalidInput as exc:
            raise InvalidInput(
                f"{macro} = {value!r} in your HTCondor user config: {exc.message}",
                next_step=f"fix {macro} (seconds), or pass the flag",
            ) from None
    return builtin


def _owners(args: argparse.Namespace) -> tuple[str, Optional[tuple[str, ...]]]:
    """(recorded owner, whose jobs START admits): -owner list, -no-owner, or the invoking user."""
    if args.no_owner:
        return getpass.getuser(), ()
    if args.owner:
        owners = cli_parser.parse_owners(args.owner)
        return ",".join(owners), owners
    return getpass.getuser(), None


def _spot_fleet_config(
    args: argparse.Namespace, settings: Settings
) -> tuple[Optional[Path], Optional[bytes]]:
    """The Spot Fleet config: the flag (`-` = stdin), else ANNEX_DEFAULT_SFR_CONFIG_FILE."""
    from condor_annex import spot

    value = args.spot_fleet_config_file
    if value is None and args.slots is not None and not args.spot_instance_types:
        value = settings.defaults.spot_fleet_config_file
    if value is None:
        return None, None
    if value == "-":
        return None, sys.stdin.buffer.read(spot.MAX_CONFIG_FILE_BYTES + 1)
    return Path(value).expanduser(), None


def _config_files(args: argparse.Namespace, ctx: CliContext) -> tuple[tuple[str, bytes], ...]:
    if not args.config_dir:
        return ()
    from condor_annex import tarball

    files = tarball.read_config_dir(Path(args.config_dir).expanduser())
    note = tarball.check_config_files(files)
    if note:
        ctx.stderr.write(render.render_note(note))
    return files


def run_create(args: argparse.Namespace, ctx: CliContext) -> int:
    from condor_annex import cost, spot
    from condor_annex.annex_settings import (
        NEEDED_FOR_ON_DEMAND,
        NEEDED_FOR_SPOT_FLEET,
        require_setup,
    )
    from condor_annex.create import CreateHooks, create_annex
    from condor_annex.create_request import CreateRequest, validate_request
    from condor_annex.preflight import check_spot_plan, cost_preview, spot_plan

    settings = settings_of(args)
    defaults = settings.defaults
    duration = _default_duration(
        args.duration,
        USER_DEFAULT_MACROS["lease_duration"],
        defaults.lease_duration,
        contract.LEASE_DEFAULT_SECONDS,
    )
    idle = _default_duration(
        args.idle,
        USER_DEFAULT_MACROS["unclaimed_timeout"],
        defaults.unclaimed_timeout,
        contract.IDLE_DEFAULT_SECONDS,
    )
    collector = collector_of(args, ctx)
    if not collector:
        raise InvalidInput(
            "no collector is known",
            next_step="pass -collector HOST[:PORT] or set COLLECTOR_HOST in the HTCondor config",
        )
    owner, start_owners = _owners(args)
    spot_fleet_config_file, spot_fleet_config_data = _spot_fleet_config(args, settings)
    # flag > ANNEX_DEFAULT_ODI_INSTANCE_TYPE (per region first) > built-in
    type_values = args.instance_types or [defaults.instance_type or ""]
    instance_types = [t.strip() for v in type_values for t in v.split(",") if t.strip()]
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
        ami_id=args.ami_id or defaults.ami_id,
        spot_instance_types=spot.parse_instance_types(args.spot_instance_types),
        spot_fleet_config_file=spot_fleet_config_file,
        spot_fleet_config_data=spot_fleet_config_data,
        spot_allocation_strategy=args.spot_allocation_strategy,
        spot_fleet_type=args.spot_fleet_type,
        key_name=args.key_name or defaults.key_name,
        subnet_ids=tuple(args.subnet_ids),
        tags=tuple((k, v) for k, v in args.tag),
        owner=owner,
        start_owners=start_owners,
        config_files=_config_files(args, ctx),
        user_data=user_data_of(args),
        start_expression=args.start_expression,
        token_file=path_of(args.token_file),
        signing_key_file=path_of(args.signing_key_file),
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
    action = "create the annex"
    target = target_of(args, ctx, settings, action)
    clients = clients_for(args, ctx, settings, action=action, target=target)
    plan = spot_plan(request, settings)
    if plan is not None:
        # The fleet's size and EC2 API shapes, before its price is even looked up.
        check_spot_plan(request, settings, plan, clients.ec2.meta.service_model)
    # The bill before anything starts; over the cap is refused here, before any AWS change.
    preview = cost_preview(request, clients, plan=plan, cache_dir=hooks.price_cache_dir)
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
            f"Start {size} as annex {request.annex_name} in {target.describe()} for "
            f"{duration / 3600:.2f} h (idle shutdown after {idle / 60:.0f} min)?"
        )
        if not preview.known:
            question = f"The price of this annex is UNKNOWN (see above). {question}"
        if not confirm(ctx, question):
            ctx.stderr.write(render.render_declined("nothing was started"))
            return EXIT_DECLINED
    if hooks.progress is None and not args.json:

        def progress(step: str, state: str) -> None:
            if state == "done":
                ctx.stderr.write(render.render_progress(f"{step}: done"))
                ctx.stderr.flush()

        hooks.progress = progress
    result = create_annex(request, settings=settings, clients=clients, hooks=hooks, preview=preview)
    from condor_annex import interrupts

    interrupts.finished()  # the annex exists: a late ^C must not turn this into an error
    ctx.stdout.write((render.to_json(result) if args.json else render.render_create(result)) + "\n")
    return EXIT_OK


def run_extend(args: argparse.Namespace, ctx: CliContext) -> int:
    from condor_annex.extend import TokenSource, extend_lease

    settings = settings_of(args)
    result = extend_lease(
        args.annex_name,
        cli_parser.parse_duration(args.duration),
        settings=settings,
        clients=clients_for(args, ctx, settings, action="extend the annex's lease"),
        token_source=TokenSource(
            token_file=path_of(args.token_file),
            signing_key_file=path_of(args.signing_key_file),
            trust_domain=args.trust_domain,
        ),
    )
    ctx.stdout.write((render.to_json(result) if args.json else render.render_extend(result)) + "\n")
    return EXIT_OK


def run_status(args: argparse.Namespace, ctx: CliContext) -> int:
    from condor_annex.status import annex_status, htcondor_pool_view

    if args.passthrough:
        return _condor_status(args, ctx)
    settings = settings_of(args)
    pool_view = ctx.pool_view
    if pool_view is None:
        collector = collector_of(args, ctx)
        pool_view = htcondor_pool_view(collector) if collector else None
    report = annex_status(
        settings=settings,
        clients=clients_for(args, ctx, settings, action="show the annex status"),
        annex_name=args.annex_name,
        pool_view=pool_view,
    )
    if args.classad:
        text = render.render_classads(report)
    else:
        text = render.to_json(report) if args.json else render.render_status(report)
    ctx.stdout.write(text + "\n")
    return EXIT_OK


def _condor_status(args: argparse.Namespace, ctx: CliContext) -> int:
    """`status -- ARGS`: condor_status over the annex's daemons, with the caller's ARGS (a
    constraint, -af, -long, ...); its output and exit status are ours."""
    collector = collector_of(args, ctx)
    if not collector:
        raise InvalidInput(
            "no collector is known to pass the query to",
            next_step="pass -collector HOST[:PORT] or set COLLECTOR_HOST in the HTCondor config",
        )
    attribute = contract.ANNEX_NAME_ATTRIBUTE
    constraint = (
        f'{attribute} =?= "{args.annex_name}"' if args.annex_name else f"{attribute} =!= undefined"
    )
    argv = ["-pool", collector, "-constraint", constraint, *args.passthrough]
    code, out, err = (ctx.run_condor_status or _run_condor_status)(argv)
    ctx.stdout.write(out)
    ctx.stderr.write(err)
    return code


def _run_condor_status(argv: list[str]) -> tuple[int, str, str]:
    import shutil
    import subprocess

    program = shutil.which("condor_status")
    if program is None:
        raise InvalidInput(
            "condor_status is not on PATH", next_step="install HTCondor's tools or fix PATH"
        )
    done = subprocess.run([program, *argv], capture_output=True, text=True, check=False)
    return done.returncode, done.stdout, done.stderr


def run_off(args: argparse.Namespace, ctx: CliContext) -> int:
    from condor_annex.off import (
        DEFAULT_DRAIN_TIMEOUT_SECONDS,
        annex_off,
        htcondor_pool_remaining,
        htcondor_pool_shutdown,
    )

    settings = settings_of(args)
    from condor_annex.annex_settings import NEEDED_FOR_STATUS, require_setup

    # Which setup, account and region: known (and checked) before the question is asked.
    require_setup(settings, NEEDED_FOR_STATUS, args.region or settings.region or "")
    action = f"turn annex {args.annex_name} off"
    target = target_of(args, ctx, settings, action)
    drain = (
        cli_parser.parse_duration(args.drain_timeout, default_unit="m")
        if args.drain_timeout is not None
        else DEFAULT_DRAIN_TIMEOUT_SECONDS
    )
    mode = args.off_mode or cli_parser.OFF_MODES[0]
    question = (
        f"Shut annex {args.annex_name} down ({mode}) and terminate its instances once its "
        f"daemons have left the pool (at most {drain / 60:.0f} min)?"
        if drain
        else f"Terminate every instance of annex {args.annex_name} now?"
    )
    question = question.replace(
        f"annex {args.annex_name} ", f"annex {args.annex_name} in {target.describe()} ", 1
    )
    if not args.yes and not confirm(ctx, question):
        ctx.stderr.write(render.render_declined("nothing was changed"))
        return EXIT_DECLINED
    shutdown, remaining = ctx.pool_shutdown, ctx.pool_remaining
    if shutdown is None or remaining is None:
        collector = collector_of(args, ctx)
        if shutdown is None and collector:
            shutdown = htcondor_pool_shutdown(collector, mode)
        if remaining is None and collector:
            remaining = htcondor_pool_remaining(collector)
    if drain and not args.json:
        ctx.stderr.write(
            f"condor_annex: draining annex {args.annex_name} for at most {drain / 60:.0f} min "
            "(its lease is moved to that deadline too)\n"
        )
        ctx.stderr.flush()
    result = annex_off(
        args.annex_name,
        settings=settings,
        clients=clients_for(args, ctx, settings, action=action, target=target),
        pool_shutdown=shutdown,
        pool_remaining=remaining,
        drain_timeout=drain,
        clock=ctx.drain_clock,
    )
    ctx.stdout.write((render.to_json(result) if args.json else render.render_off(result)) + "\n")
    return EXIT_OK


def run_setup_verbs(mode: str, args: argparse.Namespace, ctx: CliContext) -> int:
    from condor_annex import setup

    config_file = config_file_of(args)
    region = region_of(args, config_file)

    def progress(line: str) -> None:
        if not args.json:
            ctx.stderr.write(render.render_progress(line))
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
        ctx.stdout.write(
            (render.to_json(result) if args.json else render.render_setup(result)) + "\n"
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
        ctx.stdout.write(
            (render.to_json(check) if args.json else render.render_check_setup(check)) + "\n"
        )
        setup.raise_for_problems(check)
        return 0

    # destroy-setup
    from condor_annex.annex_settings import regional_macros
    from condor_annex.user_config import read_annex_macros

    stack_name = (
        regional_macros(read_annex_macros(config_file), region).get(contract.MACRO_STACK_NAME)
        or contract.STACK_NAME
    )
    if not region:
        raise InvalidInput("no AWS region given", next_step="pass -aws-region REGION")
    where = f"{region} (profile {args.profile})" if args.profile else region
    if not args.yes and not confirm(
        ctx,
        f"Remove the condor_annex setup {stack_name} in {where}? (the account is checked "
        "against the one recorded at -setup before anything is removed)",
    ):
        ctx.stderr.write(render.render_declined("nothing was changed"))
        return EXIT_DECLINED
    setup.destroy_setup(
        session=session,
        config_file=config_file,
        stack_name=stack_name,
        region=region,
        progress=progress,
        profile=args.profile,
    )
    ctx.stdout.write(render.render_destroyed(stack_name, config_file) + "\n")
    return 0


Command = Callable[[argparse.Namespace, CliContext], int]


def _setup_verb(mode: str) -> Command:
    return lambda args, ctx: run_setup_verbs(mode, args, ctx)


def run_check_image(args: argparse.Namespace, ctx: CliContext) -> int:
    """`-check-image AMI`: which kind of image AMI is, in the region in use (no setup needed)."""
    from condor_annex import images
    from condor_annex.annex_settings import AnnexClients

    settings = settings_of(args)
    region = args.region or settings.region or None
    clients = (
        ctx.clients(region, args.profile)
        if ctx.clients is not None
        else AnnexClients.from_session(region=region, profile=args.profile)
    )
    ami = str(args.check_image)
    if ami == "default":
        ami = images.default_image(clients.ssm, "x86_64")
    image = images.describe_image(clients.ec2, ami)
    if image is None:
        raise InvalidInput(
            f"the AMI {ami} does not exist (or is not visible) in this region",
            next_step="check the AMI ID and -aws-region",
        )
    kind = images.kind_of(image)
    if args.json:
        ctx.stdout.write(
            render.to_json({"image_id": ami, "name": image.get("Name"), "kind": kind.value}) + "\n"
        )
    else:
        ctx.stdout.write(f"{ami} ({image.get('Name', 'no name')}): {kind.explanation}\n")
    return EXIT_OK


COMMANDS: dict[str, Command] = {
    "check-image": run_check_image,
    "create": run_create,
    "extend": run_extend,
    cli_parser.VERB_STATUS: run_status,
    cli_parser.VERB_OFF: run_off,
    "setup": _setup_verb("setup"),
    "check-setup": _setup_verb("check-setup"),
    "destroy-setup": _setup_verb("destroy-setup"),
}
"""Mode (`cli_parser.mode_of`) → the command that runs it."""
