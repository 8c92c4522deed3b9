"""Creating an annex (on-demand or Spot Fleet) and extending an existing annex's lease.

`create_annex` runs a straight sequence of steps; each step that changes AWS registers its undo,
and when a later step fails (or the user presses ^C) the undos run in reverse order, so a failed
create leaves nothing behind: launched instances / fleet, launch template, schedule, lease record,
tarball. The order follows the seed guide: validate everything, check connectivity, build and
upload the configuration tarball, create the lease, launch with one client token.

Nothing here prints; progress goes to the optional `progress(step, state)` callback.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any, Optional

from botocore.exceptions import BotoCoreError, ClientError

from condor_annex import annex, contract, cost, lease, spot
from condor_annex.annex_settings import (
    NEEDED_FOR_ON_DEMAND,
    NEEDED_FOR_SPOT_FLEET,
    AnnexClients,
    Settings,
    require_setup,
)
from condor_annex.aws import error_code, is_retryable
from condor_annex.backoff import Backoff
from condor_annex.collector import (
    CONNECTIVITY_TIMEOUT_SECONDS,
    local_tcp_probe,
    parse_collector,
)
from condor_annex.errors import (
    AnnexError,
    CapacityError,
    ConnectivityFailed,
    InvalidInput,
    SetupIncomplete,
    SetupMissing,
    translate_aws_error,
)

DEFAULT_INSTANCE_TYPE = "m5.large"
MAX_COUNT = 1000
"""A sanity cap on -count/-slots: a typo must not start ten thousand instances."""
MIN_LEASE_SECONDS = 60
MIN_IDLE_SECONDS = 60
MAX_USER_DATA_BYTES = 16 * 1024
"""EC2: user data is limited to 16 KB before base64 encoding."""
MAX_USER_TAGS = 40
"""EC2 allows 50 tags per resource; condor_annex adds three of its own and keeps headroom."""
RESERVED_TAG_PREFIXES = ("aws:", "htcondor:")
_METADATA_TAG_KEY = re.compile(r"^[A-Za-z0-9+\-=._:@,]+$")
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

Probe = Callable[[str, int], dict[str, Any]]
Progress = Callable[[str, str], None]
TokenProvider = Callable[[str, datetime], str]


# --- Requests and results -----------------------------------------------------------------------


@dataclass(frozen=True)
class CreateRequest:
    """Everything the admin asked for; `count` (on-demand) xor `slots` (Spot Fleet)."""

    annex_name: str
    collector: str
    count: Optional[int] = None
    slots: Optional[int] = None
    duration_seconds: int = contract.LEASE_DEFAULT_SECONDS
    idle_seconds: int = contract.IDLE_DEFAULT_SECONDS
    instance_type: str = DEFAULT_INSTANCE_TYPE
    ami_id: Optional[str] = None
    spot_instance_types: tuple[spot.InstanceTypeWeight, ...] = ()
    spot_fleet_config_file: Optional[Path] = None
    spot_allocation_strategy: str = spot.DEFAULT_ALLOCATION_STRATEGY
    spot_fleet_type: str = spot.DEFAULT_FLEET_TYPE
    key_name: Optional[str] = None
    subnet_ids: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    owner: str = ""
    user_data: Optional[bytes] = None
    start_expression: Optional[str] = None
    token_file: Optional[Path] = None
    signing_key_file: Optional[Path] = None
    trust_domain: Optional[str] = None
    fallback_instance_types: tuple[str, ...] = ()
    """On-demand: further instance types tried, in order, when `instance_type` has no capacity."""
    max_price_per_hour: Optional[float] = None
    """USD/hour cap: refused before anything is created if the preview exceeds it; fleets
    carry it into AWS (`SpotMaxTotalPrice` / `MaxTotalPrice`)."""
    aws_fleet: bool = False
    """Launch through EC2 Fleet (`CreateFleet`): Spot with -slots, on-demand with -count."""
    ec2_fleet_type: Optional[str] = None
    """`instant` (one-shot) or `maintain` (refilled after interruptions); default: `maintain`
    for Spot, `instant` for on-demand."""
    on_demand_allocation_strategy: str = "lowest-price"
    """EC2 Fleet on-demand: `lowest-price`, or `prioritized` (the order of the types given)."""

    @property
    def market(self) -> str:
        """`on-demand` (-count) or `spot` (-slots)."""
        return "on-demand" if self.count is not None else "spot"

    @property
    def size(self) -> int:
        """Instances (-count) or weighted capacity (-slots)."""
        return int(self.count if self.count is not None else self.slots or 0)

    @property
    def fleet_type(self) -> str:
        """The EC2 Fleet request type this annex uses."""
        if self.ec2_fleet_type:
            return self.ec2_fleet_type
        return "instant" if self.market == "on-demand" else "maintain"

    @property
    def on_demand_instance_types(self) -> tuple[str, ...]:
        return (self.instance_type, *self.fallback_instance_types)

    @property
    def kind(self) -> str:
        if self.aws_fleet:
            return contract.FLEET_KIND_EC2_FLEET
        return (
            contract.FLEET_KIND_SPOT_FLEET
            if self.slots is not None
            else contract.FLEET_KIND_ON_DEMAND
        )


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
class ExtendResult:
    """A moved lease."""

    annex_name: str
    previous_expiry: datetime
    expires_at: datetime
    schedule_recreated: bool = False
    notes: list[str] = field(default_factory=list)


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


# --- Helpers ------------------------------------------------------------------------------------


def lambda_connectivity_probe(lambda_client: Any, function_arn: str) -> Probe:
    """A probe that invokes the setup's connectivity Lambda (it runs inside the account)."""

    def probe(host: str, port: int) -> dict[str, Any]:
        payload = json.dumps(
            {"host": host, "port": port, "timeout": CONNECTIVITY_TIMEOUT_SECONDS}
        ).encode()
        response = lambda_client.invoke(
            FunctionName=function_arn, InvocationType="RequestResponse", Payload=payload
        )
        body = response["Payload"].read()
        if response.get("FunctionError"):
            raise ConnectivityFailed(
                f"the connectivity function failed: {body[:200]!r}",
                next_step="run `condor_annex -check-setup`",
            )
        result: dict[str, Any] = json.loads(body)
        return result

    return probe


