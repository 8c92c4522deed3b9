"""`condor_annex off -annex-name NAME`: end an annex now, through AWS.

Ask the pool to shut the annex's daemons down peacefully (optional hook, best effort), then end
everything the annex owns with `annex.end` (fleets with their instances, instances, launch
template, tarball, schedule, lease record). Ownership is the annex model's one rule (client token
AND annex tag); a resource matching only one of them is reported, never touched. Running it
twice is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

from botocore.exceptions import BotoCoreError, ClientError

from condor_annex import annex, contract
from condor_annex.annex_settings import NEEDED_FOR_STATUS, AnnexClients, Settings, require_setup
from condor_annex.errors import InvalidInput, translate_aws_error

PoolShutdown = Callable[[str], int]
"""Ask the pool to turn the annex's daemons off peacefully; returns how many were asked."""


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
        found = annex.find(clients.ec2, annex_name)
        present = annex.present_objects(clients.s3, settings.config_bucket, annex_name)
        ended = annex.end(
            found,
            ec2=clients.ec2,
            s3=clients.s3,
            bucket=settings.config_bucket,
            scheduler=clients.scheduler,
            present_objects=present,
        )
    except (ClientError, BotoCoreError) as exc:
        raise translate_aws_error(
            exc, action=f"turn annex {annex_name} off", region=clients.region or None
        ) from exc
    result.cancelled_fleets = ended.cancelled_fleets
    result.terminated_instances = ended.terminated_instances
    result.deleted_launch_template = ended.deleted_launch_template is not None
    result.deleted_tarball = contract.config_key(annex_name) in ended.deleted_objects
    result.deleted_lease_record = contract.lease_key(annex_name) in ended.deleted_objects
    result.deleted_schedule = ended.deleted_schedule
    result.notes.extend(ended.unowned)
    if ended.first_failure is not None:
        error = translate_aws_error(
            ended.first_failure,
            action=f"turn annex {annex_name} off",
            region=clients.region or None,
        )
        error.message += f" (annex {annex_name} is only partly off: {'; '.join(ended.errors)})"
        raise error from ended.first_failure
    return result


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
