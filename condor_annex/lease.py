"""An annex's lease: the record in the config bucket and the one-time schedule at its expiry.

The record (`contract.LeaseRecord`, JSON at `contract.lease_key(name)`) is what the periodic sweep
finds; the schedule (EventBridge Scheduler, `at(...)` expression, `ActionAfterCompletion=DELETE`)
invokes the lease function with the same JSON at the expiry. Both are written by `create`, moved
by lease extension and removed by `off`. Every function takes its clients; none prints.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from botocore.exceptions import ClientError

from condor_annex import contract
from condor_annex.aws import is_not_found
from condor_annex.errors import AnnexError


class CorruptLeaseRecord(AnnexError):
    """A lease record exists but is not a lease record this tool can read."""


SSE_ALGORITHM = "AES256"
"""Server-side encryption requested on every object the CLI writes (the bucket enforces it too)."""


def schedule_expression(expires_at: datetime) -> str:
    """EventBridge Scheduler one-time expression `at(yyyy-mm-ddThh:mm:ss)` (interpreted in UTC)."""
    return f"at({contract.utc_iso(expires_at).removesuffix('Z')})"


def _schedule_args(
    record: contract.LeaseRecord, *, lease_function_arn: str, scheduler_role_arn: str
) -> dict[str, Any]:
    return {
        "Name": contract.schedule_name(record.annex_name),
        "ScheduleExpression": schedule_expression(record.expiry),
        "ScheduleExpressionTimezone": "UTC",
        "FlexibleTimeWindow": {"Mode": "OFF"},
        # The schedule removes itself after it fired once; `off` deletes it earlier.
        "ActionAfterCompletion": "DELETE",
        "Target": {
            "Arn": lease_function_arn,
            "RoleArn": scheduler_role_arn,
            "Input": record.to_json(),
        },
        "Description": f"condor_annex lease of annex {record.annex_name}",
    }


def put_lease_record(s3: Any, record: contract.LeaseRecord, *, only_if_new: bool = False) -> None:
    """Write the record; with `only_if_new`, fail (412 PreconditionFailed) if one exists."""
    conditions: dict[str, str] = {"IfNoneMatch": "*"} if only_if_new else {}
    s3.put_object(
        Bucket=record.bucket,
        Key=contract.lease_key(record.annex_name),
        Body=record.to_json().encode(),
        ContentType="application/json",
        ServerSideEncryption=SSE_ALGORITHM,
        **conditions,
    )


def read_lease_record(s3: Any, bucket: str, annex_name: str) -> Optional[contract.LeaseRecord]:
    """The annex's lease record, or None when it has none."""
    try:
        body = s3.get_object(Bucket=bucket, Key=contract.lease_key(annex_name))["Body"].read()
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise
    try:
        record = contract.LeaseRecord.from_json(body)
    except (ValueError, TypeError, KeyError, contract.InvalidAnnexName) as exc:
        raise CorruptLeaseRecord(
            f"the lease record of annex {annex_name} (s3://{bucket}/"
            f"{contract.lease_key(annex_name)}) cannot be read: {type(exc).__name__}",
            next_step=f"end the annex with `condor_annex off -annex-name {annex_name}` (it "
            "removes the record)",
        ) from None
    if record.annex_name != annex_name:
        raise CorruptLeaseRecord(
            f"the lease record of annex {annex_name} names another annex ({record.annex_name})",
            next_step=f"end the annex with `condor_annex off -annex-name {annex_name}`",
        )
    return record


def list_lease_records(s3: Any, bucket: str) -> list[contract.LeaseRecord]:
    """Every lease record in the bucket (paginated); unreadable records are skipped."""
    records: list[contract.LeaseRecord] = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=contract.LEASE_KEY_PREFIX):
        for obj in page.get("Contents", []):
            try:
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                records.append(contract.LeaseRecord.from_json(body))
            except (ClientError, ValueError, TypeError, KeyError):
                continue
    return records


def delete_lease_record(s3: Any, bucket: str, annex_name: str) -> None:
    """Idempotent: deleting an absent record is not an error (S3 DeleteObject semantics)."""
    s3.delete_object(Bucket=bucket, Key=contract.lease_key(annex_name))


def create_schedule(
    scheduler: Any,
    record: contract.LeaseRecord,
    *,
    lease_function_arn: str,
    scheduler_role_arn: str,
) -> str:
    """Create the one-time schedule; returns its ARN."""
    response = scheduler.create_schedule(
        **_schedule_args(
            record, lease_function_arn=lease_function_arn, scheduler_role_arn=scheduler_role_arn
        )
    )
    return str(response.get("ScheduleArn", ""))


def update_schedule(
    scheduler: Any,
    record: contract.LeaseRecord,
    *,
    lease_function_arn: str,
    scheduler_role_arn: str,
) -> str:
    """Move the schedule to the record's expiry (UpdateSchedule replaces every field)."""
    response = scheduler.update_schedule(
        **_schedule_args(
            record, lease_function_arn=lease_function_arn, scheduler_role_arn=scheduler_role_arn
        )
    )
    return str(response.get("ScheduleArn", ""))


def get_schedule(scheduler: Any, annex_name: str) -> Optional[dict[str, Any]]:
    try:
        response: dict[str, Any] = scheduler.get_schedule(Name=contract.schedule_name(annex_name))
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise
    return response
