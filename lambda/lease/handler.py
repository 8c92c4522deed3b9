"""Lease enforcement: end an annex whose lease has passed, and the periodic sweep doing it for all.

Two entry points share this module: `handler` (invoked by the annex's one-time EventBridge
Scheduler schedule with the annex's `LeaseRecord` JSON as its event) and `sweep_handler` (invoked
every 15 minutes by an EventBridge rule; lists `leases/` in the config bucket). The work lives in
`end_lease` and `sweep`, which take their boto3 clients and the current time, so tests call them
in-process against the local AWS.

An annex is identified by client token AND launch tags (`contract.ownership`): an instance
belongs to annex X when its client token, or its Spot Fleet's client token, is `X_<GUID>` and it
carries the annex tags condor_annex set at launch; a one-sided match is left alone. A Spot Fleet annex also
owns the launch template named `contract.launch_template_name(X)`, deleted with the rest.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from botocore.exceptions import ClientError

from condor_annex import contract
from condor_annex.launch_templates import delete_launch_template

LOG = logging.getLogger(__name__)
LOG.setLevel(logging.INFO)

# Instances in these states still run (or will): terminate them. `shutting-down`/`terminated`
# are already on their way out.
_LIVE_INSTANCE_STATES = ("pending", "running", "stopping", "stopped")
# Spot Fleet request states that may still own instances (EC2 API reference,
# SpotFleetRequestConfig.SpotFleetRequestState); `cancelled_running` keeps its instances.
_LIVE_FLEET_STATES = ("submitted", "active", "modifying", "cancelled_running")
_TERMINATE_BATCH = 500


@dataclass
class LeaseResult:
    """What one lease enforcement did; every list is empty when there was nothing left to do."""

    annex_name: str
    expired: bool
    expires_at: str
    deleted_objects: list[str] = field(default_factory=list)
    terminated_instances: list[str] = field(default_factory=list)
    cancelled_fleets: list[str] = field(default_factory=list)
    deleted_launch_template: Optional[str] = None
    deleted_schedule: Optional[str] = None
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(
            self.deleted_objects
            or self.terminated_instances
            or self.cancelled_fleets
            or self.deleted_launch_template
            or self.deleted_schedule
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _stored_record(s3: Any, bucket: str, annex_name: str) -> Optional[contract.LeaseRecord]:
    """The lease record the CLI last wrote, or None once it is gone (ended or never written)."""
    try:
        body = s3.get_object(Bucket=bucket, Key=contract.lease_key(annex_name))["Body"].read()
    except ClientError as error:
        if _error_code(error) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    return contract.LeaseRecord.from_json(body)


def _delete_if_present(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if _error_code(error) in ("NoSuchKey", "404", "NotFound"):
            return False
        raise
    s3.delete_object(Bucket=bucket, Key=key)
    return True


def annex_instance_ids(ec2: Any, annex_name: str) -> list[str]:
    """Live instances launched by the annex's own RunInstances request (its client token)."""
    ids: list[str] = []
    paginator = ec2.get_paginator("describe_instances")
    filters = [
        {"Name": "client-token", "Values": [contract.client_token_filter_value(annex_name)]},
        {"Name": "instance-state-name", "Values": list(_LIVE_INSTANCE_STATES)},
    ]
    for page in paginator.paginate(Filters=filters):
        for reservation in page.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                # The filter is a wildcard (`big_*` also matches `big_data_<GUID>`), and a token
                # alone is no proof: the launch tags must agree (contract.ownership).
                owner = contract.ownership(
                    instance.get("ClientToken"), instance.get("Tags"), annex_name
                )
                if owner == contract.OWNED:
                    ids.append(instance["InstanceId"])
    return ids


def annex_fleet_ids(ec2: Any, annex_name: str) -> list[str]:
    """Spot Fleet requests made with the annex's client token that may still own instances."""
    ids: list[str] = []
    paginator = ec2.get_paginator("describe_spot_fleet_requests")
    for page in paginator.paginate():
        for config in page.get("SpotFleetRequestConfigs", []):
            token = config.get("SpotFleetRequestConfig", {}).get("ClientToken")
            tags = config.get("Tags") or config.get("SpotFleetRequestConfig", {}).get(
                "TagSpecifications", [{}]
            )[0].get("Tags", [])
            if (
                contract.ownership(token, tags, annex_name) == contract.OWNED
                and config.get("SpotFleetRequestState") in _LIVE_FLEET_STATES
            ):
                ids.append(config["SpotFleetRequestId"])
    return ids


def fleet_instance_ids(ec2: Any, fleet_ids: list[str]) -> list[str]:
    """Live instances Spot Fleet tagged as launched by one of `fleet_ids`."""
    if not fleet_ids:
        return []
    ids: list[str] = []
    paginator = ec2.get_paginator("describe_instances")
    filters = [
        {"Name": f"tag:{contract.SPOT_FLEET_REQUEST_ID_TAG}", "Values": list(fleet_ids)},
        {"Name": "instance-state-name", "Values": list(_LIVE_INSTANCE_STATES)},
    ]
    for page in paginator.paginate(Filters=filters):
        for reservation in page.get("Reservations", []):
            ids.extend(i["InstanceId"] for i in reservation.get("Instances", []))
    return ids


def _terminate(ec2: Any, instance_ids: list[str], result: LeaseResult) -> None:
    for start in range(0, len(instance_ids), _TERMINATE_BATCH):
        batch = instance_ids[start : start + _TERMINATE_BATCH]
        try:
            ec2.terminate_instances(InstanceIds=batch)
        except ClientError as error:
            result.errors.append(f"TerminateInstances {batch}: {error}")
        else:
            result.terminated_instances.extend(batch)