def _tag_list(pairs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in pairs]


def annex_tags(request: CreateRequest) -> list[dict[str, str]]:
    """The annex's own tags first, then the user's (validated not to collide)."""
    return _tag_list(
        [
            (contract.TAG_ANNEX_NAME, request.annex_name),
            (contract.TAG_ANNEX_OWNER, request.owner),
            (contract.TAG_MANAGED_BY, contract.MANAGED_BY_VALUE),
            *request.tags,
        ]
    )


METADATA_OPTIONS: dict[str, Any] = {
    # IMDSv2 only, and one hop: a container on the instance cannot reach the metadata service
    # through the host's network stack (EC2 User Guide, "Configure the instance metadata options").
    "HttpTokens": "required",
    "HttpPutResponseHopLimit": 1,
    "HttpEndpoint": "enabled",
    # The agent reads the Spot Fleet tag from instance metadata instead of polling EC2.
    "InstanceMetadataTags": "enabled",
}


# --- Validation ---------------------------------------------------------------------------------


def validate_request(request: CreateRequest) -> None:
    """Every check that needs no AWS call; raises InvalidInput naming the bad value."""
    try:
        contract.validate_annex_name(request.annex_name)
    except contract.InvalidAnnexName as exc:
        raise InvalidInput(str(exc), next_step="choose another -annex-name") from None
    if (request.count is None) == (request.slots is None):
        raise InvalidInput(
            "say how big the annex is with exactly one of -count (on-demand) or -slots (Spot Fleet)"
        )
    size = request.count if request.count is not None else request.slots
    what = "-count" if request.count is not None else "-slots"
    if size is None or not 1 <= size <= MAX_COUNT:
        raise InvalidInput(f"{what} must be between 1 and {MAX_COUNT}, not {size}")
    validate_duration(request.duration_seconds)
    if not MIN_IDLE_SECONDS <= request.idle_seconds <= contract.LEASE_MAX_SECONDS:
        raise InvalidInput(
            f"-idle must be between {MIN_IDLE_SECONDS} s and {contract.LEASE_MAX_SECONDS} s, "
            f"not {request.idle_seconds} s"
        )
    if request.user_data is not None and len(request.user_data) > MAX_USER_DATA_BYTES:
        raise InvalidInput(
            f"user data has {len(request.user_data)} bytes; EC2 accepts at most {MAX_USER_DATA_BYTES}"
        )
    if len(request.tags) > MAX_USER_TAGS:
        raise InvalidInput(f"{len(request.tags)} tags given; at most {MAX_USER_TAGS} are accepted")
    keys = [k for k, _ in request.tags]
    for key, value in request.tags:
        if not key or len(key) > 128 or len(value) > 256:
            raise InvalidInput(f"tag {key!r}: keys need 1-128 characters and values at most 256")
        if not _METADATA_TAG_KEY.match(key) or key in (".", ".."):
            # Instance metadata tags are enabled on every annex instance; EC2 then refuses tag
            # keys outside this alphabet (EC2 User Guide, "View tags for your EC2 instances
            # using instance metadata").
            raise InvalidInput(f"tag key {key!r} may only use letters, digits and + - = . , _ : @")
        if key.lower().startswith(RESERVED_TAG_PREFIXES):
            raise InvalidInput(
                f"tag key {key!r} is reserved (prefixes {', '.join(RESERVED_TAG_PREFIXES)})"
            )
    if len(set(keys)) != len(keys):
        raise InvalidInput("a tag key is given twice")
    for subnet in request.subnet_ids:
        if not subnet.startswith("subnet-"):
            raise InvalidInput(f"{subnet!r} is not a subnet ID (subnet-...)")
    if request.max_price_per_hour is not None and not request.max_price_per_hour > 0:
        raise InvalidInput(
            f"-max-price-per-hour must be a positive amount, not {request.max_price_per_hour}"
        )
    if len(set(request.on_demand_instance_types)) != len(request.on_demand_instance_types):
        raise InvalidInput("an -aws-on-demand-instance-type is given twice")
    if request.ami_id is not None and not request.ami_id.startswith("ami-"):
        raise InvalidInput(f"{request.ami_id!r} is not an AMI ID (ami-...)")
    if request.aws_fleet:
        if request.ec2_fleet_type not in (None, *EC2_FLEET_TYPES):
            raise InvalidInput(
                f"EC2 Fleet type {request.ec2_fleet_type!r} is not one of "
                + ", ".join(EC2_FLEET_TYPES)
            )
        if request.on_demand_allocation_strategy not in ON_DEMAND_ALLOCATION_STRATEGIES:
            raise InvalidInput(
                f"on-demand allocation strategy {request.on_demand_allocation_strategy!r} is not "
                "one of " + ", ".join(ON_DEMAND_ALLOCATION_STRATEGIES)
            )
        if request.spot_fleet_config_file is not None:
            raise InvalidInput(
                "-aws-fleet takes instance types, not a Spot Fleet config file",
                next_step="pass -aws-spot-instance-types TYPE[:WEIGHT],... with -slots",
            )
    if request.market == "on-demand":
        if request.spot_instance_types or request.spot_fleet_config_file:
            raise InvalidInput("Spot Fleet options need -slots, not -count")
        if request.ami_id is None:
            raise InvalidInput(
                "an on-demand annex needs an AMI",
                next_step="pass -aws-on-demand-ami-id ami-... (an annex-compatible image)",
            )
    elif request.aws_fleet:
        if not request.spot_instance_types:
            raise InvalidInput(
                "a Spot annex through EC2 Fleet needs instance types",
                next_step="pass -aws-spot-instance-types TYPE[:WEIGHT],...",
            )
        if request.ami_id is None:
            raise InvalidInput("an EC2 Fleet annex needs an AMI", next_step="pass -aws-ami-id")
    else:
        if bool(request.spot_instance_types) == bool(request.spot_fleet_config_file):
            raise InvalidInput(
                "a Spot Fleet annex needs exactly one of -aws-spot-instance-types or "
                "-aws-spot-fleet-config-file"
            )
    if not request.owner or len(request.owner) > 256:
        raise InvalidInput("-owner must be 1 to 256 characters", next_step="pass -owner USER")


