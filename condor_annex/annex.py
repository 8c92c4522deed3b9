"""One annex: find everything it owns, and end it.

This is the only place that decides which AWS resources belong to an annex. `create`'s rollback,
`status`, `off`, the lease and sweep functions, `-destroy-setup`'s "annexes still running" check
and the demo all read or end annexes through it. boto3 and the contract only: the lease
function's bundle ships this module beside the contract (stacks/lambda_code.py).

Ownership (docs/ARCHITECTURE.md, "Which resources belong to an annex"): a resource belongs to
annex X only when BOTH
  - its client token is `X_<GUID>` (a Spot Fleet instance: its fleet's client token, reached
    through the fleet-request-id tag Spot Fleet adds), and
  - the annex tag `htcondor:AnnexName` this tool set at launch says X.
A resource matching only one of the two is reported in `Annex.unowned` and never touched: a
hand-made instance someone tagged X, or an instance of ours whose tag was edited, is not ours
to terminate. The launch template is named and tagged (it has no client token to read back).

A launch kind (Spot Fleet today) is one `FleetKind` in `FLEET_KINDS`: how to list its requests,
which tag its service puts on the instances it launches, and how to cancel requests with their
instances. A new kind (EC2 Fleet) is one more entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from botocore.exceptions import ClientError

from condor_annex import contract
from condor_annex.aws import error_code, is_not_found

LIVE_INSTANCE_STATES: tuple[str, ...] = ("pending", "running", "stopping", "stopped")
"""Instances that still run (or will): terminate them. `shutting-down` is already leaving."""
SHOWN_INSTANCE_STATES: tuple[str, ...] = (
    "pending",
    "running",
    "shutting-down",
    "stopping",
    "stopped",
)
"""What `status` shows: every live state plus `shutting-down`."""
TERMINATE_BATCH = 500
"""Instances per TerminateInstances call (EC2 accepts up to 1,000 IDs; half keeps requests small)."""
_FILTER_VALUES_MAX = 200
"""EC2 accepts up to 200 values in one filter."""

InstanceRecord = dict[str, Any]
"""One instance as DescribeInstances returns it."""


# --- Launch kinds -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fleet:
    """One fleet request (any kind) as the annex model sees it."""

    kind: str
    fleet_id: str
    client_token: Optional[str]
    annex_tag: Optional[str]
    state: str


@dataclass(frozen=True)
class FleetKind:
    """How one kind of fleet request is listed, recognised on its instances, and cancelled."""

    name: str
    label: str
    """How people call it (and the AWS console spells it): `Spot Fleet`, `EC2 Fleet`."""
    instance_tag: str
    """The tag the service adds to every instance it launches, valued with the request id."""
    live_states: tuple[str, ...]
    list_fleets: Callable[[Any], Iterator[Fleet]]
    cancel: Callable[[Any, list[str]], tuple[list[str], list[str]]]
    """Cancel requests and terminate their instances; (cancelled ids, error messages)."""


def _tag(tags: Optional[Iterable[Mapping[str, Any]]], key: str) -> Optional[str]:
    for tag in tags or ():
        if tag.get("Key") == key:
            return str(tag.get("Value", ""))
    return None


def tag_value(resource: Mapping[str, Any], key: str) -> Optional[str]:
    """The value of tag `key` on a described resource, or None."""
    return _tag(resource.get("Tags"), key)


def _spot_fleet_annex_tag(fleet: Mapping[str, Any]) -> Optional[str]:
    """The annex tag of a Spot Fleet request: its own tags, else the request's tag spec."""
    found = tag_value(fleet, contract.TAG_ANNEX_NAME)
    if found is not None:
        return found
    config = fleet.get("SpotFleetRequestConfig", {})
    for spec in config.get("TagSpecifications", []) or []:
        if spec.get("ResourceType") == "spot-fleet-request":
            found = _tag(spec.get("Tags"), contract.TAG_ANNEX_NAME)
            if found is not None:
                return found
    return None