def _cancel_fleets(ec2: Any, fleet_ids: list[str], result: LeaseResult) -> None:
    if not fleet_ids:
        return
    try:
        # TerminateInstances=True: cancelling alone would leave the fleet's instances running.
        answer = ec2.cancel_spot_fleet_requests(
            SpotFleetRequestIds=fleet_ids, TerminateInstances=True
        )
    except ClientError as error:
        result.errors.append(f"CancelSpotFleetRequests {fleet_ids}: {error}")
        return
    for ok in answer.get("SuccessfulFleetRequests", []):
        result.cancelled_fleets.append(ok["SpotFleetRequestId"])
    for failed in answer.get("UnsuccessfulFleetRequests", []):
        result.errors.append(
            f"CancelSpotFleetRequests {failed.get('SpotFleetRequestId')}: {failed.get('Error')}"
        )


def _delete_launch_template(ec2: Any, annex_name: str, result: LeaseResult) -> None:
    """Delete the annex's launch template if it exists (a missing one is not an error)."""
    name = contract.launch_template_name(annex_name)
    try:
        if delete_launch_template(ec2, name):
            result.deleted_launch_template = name
    except ClientError as error:
        result.errors.append(f"launch template {name}: {error}")


def _delete_schedule(scheduler: Any, annex_name: str) -> Optional[str]:
    name = contract.schedule_name(annex_name)
    try:
        scheduler.delete_schedule(Name=name)
    except ClientError as error:
        if _error_code(error) == "ResourceNotFoundException":
            return None
        raise
    return name


def end_lease(
    record: contract.LeaseRecord,
    *,
    s3: Any,
    ec2: Any,
    scheduler: Any,
    now: Optional[datetime] = None,
) -> LeaseResult:
    """End `record`'s annex if its lease has passed; otherwise change nothing.

    The record stored in the bucket wins over the one passed in: extending a lease rewrites it,
    and a schedule that fires with the old expiry must not end the annex early. Idempotent: once
    everything is gone, a second call changes nothing and reports empty lists.
    """
    now = now or datetime.now(timezone.utc)
    stored = _stored_record(s3, record.bucket, record.annex_name)
    current = stored or record
    result = LeaseResult(
        annex_name=current.annex_name, expired=current.expired(now), expires_at=current.expires_at
    )
    if not result.expired:
        LOG.info("annex=%s lease=not-expired expires_at=%s", current.annex_name, current.expires_at)
        return result

    annex = current.annex_name
    fleet_ids = annex_fleet_ids(ec2, annex)
    _cancel_fleets(ec2, fleet_ids, result)
    # Cancelling terminates asynchronously; terminate the fleet's tagged instances now as well.
    instance_ids = annex_instance_ids(ec2, annex)
    instance_ids += [i for i in fleet_instance_ids(ec2, fleet_ids) if i not in instance_ids]
    _terminate(ec2, instance_ids, result)
    # After the fleet is cancelled: a deleted template would only stop it from replacing capacity.
    _delete_launch_template(ec2, annex, result)

    if _delete_if_present(s3, current.bucket, contract.config_key(annex)):
        result.deleted_objects.append(contract.config_key(annex))
    # Keep the lease record while something failed, so the sweep tries again.
    if not result.errors and _delete_if_present(s3, current.bucket, contract.lease_key(annex)):
        result.deleted_objects.append(contract.lease_key(annex))
    result.deleted_schedule = _delete_schedule(scheduler, annex)
    LOG.info("lease-ended %s", json.dumps(result.to_dict(), sort_keys=True))
    return result


def expired_records(s3: Any, bucket: str, now: datetime) -> list[contract.LeaseRecord]:
    """Every lease record under `leases/` whose expiry has passed (unreadable ones are logged)."""
    records: list[contract.LeaseRecord] = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=contract.LEASE_KEY_PREFIX):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            try:
                record = contract.LeaseRecord.from_json(body)
            except (ValueError, TypeError, KeyError) as error:
                LOG.warning("lease-record-unreadable key=%s error=%s", item["Key"], error)
                continue
            if record.expired(now):
                records.append(record)
    return records


def sweep(
    bucket: str, *, s3: Any, ec2: Any, scheduler: Any, now: Optional[datetime] = None
) -> list[LeaseResult]:
    """End every annex whose recorded lease has passed: the safety net behind the schedules."""
    now = now or datetime.now(timezone.utc)
    return [
        end_lease(record, s3=s3, ec2=ec2, scheduler=scheduler, now=now)
        for record in expired_records(s3, bucket, now)
    ]


def _clients() -> tuple[Any, Any, Any]:
    from condor_annex.aws import make_client, make_session

    session = make_session()
    return (
        make_client(session, "s3"),
        make_client(session, "ec2"),
        make_client(session, "scheduler"),
    )


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Lambda entry point for one annex: the event is the annex's `LeaseRecord` as JSON."""
    record = contract.LeaseRecord.from_json(json.dumps(event))
    s3, ec2, scheduler = _clients()
    return end_lease(record, s3=s3, ec2=ec2, scheduler=scheduler).to_dict()


def sweep_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Lambda entry point for the periodic sweep; the bucket comes from the function's env."""
    bucket = os.environ[contract.LAMBDA_ENV_CONFIG_BUCKET]
    s3, ec2, scheduler = _clients()
    results = sweep(bucket, s3=s3, ec2=ec2, scheduler=scheduler)
    return {"ended": [r.to_dict() for r in results]}
