"""Moving an existing annex's lease: its record and its schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Optional

from botocore.exceptions import BotoCoreError, ClientError

from condor_annex import contract, lease
from condor_annex.annex_settings import NEEDED_FOR_ON_DEMAND, AnnexClients, Settings, require_setup
from condor_annex.create_request import validate_duration
from condor_annex.errors import InvalidInput, translate_aws_error


@dataclass
class ExtendResult:
    """A moved lease."""

    annex_name: str
    previous_expiry: datetime
    expires_at: datetime
    schedule_recreated: bool = False
    notes: list[str] = field(default_factory=list)


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
