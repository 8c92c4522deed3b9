"""`condor_annex off -annex-name NAME`: end an annex now, through AWS.

Order: ask the pool to shut the annex's daemons down peacefully (optional hook, best effort),
cancel its Spot Fleets with their instances, terminate its own instances, then remove its
launch template, tarball, lease record and schedule. Which instances belong to the annex is
decided by client token AND the tags set at launch (`contract.ownership`): a resource matching
only one of them is reported in the notes and left alone. Running it twice is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from botocore.exceptions import BotoCoreError, ClientError

from condor_annex import contract, lease
from condor_annex.annex_settings import NEEDED_FOR_STATUS, AnnexClients, Settings
from condor_annex.create import (
    fleets_of,
    instances_with_token_prefix,
    one_sided_matches,
    require_setup,
)
from condor_annex.errors import InvalidInput, translate_aws_error
from condor_annex.launch_templates import delete_launch_template
from condor_annex.status import describe_instances

PoolShutdown = Callable[[str], int]
"""Ask the pool to turn the annex's daemons off peacefully; returns how many were asked."""

_TERMINATE_BATCH = 500


@dataclass
class OffResult:
    annex_name: str
    peaceful_requests: Optional[int] = None
    terminated_instances: list[str] = field(default_factory=list)
    cancelled_fleets: list[str] = field(default_factory=list)
    deleted_launch_template: bool = False
    deleted_tarball: bool = False
    deleted_lease_record: bool = False
    deleted_schedule: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(
            self.terminated_instances
            or self.cancelled_fleets
            or self.deleted_launch_template
            or self.deleted_tarball
            or self.deleted_lease_record
            or self.deleted_schedule
        )


def _exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if lease.is_not_found(exc):
            return False
        raise
    return True


def annex_off(
    annex_name: str,
    *,
    settings: Settings,
    clients: AnnexClients,
    pool_shutdown: Optional[PoolShutdown] = None,
) -> OffResult:
    """Terminate the annex and remove everything it owns; idempotent."""
    try:
        contract.validate_annex_name(annex_name)
    except contract.InvalidAnnexName as exc:
        raise InvalidInput(str(exc)) from None
    require_setup(settings, NEEDED_FOR_STATUS, clients.region)
    result = OffResult(annex_name)
    if pool_shutdown is not None:
        try:
            result.peaceful_requests = pool_shutdown(annex_name)
        except Exception as exc:  # peaceful shutdown is a courtesy; AWS termination follows
            result.notes.append(
                f"the pool was not asked to shut down ({type(exc).__name__}: {exc})"
            )
    try:
        _off(annex_name, settings, clients, result)
    except (ClientError, BotoCoreError) as exc:
        raise translate_aws_error(
            exc, action=f"turn annex {annex_name} off", region=clients.region or None
        ) from exc
    return result


def _off(annex_name: str, settings: Settings, clients: AnnexClients, result: OffResult) -> None:
    ec2 = clients.ec2
    fleets = [str(f["SpotFleetRequestId"]) for f in fleets_of(ec2, annex_name)]
    if fleets:
        # TerminateInstances=True ends the fleet's instances with it (EC2 API reference).
        ec2.cancel_spot_fleet_requests(SpotFleetRequestIds=fleets, TerminateInstances=True)
        result.cancelled_fleets = fleets
    ids = {str(i["InstanceId"]) for i in instances_with_token_prefix(ec2, annex_name)}
    if fleets:
        # Belt and braces: instances the fleet had tagged before it was cancelled.
        live = {
            "Name": "instance-state-name",
            "Values": ["pending", "running", "stopping", "stopped"],
        }
        for inst in describe_instances(
            ec2, [{"Name": f"tag:{contract.SPOT_FLEET_REQUEST_ID_TAG}", "Values": fleets}, live]
        ):
            ids.add(str(inst["InstanceId"]))
    ordered = sorted(ids)
    for start in range(0, len(ordered), _TERMINATE_BATCH):
        ec2.terminate_instances(InstanceIds=ordered[start : start + _TERMINATE_BATCH])
    result.terminated_instances = ordered
    for described in one_sided_matches(ec2, annex_name):
        if not any(i in described for i in ordered) and not any(f in described for f in fleets):
            result.notes.append(
                f"left alone: {described} matches annex {annex_name} only in part "
                "(client token and condor_annex tags must both match); check it yourself"
            )

    result.deleted_launch_template = delete_launch_template(
        ec2, contract.launch_template_name(annex_name)
    )

    bucket = settings.config_bucket
    key = contract.config_key(annex_name)
    if _exists(clients.s3, bucket, key):
        clients.s3.delete_object(Bucket=bucket, Key=key)
        result.deleted_tarball = True
    if _exists(clients.s3, bucket, contract.lease_key(annex_name)):
        lease.delete_lease_record(clients.s3, bucket, annex_name)
        result.deleted_lease_record = True
    result.deleted_schedule = lease.delete_schedule(clients.scheduler, annex_name)


def htcondor_pool_shutdown(collector: str) -> PoolShutdown:
    """Ask each master of the annex (ads with AnnexName == name) to shut down peacefully."""

    def shutdown(annex_name: str) -> int:
        import htcondor2

        coll = htcondor2.Collector(collector)
        constraint = f'{contract.ANNEX_NAME_ATTRIBUTE} == "{annex_name}"'
        ads = coll.query(htcondor2.AdType.Master, constraint=constraint)
        for ad in ads:
            htcondor2.send_command(ad, htcondor2.DaemonCommand.OffPeaceful)
        return len(ads)

    return shutdown