def validate_duration(seconds: int) -> None:
    if not MIN_LEASE_SECONDS <= seconds <= contract.LEASE_MAX_SECONDS:
        raise InvalidInput(
            f"-duration must be between {MIN_LEASE_SECONDS} s and {contract.LEASE_MAX_SECONDS} s "
            f"(7 days), not {seconds} s"
        )


def check_bucket(clients: AnnexClients, settings: Settings) -> None:
    try:
        clients.s3.head_bucket(Bucket=settings.config_bucket)
    except ClientError as exc:
        if error_code(exc) in {"404", "NoSuchBucket", "NotFound"}:
            where = f" -aws-region {clients.region}" if clients.region else ""
            raise SetupMissing(
                f"the setup's config bucket {settings.config_bucket} does not exist"
                + (f" in {clients.region}" if clients.region else ""),
                next_step=f"run `condor_annex -check-setup{where}` or `condor_annex -setup{where}`",
            ) from None
        if error_code(exc) in {"400", "403"}:
            # HEAD responses carry no error body, so a bad, expired or unauthorized credential
            # shows up as a bare 400/403. Ask again with a request whose answer names the cause
            # (S3 API reference, "HeadBucket": "the response ... does not include a body").
            clients.s3.list_objects_v2(
                Bucket=settings.config_bucket, Prefix=contract.LEASE_KEY_PREFIX, MaxKeys=1
            )
        raise


