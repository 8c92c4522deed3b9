"""Presentation: verbs return dataclasses; this turns them into text tables or JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from condor_annex import contract
from condor_annex.contract import utc_iso
from condor_annex.cost import CostPreview
from condor_annex.create import CreateResult
from condor_annex.extend import ExtendResult
from condor_annex.off import OffResult
from condor_annex.status import StatusReport

if TYPE_CHECKING:
    from condor_annex.setup import CheckResult, SetupResult

SCHEMA_PATH = Path(__file__).with_name("status.schema.json")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


def to_json(value: Any) -> str:
    """Any verb result as JSON (dataclasses, datetimes in the contract's UTC form)."""
    if isinstance(value, StatusReport):
        value = value.to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.dumps(value, default=_default, indent=2, sort_keys=True)


def status_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _joined(value: bool | None, never: bool) -> str:
    if never:
        return "NEVER JOINED"
    return {True: "yes", False: "no", None: "?"}[value]


def render_status(report: StatusReport) -> str:
    if not report.annexes:
        return "No annexes found" + (f" in {report.region}." if report.region else ".")
    out: list[str] = []
    for annex in report.annexes:
        lease = annex.lease_expires_at or "no lease record"
        if annex.lease_expired:
            lease += " (EXPIRED)"
        kind = annex.kind or "unknown kind"
        counts = ", ".join(f"{n} {s}" for s, n in sorted(annex.counts.items())) or "no instances"
        out.append(f"Annex {annex.annex_name} ({kind}): {counts}; lease until {lease}")
        spent = _usd(annex.cost_so_far_usd) if annex.instances else "$0.0000"
        cap = (
            f"; cap {_usd(annex.max_price_per_hour)}/hour"
            if annex.max_price_per_hour is not None
            else ""
        )
        out.append(f"  cost so far {spent}{cap}")
        if annex.instances:
            rows = [
                [
                    i.instance_id,
                    i.state,
                    i.instance_type,
                    i.launch_time,
                    _joined(i.joined_pool, i.never_joined),
                ]
                for i in annex.instances
            ]
            out.append(table(rows, ["INSTANCE", "STATE", "TYPE", "LAUNCHED", "IN POOL"]))
        out.append("")
    if not report.pool_checked:
        out.append("(the pool was not asked; pass -collector HOST to see which instances joined)")
    out.extend(f"note: {n}" for n in report.notes)
    return "\n".join(out).rstrip()


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def render_preview(preview: CostPreview) -> str:
    """The cost preview: per pool, the hourly range, the whole lease, the cap."""
    rows = []
    for pool in preview.pools:
        spot = (
            f"{_usd(pool.spot_usd_per_hour_min)}-{_usd(pool.spot_usd_per_hour_max)}"
            if pool.spot_usd_per_hour_min is not None
            else ("unknown" if preview.market == "spot" else "-")
        )
        rows.append(
            [pool.instance_type, str(pool.instances), _usd(pool.on_demand_usd_per_hour), spot]
        )
    lines = [
        f"Cost preview ({preview.market}, {preview.region}, prices per instance-hour"
        + (", from the cache)" if preview.cached else ")"),
        table(rows, ["TYPE", "INSTANCES", "ON-DEMAND", "SPOT (range over zones)"]),
    ]
    if preview.usd_per_hour is not None:
        hourly = (
            f"{_usd(preview.usd_per_hour_min)}-{_usd(preview.usd_per_hour)}"
            if preview.usd_per_hour_min is not None
            and preview.usd_per_hour_min != preview.usd_per_hour
            else _usd(preview.usd_per_hour)
        )
        lines.append(
            f"Annex: {hourly} per hour; up to {_usd(preview.usd_for_lease)} for the "
            f"{preview.duration_hours:g} h lease"
        )
    if preview.unknown:
        lines.append("PRICE UNKNOWN: " + "; ".join(preview.unknown))
    if preview.max_price_per_hour is not None:
        lines.append(f"Cap: {_usd(preview.max_price_per_hour)} per hour")
    # Indented like progress lines: on stderr only an error line starts in column one.
    return "\n".join("  " + line for line in "\n".join(lines).splitlines())


def render_create(result: CreateResult) -> str:
    if result.kind == contract.FLEET_KIND_ON_DEMAND:
        what = f"{len(result.instance_ids)} on-demand instance(s): {', '.join(result.instance_ids)}"
    elif result.kind == contract.FLEET_KIND_EC2_FLEET:
        what = f"EC2 Fleet {result.fleet_id}" + (
            f" with {len(result.instance_ids)} instance(s): {', '.join(result.instance_ids)}"
            if result.instance_ids
            else ""
        )
    else:
        what = f"Spot Fleet request {result.fleet_id}"
    lines = [
        f"Annex {result.annex_name} started: {what}.",
        f"Lease ends {utc_iso(result.expires_at)}; "
        f"extend with `condor_annex -annex-name {result.annex_name} -duration D`.",
        f"Check on it with `condor_annex status -annex-name {result.annex_name}`.",
    ]
    lines.extend(f"note: {n}" for n in result.notes)
    return "\n".join(lines)


def render_extend(result: ExtendResult) -> str:
    lines = [
        f"Lease of annex {result.annex_name} moved from "
        f"{utc_iso(result.previous_expiry)} to {utc_iso(result.expires_at)}."
    ]
    lines.extend(f"note: {n}" for n in result.notes)
    return "\n".join(lines)


def render_off(result: OffResult) -> str:
    if not result.changed:
        return f"Annex {result.annex_name}: nothing left to turn off."
    parts = []
    if result.terminated_instances:
        parts.append(f"terminated {len(result.terminated_instances)} instance(s)")
    for label, fleet_ids in result.cancelled_by_kind.items():
        parts.append(f"cancelled {label} {', '.join(fleet_ids)}")
    removed = [
        name
        for name, done in (
            ("configuration", result.deleted_tarball),
            ("lease record", result.deleted_lease_record),
            ("lease schedule", result.deleted_schedule),
            ("launch template", result.deleted_launch_template),
        )
        if done
    ]
    if removed:
        parts.append("removed " + ", ".join(removed))
    lines = [f"Annex {result.annex_name}: " + "; ".join(parts) + "."]
    if result.peaceful_requests is not None:
        lines.append(f"Asked {result.peaceful_requests} daemon(s) to shut down first.")
    if result.drained is not None:
        how = "every daemon had left the pool" if result.drained else "the drain timed out"
        lines.append(f"Drained for {result.drain_seconds:.0f} s: {how}.")
    lines.extend(f"note: {n}" for n in result.notes)
    return "\n".join(lines)


def render_progress(line: str) -> str:
    """One progress line (stderr), indented under the command."""
    return f"  {line}\n"


def render_note(note: str) -> str:
    """A note the admin should read before anything starts (stderr)."""
    return f"condor_annex: note: {note}\n"


def render_declined(what: str) -> str:
    """The answer to a declined confirmation (stderr)."""
    return f"condor_annex: {what}.\n"


def render_setup(result: SetupResult) -> str:
    return (
        f"Setup {result.stack_name} in {result.region} is ready; "
        f"{len(result.outputs)} settings written to {result.config_file}."
    )


def render_check_setup(check: CheckResult) -> str:
    lines = [f"ok: {line}" for line in check.checked]
    lines += [f"PROBLEM: {p.what} — next: {p.next_step}" for p in check.problems]
    return "\n".join(lines)


def render_destroyed(stack_name: str, config_file: Path) -> str:
    return f"Setup {stack_name} removed; its macros were taken out of {config_file}."


def _classad_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def render_classads(report: StatusReport) -> str:
    """`-classad`: one `AnnexInstance` ad per instance, in HTCondor's long ClassAd form (the
    attribute names of the old condor_annex's ads), separated by blank lines; `condor_status
    -ads FILE` reads them back."""
    ads = []
    for annex in report.annexes:
        for instance in annex.instances:
            attributes: dict[str, object] = {
                "MyType": "AnnexInstance",
                "Name": instance.instance_id,
                "EC2InstanceID": instance.instance_id,
                "AnnexName": annex.annex_name,
                "State": instance.state,
                "GridJobStatus": instance.state,
                "InstanceType": instance.instance_type,
                "LaunchTime": instance.launch_time,
                "Market": instance.market,
            }
            optional: dict[str, object] = {
                "AnnexOwner": annex.owner,
                "AnnexLeaseExpiresAt": annex.lease_expires_at,
                "SpotFleetRequestID": instance.fleet_id,
                "PrivateIP": instance.private_ip,
                "PublicIP": instance.public_ip,
                "InPool": instance.joined_pool,
            }
            attributes.update({k: v for k, v in optional.items() if v is not None})
            ads.append("\n".join(f"{k} = {_classad_value(v)}" for k, v in attributes.items()))
    return "\n\n".join(ads)
