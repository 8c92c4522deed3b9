"""Lease enforcement: end an annex whose lease has passed, and the periodic sweep doing it for all.

Two entry points share this module: `handler` (invoked by the annex's one-time EventBridge
Scheduler schedule with the annex's `LeaseRecord` JSON as its event) and `sweep_handler` (invoked
every 15 minutes by an EventBridge rule; lists `leases/` in the config bucket). The work lives in
`end_lease` and `sweep`, which take their boto3 clients and the current time, so tests call them
in-process against the local AWS.

What belongs to an annex and the order it is ended in are the annex model's
(`condor_annex.annex`, bundled beside the contract): client token AND annex tag; anything
matching only one of them is logged, never touched.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from botocore.exceptions import ClientError

from condor_annex import annex, contract
from condor_annex.aws import is_not_found

LOG = logging.getLogger(__name__)
LOG.setLevel(logging.INFO)


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
    unowned: list[str] = field(default_factory=list)
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


def _stored_record(s3: Any, bucket: str, annex_name: str) -> Optional[contract.LeaseRecord]:
    """The lease record the CLI last wrote, or None once it is gone (ended or never written)."""
    try:
        body = s3.get_object(Bucket=bucket, Key=contract.lease_key(annex_name))["Body"].read()
    except ClientError as error:
        if is_not_found(error):
            return None
        raise
    return contract.LeaseRecord.from_json(body)


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

    name = current.annex_name
    ended = annex.end(
        annex.find(ec2, name),
        ec2=ec2,
        s3=s3,
        bucket=current.bucket,
        scheduler=scheduler,
        present_objects=annex.present_objects(s3, current.bucket, name),
    )
    result.cancelled_fleets = ended.cancelled_fleets
    result.terminated_instances = ended.terminated_instances
    result.deleted_launch_template = ended.deleted_launch_template
    result.deleted_objects = ended.deleted_objects
    result.deleted_schedule = contract.schedule_name(name) if ended.deleted_schedule else None
    result.unowned = ended.unowned
    result.errors = ended.errors
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


class ForeignBucketEvent(ValueError):
    """A lease event naming a bucket other than the setup's own."""


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Lambda entry point for one annex: the event is the annex's `LeaseRecord` as JSON.

    The event names the bucket its record lives in; only the setup's own bucket (the function's
    environment) is accepted, so a forged event cannot steer the function at another bucket even
    where IAM would let it read there.
    """
    record = contract.LeaseRecord.from_json(json.dumps(event))
    own_bucket = os.environ[contract.LAMBDA_ENV_CONFIG_BUCKET]
    if record.bucket != own_bucket:
        raise ForeignBucketEvent(
            f"lease event for annex {record.annex_name!r} names bucket {record.bucket!r}, "
            f"not this setup's {own_bucket!r}; nothing was done. Only the annex's own schedule "
            "should invoke this function: check who else may invoke it."
        )
    s3, ec2, scheduler = _clients()
    return end_lease(record, s3=s3, ec2=ec2, scheduler=scheduler).to_dict()


def sweep_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Lambda entry point for the periodic sweep; the bucket comes from the function's env."""
    bucket = os.environ[contract.LAMBDA_ENV_CONFIG_BUCKET]
    s3, ec2, scheduler = _clients()
    results = sweep(bucket, s3=s3, ec2=ec2, scheduler=scheduler)
    return {"ended": [r.to_dict() for r in results]}