def check_image(ec2: Any, ami_id: str) -> None:
    try:
        images = ec2.describe_images(ImageIds=[ami_id]).get("Images", [])
    except ClientError as exc:
        if error_code(exc).startswith("InvalidAMIID"):
            images = []
        else:
            raise
    if not images:
        raise InvalidInput(
            f"the AMI {ami_id} does not exist (or is not visible) in this region",
            next_step="check -aws-on-demand-ami-id and -aws-region",
        )
    state = images[0].get("State", "available")
    if state != "available":
        raise InvalidInput(f"the AMI {ami_id} is {state}, not available")


def check_instance_types(ec2: Any, types: Sequence[str]) -> None:
    """Refuse unknown instance types; quietly skip when the identity may not describe them."""
    if not types:
        return
    try:
        ec2.describe_instance_types(InstanceTypes=list(types))
    except ClientError as exc:
        code = error_code(exc)
        if code.startswith("InvalidInstanceType") or code == "InvalidParameterValue":
            raise InvalidInput(
                f"unknown instance type among {', '.join(types)} ({exc.response['Error'].get('Message', code)})",
                next_step="check the instance type names for this region",
            ) from None
        if code in {"UnauthorizedOperation", "AccessDenied"}:
            return  # the operator policy may not grant it; RunInstances will say so
        raise


def existing_annex_summary(
    clients: AnnexClients, settings: Settings, annex_name: str
) -> Optional[str]:
    """A description of what already exists under `annex_name`, or None when nothing does."""
    parts: list[str] = []
    record = lease.read_lease_record(clients.s3, settings.config_bucket, annex_name)
    if record is not None:
        parts.append(f"a lease until {record.expires_at}")
    found = annex.find(clients.ec2, annex_name)
    if found.instances:
        parts.append(f"{len(found.instances)} instance(s)")
    if found.fleets:
        parts.append(f"{len(found.fleets)} fleet request(s)")
    if found.launch_template_id:
        parts.append("its launch template")
    parts.extend(u.describe() for u in found.unowned)
    return ", ".join(parts) or None


def spot_plan(request: CreateRequest, settings: Settings) -> Optional[spot.SpotPlan]:
    """The launch plan of a fleet request (None for plain on-demand); raises InvalidInput."""
    if request.kind == contract.FLEET_KIND_EC2_FLEET:
        if request.market == "spot":
            return spot.plan_from_instance_types(request.spot_instance_types)
        return spot.SpotPlan(
            overrides=[
                {"InstanceType": t, "Priority": float(i)}
                for i, t in enumerate(request.on_demand_instance_types)
            ]
        )
    if request.kind != contract.FLEET_KIND_SPOT_FLEET:
        return None
    if request.spot_fleet_config_file is not None:
        return spot.load_spot_fleet_config(
            request.spot_fleet_config_file,
            fleet_role_arn=settings.spot_fleet_role_arn,
            instance_profile_arn=settings.instance_profile_arn,
            security_group_ids=settings.security_group_ids,
        )
    return spot.plan_from_instance_types(
        request.spot_instance_types,
        subnet_ids=request.subnet_ids,
        allocation_strategy=request.spot_allocation_strategy,
        fleet_type=request.spot_fleet_type,
    )


def cost_preview(
    request: CreateRequest,
    clients: AnnexClients,
    *,
    plan: Optional[spot.SpotPlan] = None,
    cache_dir: Optional[Path] = None,
) -> cost.CostPreview:
    """What the annex is expected to cost (prices from AWS or the day-old cache)."""
    book = cost.PriceBook(
        region=clients.region, ec2=clients.ec2, pricing=clients.pricing, cache_dir=cache_dir
    )
    if request.market == "on-demand":
        pools = [cost.Pool(t) for t in request.on_demand_instance_types]
        market, size = "on-demand", int(request.count or 0)
    else:
        weights: dict[str, float] = {}
        for override in plan.overrides if plan else []:
            weights.setdefault(
                str(override["InstanceType"]), float(override.get("WeightedCapacity") or 1)
            )
        pools = [cost.Pool(t, w) for t, w in weights.items()]
        market, size = "spot", int(request.slots or 0)
    return cost.preview(
        book,
        kind=request.kind,
        market=market,
        pools=pools,
        size=size,
        duration_seconds=request.duration_seconds,
        max_price_per_hour=request.max_price_per_hour,
    )


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
            what, action = self._actions.pop()
            try:
                action()
            except Exception as exc:  # keep undoing the rest; report what is left
                self.errors.append(f"{what}: {type(exc).__name__}: {exc}")


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
        return _create_steps(request, settings, clients, hooks, undo, stepper, preview)
    except BaseException as exc:
        undo.run()
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