def _list_spot_fleets(ec2: Any) -> Iterator[Fleet]:
    for page in ec2.get_paginator("describe_spot_fleet_requests").paginate():
        for fleet in page.get("SpotFleetRequestConfigs", []):
            yield Fleet(
                kind=contract.FLEET_KIND_SPOT_FLEET,
                fleet_id=str(fleet["SpotFleetRequestId"]),
                client_token=fleet.get("SpotFleetRequestConfig", {}).get("ClientToken"),
                annex_tag=_spot_fleet_annex_tag(fleet),
                state=str(fleet.get("SpotFleetRequestState", "")),
            )


def _cancel_spot_fleets(ec2: Any, fleet_ids: list[str]) -> tuple[list[str], list[str]]:
    # TerminateInstances=True: cancelling alone would leave the fleet's instances running.
    answer = ec2.cancel_spot_fleet_requests(SpotFleetRequestIds=fleet_ids, TerminateInstances=True)
    cancelled = [str(ok["SpotFleetRequestId"]) for ok in answer.get("SuccessfulFleetRequests", [])]
    errors = [
        f"CancelSpotFleetRequests {failed.get('SpotFleetRequestId')}: {failed.get('Error')}"
        for failed in answer.get("UnsuccessfulFleetRequests", [])
    ]
    return cancelled, errors


SPOT_FLEET = FleetKind(
    name=contract.FLEET_KIND_SPOT_FLEET,
    label="Spot Fleet",
    instance_tag=contract.SPOT_FLEET_REQUEST_ID_TAG,
    # SpotFleetRequestConfig.SpotFleetRequestState (EC2 API reference); `cancelled_running`
    # still owns instances.
    live_states=("submitted", "active", "modifying", "cancelled_running"),
    list_fleets=_list_spot_fleets,
    cancel=_cancel_spot_fleets,
)


def _list_ec2_fleets(ec2: Any) -> Iterator[Fleet]:
    for page in ec2.get_paginator("describe_fleets").paginate():
        for fleet in page.get("Fleets", []):
            yield Fleet(
                kind=contract.FLEET_KIND_EC2_FLEET,
                fleet_id=str(fleet["FleetId"]),
                client_token=fleet.get("ClientToken"),
                annex_tag=tag_value(fleet, contract.TAG_ANNEX_NAME),
                state=str(fleet.get("FleetState", "")),
            )


DELETE_FLEETS_BATCH = 25
"""DeleteFleets takes at most 25 instant fleets per request (100 of the other types)."""


def _delete_ec2_fleets(ec2: Any, fleet_ids: list[str]) -> tuple[list[str], list[str]]:
    deleted: list[str] = []
    errors: list[str] = []
    for start in range(0, len(fleet_ids), DELETE_FLEETS_BATCH):
        # TerminateInstances=True: deleting alone would leave a maintain fleet's instances
        # running (`deleted_running`); instant fleets cannot be deleted without it.
        answer = ec2.delete_fleets(
            FleetIds=fleet_ids[start : start + DELETE_FLEETS_BATCH], TerminateInstances=True
        )
        deleted += [str(ok["FleetId"]) for ok in answer.get("SuccessfulFleetDeletions", [])]
        errors += [
            f"DeleteFleets {failed.get('FleetId')}: {failed.get('Error', {}).get('Code')}"
            for failed in answer.get("UnsuccessfulFleetDeletions", [])
        ]
    return deleted, errors


EC2_FLEET = FleetKind(
    name=contract.FLEET_KIND_EC2_FLEET,
    label="EC2 Fleet",
    instance_tag=contract.EC2_FLEET_ID_TAG,
    # FleetData.FleetState (EC2 API reference); `deleted_running` still owns instances.
    live_states=("submitted", "active", "modifying", "deleted_running"),
    list_fleets=_list_ec2_fleets,
    cancel=_delete_ec2_fleets,
)

FLEET_KINDS: tuple[FleetKind, ...] = (SPOT_FLEET, EC2_FLEET)
"""Every launch kind that makes fleet requests; on-demand instances need no entry."""


# --- Ownership ----------------------------------------------------------------------------------


def owns(annex_name: str, client_token: Optional[str], annex_tag: Optional[str]) -> bool:
    """The one ownership rule: the client token AND the annex tag both name `annex_name`."""
    return contract.token_belongs_to(client_token, annex_name) and annex_tag == annex_name


