"""Creating an annex (on-demand or Spot Fleet): the step runner and its undo log.

`create_annex` runs a straight sequence of steps; each step that changes AWS registers its undo,
and when a later step fails (or the user presses ^C) the undos run in reverse order, so a failed
create leaves nothing behind: launched instances / fleet, launch template, schedule, lease record,
tarball. The order follows the seed guide: validate everything, check connectivity, build and
upload the configuration tarball, create the lease, launch with one client token.

The request and its AWS-free checks live in `create_request`, the AWS-side checks in
`preflight`. Nothing here prints; progress goes to the optional `progress(step, state)` callback.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any, Optional

from botocore.exceptions import BotoCoreError, ClientError

from condor_annex import annex, contract, cost, images, interrupts, lease, spot
from condor_annex.annex_settings import (
    NEEDED_FOR_ON_DEMAND,
    NEEDED_FOR_SPOT_FLEET,
    AnnexClients,
    Settings,
    require_setup,
)
from condor_annex.aws import error_code, is_retryable
from condor_annex.backoff import Backoff
from condor_annex.collector import local_tcp_probe, parse_collector
from condor_annex.create_request import (
    MAX_USER_DATA_BYTES,
    CreateRequest,
    annex_tags,
    on_demand_pools,
    validate_request,
)
from condor_annex.errors import (
    AnnexError,
    CapacityError,
    InvalidInput,
    SetupIncomplete,
    VerbInterrupted,
    translate_aws_error,
)
from condor_annex.launch_spec import (
    METADATA_OPTIONS,
    build_ec2_fleet_request,
    vpc_subnets,
)
from condor_annex.preflight import (
    Probe,
    check_bucket,
    check_connectivity,
    check_image,
    check_instance_types,
    check_spot_plan,
    cost_preview,
    existing_annex_summary,
    lambda_connectivity_probe,
    spot_plan,
)

LAUNCH_RETRY_SECONDS = 60.0

STEP_VALIDATE = "validate"
STEP_CONNECTIVITY = "connectivity"
STEP_TOKEN = "token"  # noqa: S105 (a step name, not a secret)
STEP_TARBALL = "tarball"
STEP_LEASE = "lease"
STEP_LAUNCH_TEMPLATE = "launch-template"
STEP_LAUNCH = "launch"
CREATE_STEPS = (
    STEP_VALIDATE,
    STEP_CONNECTIVITY,
    STEP_TOKEN,
    STEP_TARBALL,
    STEP_LEASE,
    STEP_LAUNCH_TEMPLATE,
    STEP_LAUNCH,
)

Progress = Callable[[str, str], None]
TokenProvider = Callable[[str, datetime], str]


# --- Requests and results -----------------------------------------------------------------------


@dataclass
class CreateResult:
    """What a successful create made."""

    annex_name: str
    kind: str
    client_token: str
    expires_at: datetime
    config_key: str
    schedule_arn: str
    instance_ids: list[str] = field(default_factory=list)
    fleet_id: Optional[str] = None
    launch_template_id: Optional[str] = None
    connectivity: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cost: Optional[cost.CostPreview] = None
    launched: list[LaunchedPool] = field(default_factory=list)
    """On-demand: where the instances were launched, and the pools that had no capacity."""


@dataclass
class LaunchedPool:
    """One on-demand launch attempt: a pool (type, subnet) and what it gave."""

    instance_type: str
    subnet_id: Optional[str]
    instance_ids: list[str] = field(default_factory=list)
    error: Optional[str] = None
    """The capacity error that moved the create on to the next pool."""


@dataclass
class CreateHooks:
    """Injectable collaborators (tests and the CLI replace them; defaults talk to AWS/sockets)."""

    connectivity_probe: Optional[Probe] = None
    """AWS's view of the collector; default invokes the setup's connectivity Lambda."""
    local_probe: Optional[Probe] = None
    """This machine's view; default is a TCP connect."""
    token_provider: Optional[TokenProvider] = None
    progress: Optional[Progress] = None
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    backoff: Callable[[], Backoff] = lambda: Backoff(deadline_seconds=LAUNCH_RETRY_SECONDS)
    price_cache_dir: Optional[Path] = None
    """Where prices are cached (default: the user's cache directory)."""