def _create_steps(
    request: CreateRequest,
    settings: Settings,
    clients: AnnexClients,
    hooks: CreateHooks,
    undo: _Undo,
    st: _Stepper,
    preview: Optional[cost.CostPreview],
) -> CreateResult:
    name = request.annex_name
    kind = request.kind

    # 1. Validate everything before changing anything.
    st.begin(STEP_VALIDATE)
    validate_request(request)
    require_setup(
        settings,
        NEEDED_FOR_SPOT_FLEET if kind == contract.FLEET_KIND_SPOT_FLEET else NEEDED_FOR_ON_DEMAND,
        clients.region,
    )
    host, port = parse_collector(request.collector)
    plan = spot_plan(request, settings)
    ami = request.ami_id or (spot.image_id_of(plan) if plan else None)
    if ami is None:
        raise InvalidInput(
            "the annex needs an AMI",
            next_step="pass -aws-on-demand-ami-id ami-... or set ImageId in the Spot Fleet config",
        )
    st.call("find the config bucket", lambda: check_bucket(clients, settings))
    st.call("look up the AMI", lambda: check_image(clients.ec2, ami))
    types = plan.instance_types if plan else list(request.on_demand_instance_types)
    st.call("look up the instance types", lambda: check_instance_types(clients.ec2, types))
    if preview is None:
        preview = cost_preview(request, clients, plan=plan, cache_dir=hooks.price_cache_dir)
    # AWS enforces a fleet's cap itself (SpotMaxTotalPrice); RunInstances has no price limit.
    cost.check_cap(preview, aws_enforces_cap=kind != contract.FLEET_KIND_ON_DEMAND)
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
    now = hooks.now()
    expires_at = (now + timedelta(seconds=request.duration_seconds)).replace(microsecond=0)
    client_token = contract.new_client_token(name)
    st.done(STEP_VALIDATE)

    # 2. Connectivity: AWS must reach the collector the instances will report to.
    st.begin(STEP_CONNECTIVITY)
    remote_probe = hooks.connectivity_probe
    if remote_probe is None:
        if not settings.connectivity_function_arn:
            raise SetupIncomplete(
                f"the setup lacks {contract.OUTPUT_CONNECTIVITY_FUNCTION_ARN.macro}",
                next_step="run `condor_annex -setup` again",
            )
        remote_probe = lambda_connectivity_probe(
            clients.lambda_, settings.connectivity_function_arn
        )
    remote = st.call("run the connectivity check in AWS", lambda: remote_probe(host, port))
    local = (hooks.local_probe or local_tcp_probe)(host, port)
    connectivity = {"aws": remote, "local": local}
    notes: list[str] = []
    if not remote.get("reachable"):
        raise ConnectivityFailed(
            f"instances in AWS could not reach the collector {host}:{port} "
            f"({remote.get('error') or 'unreachable'})",
            next_step="open the collector port to the setup's security group / pool CIDRs, "
            "or pass the collector's public name with -collector",
        )
    if (
        local.get("reachable")
        and remote.get("address")
        and local.get("address")
        and remote.get("address") != local.get("address")
    ):
        # Split-horizon DNS and NAT make this normal; say it, do not refuse.
        notes.append(
            f"AWS reaches {host} at {remote.get('address')} but this machine at "
            f"{local.get('address')}: make sure both are the same collector"
        )
    st.done(STEP_CONNECTIVITY)

    # 3. The token the instances use, expiring with the lease.
    st.begin(STEP_TOKEN)
    if hooks.token_provider is not None:
        token = hooks.token_provider(name, expires_at)
    else:
        from condor_annex import tokens

        token = tokens.annex_token(
            annex_name=name,
            expires_at=expires_at,
            token_file=request.token_file,
            signing_key_file=request.signing_key_file,
            trust_domain=request.trust_domain,
        )
    st.done(STEP_TOKEN)

    # 4. The configuration tarball, in the private bucket.
    st.begin(STEP_TARBALL)
    from condor_annex import tarball

    cfg = tarball.AnnexConfig(
        annex_name=name,
        owner=request.owner,
        collector_host=request.collector,
        idle_seconds=request.idle_seconds,
        lease_expires_at=expires_at,
        token=token,
        trust_domain=request.trust_domain,
        start_expression=request.start_expression,
    )
    body = tarball.build_config_tarball(cfg)
    key = contract.config_key(name)
    undo.push(
        "delete the configuration tarball",
        lambda: clients.s3.delete_object(Bucket=settings.config_bucket, Key=key),
    )
    # Only if no tarball of that name exists (S3 conditional write): the first write claims the
    # name, so a concurrent create of the same annex stops here without touching ours.
    _claim(
        st,
        undo,
        name,
        "upload the annex configuration",
        lambda: clients.s3.put_object(
            Bucket=settings.config_bucket,
            Key=key,
            Body=body,
            ContentType="application/gzip",
            ServerSideEncryption=lease.SSE_ALGORITHM,
            IfNoneMatch="*",
        ),
    )
    st.done(STEP_TARBALL)

    # 5. The lease: a record the sweep finds and a one-time schedule at the expiry.
    st.begin(STEP_LEASE)
    record = contract.LeaseRecord.new(
        annex_name=name,
        bucket=settings.config_bucket,
        expires_at=expires_at,
        client_token=client_token,
        kind=kind,
        owner=request.owner,
        now=now,
        max_price_per_hour=request.max_price_per_hour,
    )
    undo.push(
        "delete the lease record",
        lambda: lease.delete_lease_record(clients.s3, settings.config_bucket, name),
    )
    _claim(
        st,
        undo,
        name,
        "record the annex's lease",
        lambda: lease.put_lease_record(clients.s3, record, only_if_new=True),
    )
    undo.push("delete the lease schedule", lambda: _undo_schedule(clients, name))
    schedule_arn = _claim(
        st,
        undo,
        name,
        "create the annex's lease schedule",
        lambda: lease.create_schedule(
            clients.scheduler,
            record,
            lease_function_arn=settings.lease_function_arn,
            scheduler_role_arn=settings.scheduler_role_arn,
        ),
    )
    st.done(STEP_LEASE)

    result = CreateResult(
        annex_name=name,
        kind=kind,
        client_token=client_token,
        expires_at=expires_at,
        config_key=key,
        schedule_arn=schedule_arn,
        connectivity=connectivity,
        notes=notes,
        cost=preview,
    )
    tags = annex_tags(request)

    # 6./7. Launch with the one client token; retries reuse it.
    if kind == contract.FLEET_KIND_ON_DEMAND:
        st.begin(STEP_LAUNCH)
        pool_tokens: list[str] = []

        def terminate_every_pool() -> None:
            for pool_token in pool_tokens:
                _undo_launch(clients, name, pool_token, instance_ids=result.instance_ids)

        undo.push("terminate the launched instances", terminate_every_pool)
        _launch_on_demand(request, settings, clients, hooks, st, ami, tags, result, pool_tokens)
        st.done(STEP_LAUNCH)
    else:
        assert plan is not None
        st.begin(STEP_LAUNCH_TEMPLATE)
        template_name = contract.launch_template_name(name)
        undo.push(
            "delete the launch template",
            lambda: _undo_launch_template(clients, name, result.launch_template_id),
        )
        template_id, version = st.call(
            "create the annex's launch template",
            lambda: _create_launch_template(
                clients, request, settings, plan, ami, template_name, client_token, tags
            ),
        )
        result.launch_template_id = template_id
        st.done(STEP_LAUNCH_TEMPLATE)

        if kind == contract.FLEET_KIND_EC2_FLEET:
            st.begin(STEP_LAUNCH)
            undo.push(
                "delete the EC2 Fleet with its instances",
                lambda: _undo_launch(
                    clients, name, client_token, fleet_id=result.fleet_id, fleet_kind=kind
                ),
            )
            st.call(
                "check the client token is unused",
                lambda: _token_unused(clients, name, client_token),
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
                valid_until=expires_at,
                tags=tags,
            )
            answer = st.call(
                "create the EC2 Fleet",
                lambda: hooks.backoff().retry(
                    lambda: clients.launcher.create_fleet(**fleet_request), is_retryable
                ),
            )
            result.fleet_id = str(answer["FleetId"])
            _instant_fleet_outcome(answer, request, result)
            st.done(STEP_LAUNCH)
            return result

        st.begin(STEP_LAUNCH)
        undo.push(
            "cancel the Spot Fleet request",
            lambda: _undo_launch(clients, name, client_token, fleet_id=result.fleet_id),
        )
        st.call(
            "check the client token is unused",
            lambda: _token_unused(clients, name, client_token),
        )
        fleet_config = spot.build_spot_fleet_request_config(
            plan,
            launch_template_id=template_id,
            launch_template_version=version,
            client_token=client_token,
            slots=int(request.slots or 0),
            fleet_role_arn=settings.spot_fleet_role_arn,
            valid_until=contract.utc_iso(expires_at),
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
            lambda: hooks.backoff().retry(
                lambda: str(
                    clients.ec2.request_spot_fleet(SpotFleetRequestConfig=fleet_config)[
                        "SpotFleetRequestId"
                    ]
                ),
                is_retryable,
            ),
        )
        st.done(STEP_LAUNCH)
    return result