def claimed_by(client_token: Optional[str], annex_tag: Optional[str]) -> Optional[str]:
    """The annex both marks agree on, or None (no annex, or the marks disagree)."""
    name = contract.annex_name_from_client_token(client_token or "")
    return name if name is not None and name == annex_tag else None


@dataclass(frozen=True)
class Unowned:
    """A resource that matches an annex by one mark only: reported, never touched."""

    resource: str
    resource_id: str
    client_token_says: Optional[str]
    tag_says: Optional[str]

    def describe(self) -> str:
        return (
            f"{self.resource} {self.resource_id}: client token says "
            f"{self.client_token_says or 'no annex'}, tag {contract.TAG_ANNEX_NAME} says "
            f"{self.tag_says or 'nothing'}; not touched"
        )


# --- Finding ------------------------------------------------------------------------------------


@dataclass
class Annex:
    """Everything one annex owns in AWS (live instances, live fleets, its launch template)."""

    name: str
    instances: list[InstanceRecord] = field(default_factory=list)
    """Owned instances, on-demand and fleet-launched, as DescribeInstances returned them."""
    fleets: list[Fleet] = field(default_factory=list)
    launch_template_id: Optional[str] = None
    unowned: list[Unowned] = field(default_factory=list)
    awaiting_fleet_tag: list[InstanceRecord] = field(default_factory=list)
    """Instances with the annex tag and a fleet-generated token but not yet the fleet's tag:
    ended with their fleet (cancel terminates them), shown by `status`, never terminated alone."""

    @property
    def instance_ids(self) -> list[str]:
        return sorted(str(i["InstanceId"]) for i in self.instances)

    def fleet_ids(self, kind: Optional[str] = None) -> list[str]:
        return sorted(f.fleet_id for f in self.fleets if kind is None or f.kind == kind)

    @property
    def empty(self) -> bool:
        return not (self.instances or self.fleets or self.launch_template_id)


def describe_instances(ec2: Any, filters: list[dict[str, Any]]) -> list[InstanceRecord]:
    """Every instance matching `filters`, across pages."""
    out: list[InstanceRecord] = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page.get("Reservations", []):
            out.extend(reservation.get("Instances", []))
    return out


def _state_filter(states: Sequence[str]) -> dict[str, Any]:
    return {"Name": "instance-state-name", "Values": list(states)}


def find_fleets(ec2: Any, annex_name: Optional[str] = None) -> tuple[list[Fleet], list[Unowned]]:
    """Live fleet requests owned by `annex_name` (by every annex when None), and mismatches."""
    owned: list[Fleet] = []
    unowned: list[Unowned] = []
    for kind in FLEET_KINDS:
        for fleet in kind.list_fleets(ec2):
            if fleet.state not in kind.live_states:
                continue
            by_token = contract.annex_name_from_client_token(fleet.client_token or "")
            if annex_name is not None and annex_name not in (by_token, fleet.annex_tag):
                continue
            owner = claimed_by(fleet.client_token, fleet.annex_tag)
            if owner is not None:
                owned.append(fleet)
            elif by_token is not None or fleet.annex_tag is not None:
                unowned.append(Unowned(kind.name, fleet.fleet_id, by_token, fleet.annex_tag))
    return owned, unowned


def _fleet_of(instance: Mapping[str, Any]) -> Optional[tuple[FleetKind, str]]:
    for kind in FLEET_KINDS:
        fleet_id = tag_value(instance, kind.instance_tag)
        if fleet_id:
            return kind, fleet_id
    return None


def fleet_id_of(instance: Mapping[str, Any]) -> Optional[str]:
    """The fleet request that launched `instance` (by its service's tag), if any."""
    found = _fleet_of(instance)
    return found[1] if found else None