# --- The create sequence ------------------------------------------------------------------------


class _Undo:
    """Undo actions registered by each step, run in reverse on failure."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], None]]] = []
        self.errors: list[str] = []

    def push(self, what: str, action: Callable[[], None]) -> None:
        self._actions.append((what, action))

    def drop_last(self) -> None:
        """Forget the last undo: its step turned out to own nothing to undo."""
        self._actions.pop()

    def run(self) -> None:
        while self._actions:
            what, action = self._actions[-1]
            try:
                action()
            except Exception as exc:  # keep undoing the rest; report what is left
                self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            self._actions.pop()

    @property
    def remaining(self) -> list[str]:
        """The undo steps not done (the one under way first), for a forced exit's message."""
        return [what for what, _ in reversed(self._actions)]


def create_annex(
    request: CreateRequest,
    *,
    settings: Settings,
    clients: AnnexClients,
    hooks: Optional[CreateHooks] = None,
    preview: Optional[cost.CostPreview] = None,
) -> CreateResult:
    """Create the annex, or raise AnnexError having removed everything this call created.

    `preview` is the cost preview the user already saw (computed here when None); an annex
    over its price cap is refused before anything is created. KeyboardInterrupt also rolls
    back, then propagates.
    """
    hooks = hooks or CreateHooks()
    undo = _Undo()
    stepper = _Stepper(hooks.progress, clients.region)
    try:
        return _create_steps(_Run(request, settings, clients, hooks, undo, stepper, preview))
    except BaseException as exc:
        try:
            # A second signal is acknowledged and the rollback goes on; a third stops it.
            with interrupts.shielded():
                undo.run()
        except interrupts.ForcedExit as forced:
            left = "; ".join(undo.remaining) or "nothing"
            raise VerbInterrupted(
                f"create of annex {request.annex_name} interrupted by {forced.signal_name} "
                f"during its rollback; left behind (not undone): {left}",
                next_step=f"remove them with `condor_annex off -annex-name {request.annex_name}`",
            ) from exc
        if isinstance(exc, KeyboardInterrupt):
            signal_name = getattr(exc, "signal_name", "SIGINT")
            if undo.errors:
                raise VerbInterrupted(
                    f"create of annex {request.annex_name} interrupted by {signal_name}; the "
                    f"rollback is incomplete: {'; '.join(undo.errors)}",
                    next_step=f"run `condor_annex off -annex-name {request.annex_name}`",
                ) from exc
            raise VerbInterrupted(
                f"create of annex {request.annex_name} interrupted by {signal_name}; "
                "everything it had made was rolled back"
            ) from exc
        error = exc
        if isinstance(exc, (ClientError, BotoCoreError)):
            error = translate_aws_error(
                exc,
                action=_STEP_ACTIONS.get(stepper.current, "create the annex"),
                region=clients.region or None,
            )
        if undo.errors and isinstance(error, AnnexError):
            error.message += f" (rollback incomplete: {'; '.join(undo.errors)})"
        if error is exc:
            raise
        raise error from exc


_STEP_ACTIONS = {
    STEP_VALIDATE: "check the annex request against AWS",
    STEP_CONNECTIVITY: "check connectivity to the collector",
    STEP_TOKEN: "obtain the annex token",
    STEP_TARBALL: "upload the annex configuration",
    STEP_LEASE: "create the annex's lease",
    STEP_LAUNCH_TEMPLATE: "create the annex's launch template",
    STEP_LAUNCH: "launch the annex instances",
}