def vpc_subnets(ec2: Any, settings: Settings) -> tuple[str, ...]:
    """Every subnet of the setup's VPC (EC2 Fleet spreads over all of them); () without one."""
    if not settings.vpc_id:
        return ()
    found: list[str] = []
    for page in ec2.get_paginator("describe_subnets").paginate(
        Filters=[{"Name": "vpc-id", "Values": [settings.vpc_id]}]
    ):
        found.extend(str(s["SubnetId"]) for s in page.get("Subnets", []))
    return tuple(sorted(found))


def build_ec2_fleet_request(
    request: CreateRequest,
    plan: spot.SpotPlan,
    *,
    launch_template_id: str,
    launch_template_version: str,
    client_token: str,
    subnet_ids: Sequence[str],
    valid_until: datetime,
    tags: Sequence[Mapping[str, str]],
) -> dict[str, Any]:
    """The `CreateFleet` arguments: the annex's template, one override per (type, subnet).

    The price cap goes into `SpotOptions`/`OnDemandOptions.MaxTotalPrice`, so EC2 Fleet itself
    stops launching at it; a `maintain` fleet ends with the lease (`ValidUntil`,
    `TerminateInstancesWithExpiration`) even if the lease schedule were lost.
    """
    overrides = [
        {**o, **({"SubnetId": s} if s else {})}
        for o in plan.overrides
        for s in (subnet_ids or (None,))
    ]
    if len(overrides) > MAX_EC2_FLEET_OVERRIDES:
        raise InvalidInput(
            f"{len(overrides)} instance type/subnet combinations exceed EC2 Fleet's limit of "
            f"{MAX_EC2_FLEET_OVERRIDES}",
            next_step="name fewer instance types or pass -aws-subnet-id",
        )
    options: dict[str, Any]
    if request.market == "spot":
        options = {
            "AllocationStrategy": SPOT_ALLOCATION_STRATEGY,
            "InstanceInterruptionBehavior": "terminate",
        }
    else:
        options = {"AllocationStrategy": request.on_demand_allocation_strategy}
    if request.max_price_per_hour is not None:
        options["MaxTotalPrice"] = cost.format_aws_price(request.max_price_per_hour)
    fleet: dict[str, Any] = {
        "ClientToken": client_token,
        "Type": request.fleet_type,
        "TargetCapacitySpecification": {
            "TotalTargetCapacity": request.size,
            "DefaultTargetCapacityType": request.market,
        },
        "SpotOptions" if request.market == "spot" else "OnDemandOptions": options,
        "LaunchTemplateConfigs": [
            {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateId": launch_template_id,
                    "Version": launch_template_version,
                },
                "Overrides": overrides,
            }
        ],
        "TagSpecifications": [{"ResourceType": "fleet", "Tags": list(tags)}],
    }
    if request.fleet_type == "maintain":
        # ValidUntil is not supported for instant fleets (CreateFleet API reference).
        fleet["ValidUntil"] = valid_until
        fleet["TerminateInstancesWithExpiration"] = True
    return fleet


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