def sort_instances(
    candidates: Iterable[InstanceRecord], fleets: Sequence[Fleet]
) -> dict[Optional[str], Annex]:
    """Group described instances by owning annex; key None collects what no annex owns.

    On-demand: the instance's own token and tag. Fleet-launched: the fleet (owned by token and
    tag) named by the service's tag, and the instance's own annex tag.
    """
    fleet_owner = {f.fleet_id: claimed_by(f.client_token, f.annex_tag) for f in fleets}
    out: dict[Optional[str], Annex] = {}
    seen: set[str] = set()

    def annex(name: Optional[str]) -> Annex:
        return out.setdefault(name, Annex(name or ""))

    for instance in candidates:
        instance_id = str(instance["InstanceId"])
        if instance_id in seen:
            continue
        seen.add(instance_id)
        tag = tag_value(instance, contract.TAG_ANNEX_NAME)
        token = instance.get("ClientToken") or None
        fleet = _fleet_of(instance)
        if fleet is not None:
            owner = fleet_owner.get(fleet[1])
            if owner is not None and owner == tag:
                annex(owner).instances.append(instance)
            else:
                annex(None).unowned.append(Unowned("instance", instance_id, owner, tag))
            continue
        by_token = contract.annex_name_from_client_token(token or "")
        if by_token is not None and by_token == tag:
            annex(by_token).instances.append(instance)
        elif by_token is None and tag is not None and fleets_pending(fleets, tag):
            # Spot Fleet tags its instances some time after launch; until then the instance's
            # own token is the fleet's generated one (no annex), and only the tag points here.
            annex(tag).awaiting_fleet_tag.append(instance)
        else:
            annex(None).unowned.append(Unowned("instance", instance_id, by_token, tag))
    return out


def fleets_pending(fleets: Sequence[Fleet], annex_name: str) -> bool:
    """True when `annex_name` has an owned live fleet (whose instances may still lack its tag)."""
    return any(claimed_by(f.client_token, f.annex_tag) == annex_name for f in fleets)


def _chunks(values: Sequence[str], size: int = _FILTER_VALUES_MAX) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def find(
    ec2: Any,
    annex_name: str,
    *,
    states: Sequence[str] = LIVE_INSTANCE_STATES,
    client_token: Optional[str] = None,
    thorough: bool = True,
) -> Annex:
    """Everything annex `annex_name` owns in EC2, and what matches it by one mark only.

    One DescribeInstances pass by the annex tag finds every owned instance (both marks are
    needed, so an owned instance always carries the tag). `thorough` adds a pass by client token
    so instances of this annex's token whose tag was removed or changed are reported, and a pass
    by fleet tag for fleet instances whose annex tag was changed. `client_token` narrows the
    result to what one request launched (create's rollback).
    """
    contract.validate_annex_name(annex_name)
    fleets, fleet_mismatches = find_fleets(ec2, annex_name)
    if client_token is not None:
        fleets = [f for f in fleets if f.client_token == client_token]
    live = _state_filter(states)
    candidates = describe_instances(
        ec2, [{"Name": f"tag:{contract.TAG_ANNEX_NAME}", "Values": [annex_name]}, live]
    )
    if thorough:
        token_filter = client_token or contract.client_token_filter_value(annex_name)
        candidates += describe_instances(
            ec2, [{"Name": "client-token", "Values": [token_filter]}, live]
        )
        for kind in FLEET_KINDS:
            ids = [f.fleet_id for f in fleets if f.kind == kind.name]
            for chunk in _chunks(ids):
                candidates += describe_instances(
                    ec2, [{"Name": f"tag:{kind.instance_tag}", "Values": chunk}, live]
                )
    grouped = sort_instances(candidates, fleets)
    annex = grouped.get(annex_name, Annex(annex_name))
    annex.name = annex_name
    annex.fleets = fleets
    if client_token is not None:
        fleet_ids = {f.fleet_id for f in fleets}
        annex.instances = [
            i
            for i in annex.instances
            if i.get("ClientToken") == client_token or fleet_id_of(i) in fleet_ids
        ]
        annex.awaiting_fleet_tag = annex.awaiting_fleet_tag if fleets else []
    # Mismatches that concern this annex (the tag or the token names it).
    annex.unowned = [
        u
        for u in [*fleet_mismatches, *grouped.get(None, Annex("")).unowned]
        if annex_name in (u.client_token_says, u.tag_says)
    ]
    annex.launch_template_id = find_launch_template(ec2, annex_name, annex.unowned)
    return annex