@dataclass
class _Stepper:
    progress: Optional[Progress]
    region: str
    current: str = STEP_VALIDATE

    def begin(self, step: str) -> None:
        self.current = step
        if self.progress:
            self.progress(step, "start")

    def done(self, step: str) -> None:
        if self.progress:
            self.progress(step, "done")

    def call(self, action: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (ClientError, BotoCoreError) as exc:
            raise translate_aws_error(exc, action=action, region=self.region or None) from exc


_NAME_TAKEN_CODES = frozenset(
    {"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "ConflictException"}
)
"""S3 `If-None-Match: *` found the object (412) or a concurrent conditional write (409);
Scheduler found a schedule of that name (ConflictException)."""


def _claim(st: _Stepper, undo: _Undo, name: str, action: str, call: Callable[[], Any]) -> Any:
    """Run a create-only-if-absent call whose undo was just pushed.

    When the resource already exists it belongs to another create (or an interrupted one) of
    the same annex: drop the undo, so the rollback cannot delete what is not ours, and say so.
    """
    try:
        return st.call(action, call)
    except AnnexError as exc:
        cause = exc.__cause__
        if isinstance(cause, ClientError) and error_code(cause) in _NAME_TAKEN_CODES:
            undo.drop_last()
            raise InvalidInput(
                f"an annex named {name} already exists (another create of it is running, or "
                "one was interrupted)",
                next_step=f"choose another -annex-name, or end it with "
                f"`condor_annex off -annex-name {name}`",
            ) from None
        raise


_NOT_YET = datetime.min.replace(tzinfo=timezone.utc)
"""Placeholder until the check step fixes the create's moment."""


@dataclass
class _Run:
    """One create in progress: what it was asked, what it talks to, and what it has decided."""

    request: CreateRequest
    settings: Settings
    clients: AnnexClients
    hooks: CreateHooks
    undo: _Undo
    st: _Stepper
    preview: Optional[cost.CostPreview]
    plan: Optional[spot.SpotPlan] = None
    ami: str = ""
    user_data: Optional[bytes] = None
    """What the instances get: the user's, or it and the first-boot script for a stock image."""
    notes: list[str] = field(default_factory=list)
    expires_at: datetime = _NOT_YET
    now: datetime = _NOT_YET
    client_token: str = ""

    @property
    def name(self) -> str:
        return self.request.annex_name


def _create_steps(run: _Run) -> CreateResult:
    """The steps, in order; each that changes AWS pushes its undo first."""
    _check(run)
    connectivity, notes = _connectivity(run)
    token = _token(run)
    _tarball(run, token)
    schedule_arn = _lease(run)
    result = CreateResult(
        annex_name=run.name,
        kind=run.request.kind,
        client_token=run.client_token,
        expires_at=run.expires_at,
        config_key=contract.config_key(run.name),
        schedule_arn=schedule_arn,
        connectivity=connectivity,
        notes=[*run.notes, *notes],
        cost=run.preview,
    )
    if run.request.kind == contract.FLEET_KIND_ON_DEMAND:
        _launch_on_demand_step(run, result)
    elif run.request.kind == contract.FLEET_KIND_EC2_FLEET:
        _launch_ec2_fleet_step(run, result)
    else:
        _launch_spot_fleet_step(run, result)
    return result


def _check(run: _Run) -> None:
    """1. Validate everything before changing anything."""
    request, settings, clients, st = run.request, run.settings, run.clients, run.st
    st.begin(STEP_VALIDATE)
    validate_request(request)
    spot_fleet = request.kind == contract.FLEET_KIND_SPOT_FLEET
    require_setup(
        settings, NEEDED_FOR_SPOT_FLEET if spot_fleet else NEEDED_FOR_ON_DEMAND, clients.region
    )
    parse_collector(request.collector)
    run.plan = plan = spot_plan(request, settings)
    if plan is not None:
        check_spot_plan(request, settings, plan, clients.ec2.meta.service_model)
    types = plan.instance_types if plan else list(request.on_demand_instance_types)
    ami = request.ami_id or (spot.image_id_of(plan) if plan else None)
    if ami is None:
        # No image named: the region's current Amazon Linux 2023, made ready at first boot.
        arch = st.call(
            "look up the instance type's architecture",
            lambda: images.architecture_of(clients.ec2, types[0]),
        )
        ami = st.call("look up the default image", lambda: images.default_image(clients.ssm, arch))
    run.ami = ami
    st.call("find the config bucket", lambda: check_bucket(clients, settings))
    image = st.call("look up the AMI", lambda: check_image(clients.ec2, ami))
    run.user_data = _user_data_for(request, plan, images.kind_of(image), run.notes, ami)
    st.call("look up the instance types", lambda: check_instance_types(clients.ec2, types))
    if run.preview is None:
        run.preview = cost_preview(request, clients, plan=plan, cache_dir=run.hooks.price_cache_dir)
    # AWS enforces a fleet's cap itself (SpotMaxTotalPrice, MaxTotalPrice); RunInstances has
    # no price limit.
    cost.check_cap(run.preview, aws_enforces_cap=request.kind != contract.FLEET_KIND_ON_DEMAND)
    name = run.name
    existing = st.call(
        "look for an existing annex of that name",
        lambda: existing_annex_summary(clients, settings, name),
    )
    if existing:
        raise InvalidInput(
            f"an annex named {name} already exists ({existing})",
            next_step=f"choose another -annex-name, extend it with `condor_annex -annex-name {name} "
            f"-duration D`, or end it with `condor_annex off -annex-name {name}`",
        )
    run.now = run.hooks.now()
    run.expires_at = (run.now + timedelta(seconds=request.duration_seconds)).replace(microsecond=0)
    run.client_token = contract.new_client_token(name)
    st.done(STEP_VALIDATE)


def _connectivity(run: _Run) -> tuple[dict[str, Any], list[str]]:
    """2. AWS must reach the collector the instances will report to."""
    run.st.begin(STEP_CONNECTIVITY)
    remote_probe = run.hooks.connectivity_probe
    if remote_probe is None:
        if not run.settings.connectivity_function_arn:
            raise SetupIncomplete(
                f"the setup lacks {contract.OUTPUT_CONNECTIVITY_FUNCTION_ARN.macro}",
                next_step="run `condor_annex -setup` again",
            )
        remote_probe = lambda_connectivity_probe(
            run.clients.lambda_, run.settings.connectivity_function_arn
        )
    probe = remote_probe
    host, port = parse_collector(run.request.collector)
    remote = run.st.call("run the connectivity check in AWS", lambda: probe(host, port))
    local = (run.hooks.local_probe or local_tcp_probe)(host, port)
    notes = list(run.plan.notes) if run.plan is not None else []
    notes += check_connectivity(host, port, remote=remote, local=local)
    run.st.done(STEP_CONNECTIVITY)
    return {"aws": remote, "local": local}, notes


def _token(run: _Run) -> str:
    """3. The token the instances use, expiring with the lease."""
    run.st.begin(STEP_TOKEN)
    if run.hooks.token_provider is not None:
        token = run.hooks.token_provider(run.name, run.expires_at)
    else:
        from condor_annex import tokens

        token = tokens.annex_token(
            annex_name=run.name,
            expires_at=run.expires_at,
            token_file=run.request.token_file,
            signing_key_file=run.request.signing_key_file,
            trust_domain=run.request.trust_domain,
        )
    run.st.done(STEP_TOKEN)
    return token


def _tarball(run: _Run, token: str) -> None:
    """4. The configuration tarball, in the private bucket."""
    run.st.begin(STEP_TARBALL)
    from condor_annex import tarball

    request, clients, bucket = run.request, run.clients, run.settings.config_bucket
    cfg = tarball.AnnexConfig(
        annex_name=run.name,
        owner=request.owner,
        collector_host=request.collector,
        idle_seconds=request.idle_seconds,
        lease_expires_at=run.expires_at,
        token=token,
        trust_domain=request.trust_domain,
        start_expression=request.start_expression,
        start_owners=request.start_owners,
        config_files=request.config_files,
    )
    body = tarball.build_config_tarball(cfg)
    key = contract.config_key(run.name)
    run.undo.push(
        "delete the configuration tarball",
        lambda: clients.s3.delete_object(Bucket=bucket, Key=key),
    )
    # Only if no tarball of that name exists (S3 conditional write): the first write claims the
    # name, so a concurrent create of the same annex stops here without touching ours.
    _claim(
        run.st,
        run.undo,
        run.name,
        "upload the annex configuration",
        lambda: clients.s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentType="application/gzip",
            ServerSideEncryption=lease.SSE_ALGORITHM,
            IfNoneMatch="*",
        ),
    )
    run.st.done(STEP_TARBALL)


def _lease(run: _Run) -> str:
    """5. The lease: a record the sweep finds and a one-time schedule at the expiry."""
    run.st.begin(STEP_LEASE)
    clients, settings, name = run.clients, run.settings, run.name
    record = contract.LeaseRecord.new(
        annex_name=name,
        bucket=settings.config_bucket,
        expires_at=run.expires_at,
        client_token=run.client_token,
        kind=run.request.kind,
        owner=run.request.owner,
        now=run.now,
        max_price_per_hour=run.request.max_price_per_hour,
    )
    run.undo.push(
        "delete the lease record",
        lambda: lease.delete_lease_record(clients.s3, settings.config_bucket, name),
    )
    _claim(
        run.st,
        run.undo,
        name,
        "record the annex's lease",
        lambda: lease.put_lease_record(clients.s3, record, only_if_new=True),
    )
    run.undo.push("delete the lease schedule", lambda: _undo_schedule(clients, name))
    schedule_arn = _claim(
        run.st,
        run.undo,
        name,
        "create the annex's lease schedule",
        lambda: lease.create_schedule(
            clients.scheduler,
            record,
            lease_function_arn=settings.lease_function_arn,
            scheduler_role_arn=settings.scheduler_role_arn,
        ),
    )
    run.st.done(STEP_LEASE)
    return str(schedule_arn)


def _launch_on_demand_step(run: _Run, result: CreateResult) -> None:
    """6. Launch on-demand instances pool by pool; retries reuse each pool's client token."""
    run.st.begin(STEP_LAUNCH)
    clients, name = run.clients, run.name
    pool_tokens: list[str] = []

    def terminate_every_pool() -> None:
        for pool_token in pool_tokens:
            _undo_launch(clients, name, pool_token, instance_ids=result.instance_ids)

    run.undo.push("terminate the launched instances", terminate_every_pool)
    _launch_on_demand(
        run.request,
        run.settings,
        clients,
        run.hooks,
        run.st,
        run.ami,
        annex_tags(run.request),
        result,
        pool_tokens,
        run.user_data,
    )
    run.st.done(STEP_LAUNCH)


def _launch_template_step(run: _Run, result: CreateResult) -> tuple[str, str]:
    """6. The annex's own launch template (fleets launch from it); (id, version)."""
    request, settings, clients, st, undo = run.request, run.settings, run.clients, run.st, run.undo
    name, client_token, plan, ami = run.name, run.client_token, run.plan, run.ami
    assert plan is not None
    tags = annex_tags(request)
    st.begin(STEP_LAUNCH_TEMPLATE)
    template_name = contract.launch_template_name(name)
    undo.push(
        "delete the launch template",
        lambda: _undo_launch_template(clients, name, result.launch_template_id),
    )
    template_id, version = st.call(
        "create the annex's launch template",
        lambda: _create_launch_template(
            clients, request, settings, plan, ami, template_name, client_token, tags, run.user_data
        ),
    )
    result.launch_template_id = template_id
    st.done(STEP_LAUNCH_TEMPLATE)
    return template_id, version


def _launch_ec2_fleet_step(run: _Run, result: CreateResult) -> None:
    """6./7. The annex's launch template, then one CreateFleet with the one client token."""
    request, settings, clients, st, undo = run.request, run.settings, run.clients, run.st, run.undo
    name, client_token, plan = run.name, run.client_token, run.plan
    assert plan is not None
    template_id, version = _launch_template_step(run, result)
    st.begin(STEP_LAUNCH)
    undo.push(
        "delete the EC2 Fleet with its instances",
        lambda: _undo_launch(
            clients,
            name,
            client_token,
            fleet_id=result.fleet_id,
            fleet_kind=contract.FLEET_KIND_EC2_FLEET,
        ),
    )
    st.call(
        "check the client token is unused",
        lambda: _token_unused(clients, client_token, contract.FLEET_KIND_EC2_FLEET),
    )
    subnets = request.subnet_ids or st.call(
        "list the subnets of the setup's VPC", lambda: vpc_subnets(clients.ec2, settings)
    )
    fleet_request = build_ec2_fleet_request(
        request,
        plan,
        launch_template_id=template_id,
        launch_template_version=version,
        client_token=client_token,
        subnet_ids=subnets,
        valid_until=run.expires_at,
        tags=annex_tags(request),
    )
    answer = st.call(
        "create the EC2 Fleet",
        lambda: run.hooks.backoff().retry(
            lambda: clients.launcher.create_fleet(**fleet_request), is_retryable
        ),
    )
    result.fleet_id = str(answer["FleetId"])
    _instant_fleet_outcome(answer, request, result)
    st.done(STEP_LAUNCH)


def _launch_spot_fleet_step(run: _Run, result: CreateResult) -> None:
    """6./7. The annex's launch template, then the Spot Fleet with the one client token."""
    request, settings, clients, st, undo = run.request, run.settings, run.clients, run.st, run.undo
    name, client_token, plan = run.name, run.client_token, run.plan
    assert plan is not None
    tags = annex_tags(request)
    template_id, version = _launch_template_step(run, result)
    st.begin(STEP_LAUNCH)
    undo.push(
        "cancel the Spot Fleet request",
        lambda: _undo_launch(clients, name, client_token, fleet_id=result.fleet_id),
    )
    st.call(
        "check the client token is unused",
        lambda: _token_unused(clients, client_token, contract.FLEET_KIND_SPOT_FLEET),
    )
    fleet_config = spot.build_spot_fleet_request_config(
        plan,
        launch_template_id=template_id,
        launch_template_version=version,
        client_token=client_token,
        slots=int(request.slots or 0),
        fleet_role_arn=settings.spot_fleet_role_arn,
        valid_until=contract.utc_iso(run.expires_at),
        tags=tags,
        subnet_ids=request.subnet_ids,
        max_total_price=(
            cost.format_aws_price(request.max_price_per_hour)
            if request.max_price_per_hour is not None
            else None
        ),
    )
    result.fleet_id = st.call(
        "request the Spot Fleet",
        lambda: run.hooks.backoff().retry(
            lambda: str(
                clients.ec2.request_spot_fleet(SpotFleetRequestConfig=fleet_config)[
                    "SpotFleetRequestId"
                ]
            ),
            is_retryable,
        ),
    )
    st.done(STEP_LAUNCH)


def _instant_fleet_outcome(
    answer: Mapping[str, Any], request: CreateRequest, result: CreateResult
) -> None:
    """An `instant` fleet answers what it launched and which pools failed, at once."""
    if request.fleet_type != "instant":
        return
    result.instance_ids = sorted(
        str(i) for group in answer.get("Instances", []) for i in group.get("InstanceIds", [])
    )
    failures = sorted(
        {
            f"{e.get('LaunchTemplateAndOverrides', {}).get('Overrides', {}).get('InstanceType', '?')}"
            f" in {e.get('LaunchTemplateAndOverrides', {}).get('Overrides', {}).get('SubnetId', '?')}"
            f": {e.get('ErrorCode')}"
            for e in answer.get("Errors", [])
        }
    )
    if not result.instance_ids:
        raise CapacityError(
            "EC2 Fleet launched nothing"
            + (f" ({'; '.join(failures)})" if failures else "")
            + "; nothing was left behind",
            next_step="try other instance types or subnets, or later",
        )
    if failures:
        result.notes.append("EC2 Fleet skipped pools: " + "; ".join(failures))


CAPACITY_ERROR_CODES = frozenset({"InsufficientInstanceCapacity", "Unsupported"})
"""EC2's answers for a pool (instance type in a zone) without room or without that type
("Error codes for the Amazon EC2 API"); another pool may well have both."""


def _launch_on_demand(
    request: CreateRequest,
    settings: Settings,
    clients: AnnexClients,
    hooks: CreateHooks,
    st: _Stepper,
    ami: str,
    tags: list[dict[str, str]],
    result: CreateResult,
    tokens: list[str],
    user_data: Optional[bytes],
) -> None:
    """RunInstances pool by pool until one has capacity for the whole annex.

    Each pool gets its own `<annex>_<GUID>` token (a token names one request; a retry of the
    same pool reuses it), so everything launched stays the annex's and rollback finds it.
    """
    pools = on_demand_pools(request)
    for index, (instance_type, subnet) in enumerate(pools):
        token = result.client_token if index == 0 else contract.new_client_token(request.annex_name)
        tokens.append(token)
        st.call(
            "check the client token is unused",
            partial(_token_unused, clients, token, contract.FLEET_KIND_ON_DEMAND),
        )
        attempt = LaunchedPool(instance_type, subnet)
        result.launched.append(attempt)
        launch = partial(
            _run_instances,
            clients,
            request,
            settings,
            ami,
            token,
            tags,
            instance_type,
            subnet,
            user_data,
        )
        try:
            attempt.instance_ids = hooks.backoff().retry(launch, is_retryable)
        except ClientError as exc:
            code = error_code(exc)
            if code not in CAPACITY_ERROR_CODES or index == len(pools) - 1:
                raise translate_aws_error(
                    exc, action="launch the annex instances", region=clients.region or None
                ) from exc
            attempt.error = f"{code}: {exc.response.get('Error', {}).get('Message', '')}"
            continue
        result.instance_ids = attempt.instance_ids
        result.client_token = token
        if index:
            where = f" in {subnet}" if subnet else ""
            result.notes.append(
                f"launched {len(attempt.instance_ids)} {instance_type}{where} after "
                + "; ".join(
                    f"{p.instance_type}{' in ' + p.subnet_id if p.subnet_id else ''}: {p.error}"
                    for p in result.launched[:-1]
                )
            )
        return


def _user_data_for(
    request: CreateRequest,
    plan: Optional[spot.SpotPlan],
    kind: images.ImageKind,
    notes: list[str],
    ami: str,
) -> Optional[bytes]:
    """The user data to launch with: a stock image also gets the first-boot script."""
    user = request.user_data
    if user is None and plan is not None and plan.template_data.get("UserData"):
        user = base64.b64decode(plan.template_data["UserData"])
    if kind is not images.ImageKind.STOCK_AL2023:
        return user
    composed = images.compose_user_data(images.first_boot_script(), user)
    if len(composed) > MAX_USER_DATA_BYTES:
        raise InvalidInput(
            f"the first-boot script and your user data together have {len(composed)} bytes; "
            f"EC2 accepts at most {MAX_USER_DATA_BYTES}",
            next_step="shorten the user data, or use an annex-ready image",
        )
    notes.append(f"image {ami} ({kind.value}): {kind.explanation}")
    return composed


def _run_instances(
    clients: AnnexClients,
    request: CreateRequest,
    settings: Settings,
    ami: str,
    client_token: str,
    tags: list[dict[str, str]],
    instance_type: str,
    subnet_id: Optional[str],
    user_data: Optional[bytes],
) -> list[str]:
    args: dict[str, Any] = {
        "ClientToken": client_token,
        "ImageId": ami,
        "InstanceType": instance_type,
        "MinCount": request.count,
        "MaxCount": request.count,
        "MetadataOptions": METADATA_OPTIONS,
        "IamInstanceProfile": {"Arn": settings.instance_profile_arn},
        "SecurityGroupIds": list(settings.security_group_ids),
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
        # The master's shutdown script powers the instance off; make that a termination.
        "InstanceInitiatedShutdownBehavior": "terminate",
    }
    if subnet_id:
        args["SubnetId"] = subnet_id
    if request.key_name:
        args["KeyName"] = request.key_name
    if user_data is not None:
        args["UserData"] = user_data  # botocore base64-encodes it; content untouched
    response = clients.launcher.run_instances(**args)
    return [str(i["InstanceId"]) for i in response.get("Instances", [])]


def _create_launch_template(
    clients: AnnexClients,
    request: CreateRequest,
    settings: Settings,
    plan: spot.SpotPlan,
    ami: str,
    template_name: str,
    client_token: str,
    tags: list[dict[str, str]],
    user_data: Optional[bytes],
) -> tuple[str, str]:
    data: dict[str, Any] = {k: v for k, v in plan.template_data.items() if k != "UserData"}
    data.update(
        {
            "ImageId": ami,
            "IamInstanceProfile": {"Arn": settings.instance_profile_arn},
            "SecurityGroupIds": list(settings.security_group_ids),
            "MetadataOptions": METADATA_OPTIONS,
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
    )
    if request.key_name:
        data["KeyName"] = request.key_name
    if request.kind == contract.FLEET_KIND_EC2_FLEET and request.market == "on-demand":
        # As for RunInstances: the master's shutdown script powers off = terminates.
        data["InstanceInitiatedShutdownBehavior"] = "terminate"
    # Launch template user data is base64 text (botocore does not encode it, unlike RunInstances);
    # a console-exported config already holds base64.
    if user_data is not None:
        data["UserData"] = base64.b64encode(user_data).decode()
    response = clients.ec2.create_launch_template(
        LaunchTemplateName=template_name,
        ClientToken=client_token,
        LaunchTemplateData=data,
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags}],
    )
    template = response["LaunchTemplate"]
    return str(template["LaunchTemplateId"]), str(template.get("LatestVersionNumber", 1))