MAX_EC2_FLEET_OVERRIDES = 300
"""CreateFleet: at most 300 launch template overrides per request (EC2 Fleet quotas)."""
EC2_FLEET_TYPES = ("instant", "maintain")
"""`request` is left out: AWS recommends `instant` for one-shot launches instead."""
ON_DEMAND_ALLOCATION_STRATEGIES = ("lowest-price", "prioritized")
SPOT_ALLOCATION_STRATEGY = "price-capacity-optimized"
"""EC2 Fleet's recommended Spot strategy: the lowest-priced pools among those most likely to
keep their capacity ("Allocation strategies for EC2 Fleet")."""

CAPACITY_ERROR_CODES = frozenset({"InsufficientInstanceCapacity", "Unsupported"})
"""EC2's answers for a pool (instance type in a zone) without room or without that type
("Error codes for the Amazon EC2 API"); another pool may well have both."""


def on_demand_pools(request: CreateRequest) -> list[tuple[str, Optional[str]]]:
    """(instance type, subnet) in the order tried: preferred type first, then every subnet."""
    subnets: tuple[Optional[str], ...] = request.subnet_ids or (None,)
    return [(t, s) for t in request.on_demand_instance_types for s in subnets]


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
            partial(_token_unused, clients, request.annex_name, token),
        )
        attempt = LaunchedPool(instance_type, subnet)
        result.launched.append(attempt)
        launch = partial(
            _run_instances, clients, request, settings, ami, token, tags, instance_type, subnet
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


def _run_instances(
    clients: AnnexClients,
    request: CreateRequest,
    settings: Settings,
    ami: str,
    client_token: str,
    tags: list[dict[str, str]],
    instance_type: str,
    subnet_id: Optional[str],
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
    if request.user_data is not None:
        args["UserData"] = request.user_data  # botocore base64-encodes it; content untouched
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
    if request.user_data is not None:
        data["UserData"] = base64.b64encode(request.user_data).decode()
    elif plan.template_data.get("UserData"):
        data["UserData"] = plan.template_data["UserData"]
    response = clients.ec2.create_launch_template(
        LaunchTemplateName=template_name,
        ClientToken=client_token,
        LaunchTemplateData=data,
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags}],
    )
    template = response["LaunchTemplate"]
    return str(template["LaunchTemplateId"]), str(template.get("LatestVersionNumber", 1))