def launched_with(ec2: Any, client_token: str, kind: str) -> bool:
    """True when a request with exactly `client_token` already launched something.

    Not an ownership question: EC2 answers a repeated token with the earlier result instead of
    launching, so before a launch nothing may carry the token at all (tag or not).
    """
    for fleet_kind in FLEET_KINDS:
        if fleet_kind.name == kind:
            return any(f.client_token == client_token for f in fleet_kind.list_fleets(ec2))
    found = describe_instances(ec2, [{"Name": "client-token", "Values": [client_token]}])
    return any(i.get("ClientToken") == client_token for i in found)


def find_all(ec2: Any, *, states: Sequence[str] = LIVE_INSTANCE_STATES) -> dict[str, Annex]:
    """Every annex with something live in EC2, by name, in one pass by the annex tag key.

    Mismatches are collected under the empty name "".
    """
    fleets, fleet_mismatches = find_fleets(ec2)
    candidates = describe_instances(
        ec2, [{"Name": "tag-key", "Values": [contract.TAG_ANNEX_NAME]}, _state_filter(states)]
    )
    grouped = sort_instances(candidates, fleets)
    stray = grouped.pop(None, Annex(""))
    stray.unowned[:0] = fleet_mismatches
    out: dict[str, Annex] = {name: annex for name, annex in grouped.items() if name is not None}
    for fleet in fleets:
        owner = claimed_by(fleet.client_token, fleet.annex_tag)
        if owner is not None:
            out.setdefault(owner, Annex(owner)).fleets.append(fleet)
    if stray.unowned:
        out[""] = stray
    return out


def find_launch_template(
    ec2: Any, annex_name: str, unowned: Optional[list[Unowned]] = None
) -> Optional[str]:
    """The id of the annex's launch template: its name AND its annex tag say so.

    Looked up with a name filter (an empty answer when absent, where `LaunchTemplateNames=[...]`
    answers an error) and confirmed by exact name. A template of that name without the tag is
    appended to `unowned`.
    """
    name = contract.launch_template_name(annex_name)
    found = ec2.describe_launch_templates(
        Filters=[{"Name": "launch-template-name", "Values": [name]}]
    ).get("LaunchTemplates", [])
    for template in found:
        if template.get("LaunchTemplateName") != name:
            continue  # a filter is not a promise of an exact match
        tag = tag_value(template, contract.TAG_ANNEX_NAME)
        if tag == annex_name:
            return str(template["LaunchTemplateId"])
        if unowned is not None:
            unowned.append(Unowned("launch-template", str(template["LaunchTemplateId"]), None, tag))
    return None


# --- Ending -------------------------------------------------------------------------------------


@dataclass
class Ended:
    """What `end` did; every list is empty when there was nothing left to do."""

    annex_name: str
    cancelled_fleets: list[str] = field(default_factory=list)
    cancelled_by_kind: dict[str, list[str]] = field(default_factory=dict)
    """The same fleets by `FleetKind.label`, for reports that name the kind."""
    terminated_instances: list[str] = field(default_factory=list)
    deleted_launch_template: Optional[str] = None
    deleted_objects: list[str] = field(default_factory=list)
    deleted_schedule: bool = False
    unowned: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    first_failure: Optional[ClientError] = field(default=None, repr=False, compare=False)
    """The first refusal as AWS raised it, so a caller can explain it (access denied, ...)."""

    def failed(self, what: str, error: ClientError) -> None:
        self.errors.append(f"{what}: {error_code(error)}: {error}")
        if self.first_failure is None:
            self.first_failure = error

    @property
    def changed(self) -> bool:
        return bool(
            self.cancelled_fleets
            or self.terminated_instances
            or self.deleted_launch_template
            or self.deleted_objects
            or self.deleted_schedule
        )


