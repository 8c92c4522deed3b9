"""`condor_annex status`: the AWS view of annexes joined with the pool's view.

What belongs to an annex is the annex model's one rule (`condor_annex.annex`): client token AND
annex tag. One DescribeInstances pass filtered by the annex tag reads an annex (or, by the tag
key, every annex); instances Spot Fleet has not tagged with its request id yet are shown as found
by tag. The pool's view is injected as `pool_view`, a callable returning the EC2 instance IDs the
collector knows (startd/master ads advertise `contract.INSTANCE_ID_ATTRIBUTE`); None means the
pool was not asked or not reachable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from botocore.exceptions import BotoCoreError, ClientError

from condor_annex import annex, contract, cost, lease
from condor_annex.annex_settings import NEEDED_FOR_STATUS, AnnexClients, Settings, require_setup
from condor_annex.errors import InvalidInput, translate_aws_error

NEVER_JOINED_AFTER = timedelta(minutes=10)
"""A running instance not in the pool after this long is flagged: booting and joining takes
a few minutes; longer means the agent or HTCondor failed (the seed's "silent stragglers")."""

SOURCE_CLIENT_TOKEN = "client-token"  # noqa: S105 (a label, not a secret)
SOURCE_FLEET = "spot-fleet"
SOURCE_TAG = "tag"

PoolView = Callable[[], set[str]]


@dataclass
class InstanceStatus:
    instance_id: str
    annex_name: str
    state: str
    instance_type: str
    launch_time: str
    found_by: str
    fleet_id: Optional[str] = None
    private_ip: Optional[str] = None
    public_ip: Optional[str] = None
    joined_pool: Optional[bool] = None
    never_joined: bool = False
    market: str = "on-demand"
    availability_zone: Optional[str] = None


@dataclass
class AnnexStatus:
    annex_name: str
    kind: Optional[str] = None
    owner: Optional[str] = None
    lease_expires_at: Optional[str] = None
    lease_expired: Optional[bool] = None
    fleet_ids: list[str] = field(default_factory=list)
    instances: list[InstanceStatus] = field(default_factory=list)
    cost_so_far_usd: Optional[float] = None
    """Running time of the instances shown times their current price; None: a price is unknown."""
    max_price_per_hour: Optional[float] = None

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in self.instances:
            out[i.state] = out.get(i.state, 0) + 1
        return out


@dataclass
class StatusReport:
    generated_at: str
    region: str
    pool_checked: bool
    annexes: list[AnnexStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The `--json` document (schema: condor_annex/cli/status.schema.json)."""
        data = asdict(self)
        for one, raw in zip(self.annexes, data["annexes"]):
            raw["counts"] = one.counts
        data["schema_version"] = STATUS_SCHEMA_VERSION
        return data

    def instance_ids(self) -> set[str]:
        return {i.instance_id for a in self.annexes for i in a.instances}


STATUS_SCHEMA_VERSION = 1


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return contract.utc_iso(value)
    return str(value or "")


def _instance_status(instance: dict[str, Any], annex_name: str, found_by: str) -> InstanceStatus:
    return InstanceStatus(
        instance_id=str(instance["InstanceId"]),
        annex_name=annex_name,
        state=str(instance.get("State", {}).get("Name", "unknown")),
        instance_type=str(instance.get("InstanceType", "")),
        launch_time=_iso(instance.get("LaunchTime")),
        found_by=found_by,
        fleet_id=annex.fleet_id_of(instance),
        private_ip=instance.get("PrivateIpAddress"),
        public_ip=instance.get("PublicIpAddress"),
        market="spot" if instance.get("InstanceLifecycle") == "spot" else "on-demand",
        availability_zone=instance.get("Placement", {}).get("AvailabilityZone"),
    )


def collect_instances(
    ec2: Any, annex_name: Optional[str]
) -> tuple[list[InstanceStatus], dict[str, str], list[str]]:
    """Every shown-state instance of the annex (or of every annex), its fleets (id → annex),
    and what matches an annex by one mark only (reported, not shown as the annex's)."""
    if annex_name is not None:
        found = annex.find(ec2, annex_name, states=annex.SHOWN_INSTANCE_STATES, thorough=False)
        annexes = {annex_name: found}
        unowned = found.unowned
    else:
        annexes = annex.find_all(ec2, states=annex.SHOWN_INSTANCE_STATES)
        unowned = [u for a in annexes.values() for u in a.unowned]
        annexes.pop("", None)
    out: list[InstanceStatus] = []
    fleets: dict[str, str] = {}
    for name, found in annexes.items():
        for fleet in found.fleets:
            fleets[fleet.fleet_id] = name
        for inst in found.instances:
            by = SOURCE_FLEET if annex.fleet_id_of(inst) else SOURCE_CLIENT_TOKEN
            out.append(_instance_status(inst, name, by))
        for inst in found.awaiting_fleet_tag:
            out.append(_instance_status(inst, name, SOURCE_TAG))
    out.sort(key=lambda i: (i.annex_name, i.instance_id))
    return out, fleets, [u.describe() for u in unowned]


def annex_status(
    *,
    settings: Settings,
    clients: AnnexClients,
    annex_name: Optional[str] = None,
    pool_view: Optional[PoolView] = None,
    now: Optional[datetime] = None,
    prices: Optional[cost.PriceBook] = None,
) -> StatusReport:
    """The status of one annex or of all annexes in the region, with each annex's cost so far
    (prices from `prices`, default: the Price List / Spot price history, cached a day)."""
    if annex_name is not None:
        try:
            contract.validate_annex_name(annex_name)
        except contract.InvalidAnnexName as exc:
            raise InvalidInput(str(exc)) from None
    require_setup(settings, NEEDED_FOR_STATUS, clients.region)
    moment = now or datetime.now(timezone.utc)
    try:
        instances, fleets, unowned = collect_instances(clients.ec2, annex_name)
        if annex_name:
            one = lease.read_lease_record(clients.s3, settings.config_bucket, annex_name)
            records = [one] if one else []
        else:
            records = lease.list_lease_records(clients.s3, settings.config_bucket)
    except (ClientError, BotoCoreError) as exc:
        raise translate_aws_error(
            exc, action="list the annex instances", region=clients.region or None
        ) from exc

    report = StatusReport(generated_at=_iso(moment), region=clients.region, pool_checked=False)
    report.notes.extend(unowned)
    in_pool: Optional[set[str]] = None
    if pool_view is not None:
        try:
            in_pool = set(pool_view())
            report.pool_checked = True
        except Exception as exc:  # the pool's view is optional; say why it is missing
            report.notes.append(f"the pool could not be asked ({type(exc).__name__}: {exc})")

    annexes: dict[str, AnnexStatus] = {}
    for record in records:
        annexes[record.annex_name] = AnnexStatus(
            annex_name=record.annex_name,
            kind=record.kind,
            owner=record.owner or None,
            lease_expires_at=record.expires_at,
            lease_expired=record.expired(moment),
            max_price_per_hour=record.max_price_per_hour,
        )
    for fleet_id, owner in fleets.items():
        annexes.setdefault(owner, AnnexStatus(annex_name=owner)).fleet_ids.append(fleet_id)
    for inst in instances:
        if in_pool is not None:
            inst.joined_pool = inst.instance_id in in_pool
            launched = contract.parse_utc(inst.launch_time) if inst.launch_time else moment
            inst.never_joined = (
                not inst.joined_pool
                and inst.state == "running"
                and moment - launched > NEVER_JOINED_AFTER
            )
        annexes.setdefault(
            inst.annex_name, AnnexStatus(annex_name=inst.annex_name)
        ).instances.append(inst)
    report.annexes = [annexes[k] for k in sorted(annexes)]
    _add_costs(
        report,
        prices or cost.PriceBook(region=clients.region, ec2=clients.ec2, pricing=clients.pricing),
        moment,
    )
    return report


def _add_costs(report: StatusReport, prices: cost.PriceBook, moment: datetime) -> None:
    """Each annex's cost so far; a price that cannot be found is a note, never a guess."""
    unknown: set[str] = set()
    for shown in report.annexes:
        rows = [
            (
                i.instance_type,
                i.market,
                i.availability_zone,
                contract.parse_utc(i.launch_time) if i.launch_time else None,
            )
            for i in shown.instances
            if i.state in ("running", "stopping", "shutting-down")
        ]
        shown.cost_so_far_usd, why = cost.cost_so_far(prices, rows, moment)
        unknown.update(why)
    if unknown:
        report.notes.append("cost so far unknown: " + "; ".join(sorted(unknown)))


def htcondor_pool_view(collector: str) -> PoolView:
    """A pool view asking `collector` (htcondor2 bindings) for the instance IDs in its ads."""

    def view() -> set[str]:
        import htcondor2

        coll = htcondor2.Collector(collector)
        ids: set[str] = set()
        for ad_type in (htcondor2.AdType.Startd, htcondor2.AdType.Master):
            for ad in coll.query(ad_type, projection=[contract.INSTANCE_ID_ATTRIBUTE]):
                value = ad.get(contract.INSTANCE_ID_ATTRIBUTE)
                if value:
                    ids.add(str(value))
        return ids

    return view