def _token_unused(clients: AnnexClients, annex_name: str, client_token: str) -> None:
    """Before launching: nothing may already exist with this exact client token."""
    found = annex.find(clients.ec2, annex_name, client_token=client_token)
    if found.instances or found.fleets:
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


# --- Lease extension ----------------------------------------------------------------------------


def extend_lease(
    annex_name: str,
    duration_seconds: int,
    *,
    settings: Settings,
    clients: AnnexClients,
    now: Optional[datetime] = None,
) -> ExtendResult:
    """Move the annex's lease to `now + duration`: the record and the schedule."""
    try:
        contract.validate_annex_name(annex_name)
    except contract.InvalidAnnexName as exc:
        raise InvalidInput(str(exc)) from None
    validate_duration(duration_seconds)
    require_setup(settings, NEEDED_FOR_ON_DEMAND, clients.region)
    region = clients.region or None
    try:
        record = lease.read_lease_record(clients.s3, settings.config_bucket, annex_name)
        if record is None:
            raise InvalidInput(
                f"annex {annex_name} has no lease to extend (it ended or never existed)",
                next_step=f"create it with `condor_annex -annex-name {annex_name} -count N`",
            )
        moment = now or datetime.now(timezone.utc)
        new_expiry = (moment + timedelta(seconds=duration_seconds)).replace(microsecond=0)
        moved = record.with_expiry(new_expiry)
        lease.put_lease_record(clients.s3, moved)
        result = ExtendResult(annex_name, record.expiry, new_expiry)
        if lease.get_schedule(clients.scheduler, annex_name) is None:
            lease.create_schedule(
                clients.scheduler,
                moved,
                lease_function_arn=settings.lease_function_arn,
                scheduler_role_arn=settings.scheduler_role_arn,
            )
            result.schedule_recreated = True
        else:
            lease.update_schedule(
                clients.scheduler,
                moved,
                lease_function_arn=settings.lease_function_arn,
                scheduler_role_arn=settings.scheduler_role_arn,
            )
        if record.kind == contract.FLEET_KIND_SPOT_FLEET and new_expiry > record.expiry:
            # ModifySpotFleetRequest cannot change ValidUntil (EC2 API reference), and the fleet
            # was requested with TerminateInstancesWithExpiration.
            result.notes.append(
                f"the Spot Fleet's own expiry stays at {record.expires_at}: its instances end "
                "then; create a new annex to run longer"
            )
        result.notes.append(
            "running instances keep the token they booted with (it expires at the old lease end)"
        )
        return result
    except (ClientError, BotoCoreError) as exc:
        raise translate_aws_error(exc, action="extend the annex's lease", region=region) from exc