def terminate(ec2: Any, instance_ids: Sequence[str], ended: Ended) -> None:
    """Terminate in batches; a refused batch is retried one instance at a time, so one
    instance this identity may not end (or one already gone) does not keep the rest running."""
    ordered = sorted(set(instance_ids))
    for start in range(0, len(ordered), TERMINATE_BATCH):
        batch = ordered[start : start + TERMINATE_BATCH]
        try:
            ec2.terminate_instances(InstanceIds=batch)
        except ClientError as error:
            if len(batch) == 1:
                ended.failed(f"TerminateInstances {batch[0]}", error)
                continue
            for instance_id in batch:
                terminate(ec2, [instance_id], ended)
        else:
            ended.terminated_instances.extend(batch)


def _attempt(ended: Ended, what: str, action: Callable[[], Any]) -> Any:
    """Run one step of `end`; record a refusal and go on with the rest."""
    try:
        return action()
    except ClientError as error:
        ended.failed(what, error)
        return None


def _delete_launch_template(ec2: Any, template_id: str) -> bool:
    try:
        ec2.delete_launch_template(LaunchTemplateId=template_id)
    except ClientError as error:
        if "NotFound" not in error_code(error):
            raise
        return False
    return True


def delete_schedule(scheduler: Any, annex_name: str) -> bool:
    """Delete the annex's lease schedule; False when there was none (fired or deleted)."""
    try:
        scheduler.delete_schedule(Name=contract.schedule_name(annex_name))
    except ClientError as error:
        if is_not_found(error):
            return False
        raise
    return True


def end(
    annex: Annex,
    *,
    ec2: Any,
    s3: Any = None,
    bucket: str = "",
    scheduler: Any = None,
    present_objects: Optional[Iterable[str]] = None,
) -> Ended:
    """End everything `annex` holds, in order, tolerating partial failure; idempotent.

    Order: fleets first (cancelled with their instances, so they cannot replace what is
    terminated), then instances, then the launch template (after its fleets, which launch from
    it), the tarball, the schedule, and the lease record LAST: while anything failed the record
    stays, so the sweep tries again. With `s3`/`bucket` the tarball and lease record are deleted
    (S3 DeleteObject of an absent key succeeds); `present_objects` (keys known to exist) makes
    the report say which were really there. Without `scheduler` the schedule is left alone.
    Each refusal is recorded in `errors` and the remaining steps still run.
    """
    ended = Ended(annex.name, unowned=[u.describe() for u in annex.unowned])
    for kind in FLEET_KINDS:
        ids = annex.fleet_ids(kind.name)
        if ids:
            answer = _attempt(ended, f"cancel {kind.name} {ids}", lambda: kind.cancel(ec2, ids))  # noqa: B023
            if answer is not None:
                ended.cancelled_fleets.extend(answer[0])
                if answer[0]:
                    ended.cancelled_by_kind.setdefault(kind.label, []).extend(answer[0])
                ended.errors.extend(answer[1])
    # Cancelling ends fleet instances asynchronously; terminate the ones we know of now as well.
    terminate(ec2, annex.instance_ids, ended)
    if annex.launch_template_id:
        template_id = annex.launch_template_id
        if _attempt(
            ended,
            f"delete launch template {template_id}",
            lambda: _delete_launch_template(ec2, template_id),
        ):
            ended.deleted_launch_template = contract.launch_template_name(annex.name)
    known = None if present_objects is None else set(present_objects)

    def delete_object(key: str) -> None:
        deleted = _attempt(
            ended, f"delete {key}", lambda: s3.delete_object(Bucket=bucket, Key=key) or True
        )
        if deleted and (known is None or key in known):
            ended.deleted_objects.append(key)

    if s3 is not None and bucket:
        delete_object(contract.config_key(annex.name))
    if scheduler is not None:
        ended.deleted_schedule = bool(
            _attempt(
                ended,
                "delete the lease schedule",
                lambda: delete_schedule(scheduler, annex.name),
            )
        )
    if s3 is not None and bucket and not ended.errors:
        delete_object(contract.lease_key(annex.name))
    return ended


def present_objects(s3: Any, bucket: str, annex_name: str) -> list[str]:
    """Which of the annex's tarball and lease record exist (HeadObject each)."""
    present: list[str] = []
    for key in (contract.config_key(annex_name), contract.lease_key(annex_name)):
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if is_not_found(error):
                continue
            raise
        present.append(key)
    return present