def _token_unused(clients: AnnexClients, client_token: str, kind: str) -> None:
    """Before launching: nothing may already exist with this exact client token."""
    if annex.launched_with(clients.ec2, client_token, kind):
        raise AnnexError(
            f"something was already launched with client token {client_token}; refusing to launch "
            "twice",
            next_step="run `condor_annex status` and `condor_annex off` for this annex",
        )


def _raise_if_failed(ended: annex.Ended) -> None:
    if ended.first_failure is not None:
        raise AnnexError("; ".join(ended.errors)) from ended.first_failure


def _undo_launch(
    clients: AnnexClients,
    annex_name: str,
    client_token: str,
    *,
    instance_ids: Sequence[str] = (),
    fleet_id: Optional[str] = None,
    fleet_kind: str = contract.FLEET_KIND_SPOT_FLEET,
) -> None:
    """End what the launch with `client_token` made, even if its response was lost.

    The IDs the launch answered are ours by construction (our token, our tags at launch); the
    annex model adds whatever it finds for the token, which DescribeInstances may show late.
    """
    found = annex.find(clients.ec2, annex_name, client_token=client_token)
    found.instances += [{"InstanceId": i} for i in instance_ids if i not in found.instance_ids]
    if fleet_id and fleet_id not in found.fleet_ids():
        found.fleets.append(annex.Fleet(fleet_kind, fleet_id, client_token, annex_name, ""))
    found.launch_template_id = None  # its own undo step
    _raise_if_failed(annex.end(found, ec2=clients.ec2))


def _undo_launch_template(
    clients: AnnexClients, annex_name: str, template_id: Optional[str]
) -> None:
    found = annex.Annex(
        annex_name,
        launch_template_id=template_id or annex.find_launch_template(clients.ec2, annex_name),
    )
    _raise_if_failed(annex.end(found, ec2=clients.ec2))


def _undo_schedule(clients: AnnexClients, annex_name: str) -> None:
    annex.delete_schedule(clients.scheduler, annex_name)
