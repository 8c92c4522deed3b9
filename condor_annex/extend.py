"""Moving an existing annex's lease: its record and its schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from botocore.exceptions import BotoCoreError, ClientError

from condor_annex import contract, lease, tarball, tokens
from condor_annex.annex_settings import NEEDED_FOR_ON_DEMAND, AnnexClients, Settings, require_setup
from condor_annex.aws import error_code
from condor_annex.create_request import validate_duration
from condor_annex.errors import AnnexError, InvalidInput, translate_aws_error

TokenProvider = Callable[[str, datetime], str]
"""(annex name, expiry) → token; the same hook `create` has (CreateHooks.token_provider)."""
TARBALL_WRITE_ATTEMPTS = 3


@dataclass
class ExtendResult:
    """A moved lease."""

    annex_name: str
    previous_expiry: datetime
    expires_at: datetime
    schedule_recreated: bool = False
    token_refreshed: bool = False
    """The tarball now holds a token valid until `expires_at`; running instances fetch it."""
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TokenSource:
    """Where extend gets the fresh token: the same sources, in the same order, as create."""

    token_file: Optional[Path] = None
    signing_key_file: Optional[Path] = None
    trust_domain: Optional[str] = None
    """Default: the issuer of the token the annex already has."""
    provider: Optional[TokenProvider] = None


def _expiry_of(token: str) -> Optional[int]:
    """The token's `exp` claim (Unix seconds); None for a token without one (never expires)."""
    try:
        exp = tokens.unverified_claims(token).get("exp")
    except (AnnexError, ValueError):
        return 0  # unreadable: treat as expired, so a fresh one replaces it
    return int(exp) if isinstance(exp, (int, float)) else None


def _fresh_token(annex_name: str, current: str, expires_at: datetime, source: TokenSource) -> str:
    if source.provider is not None:
        return source.provider(annex_name, expires_at)
    claims = tokens.unverified_claims(current)
    issuer, subject = claims.get("iss"), claims.get("sub")
    token = tokens.annex_token(
        annex_name=annex_name,
        expires_at=expires_at,
        token_file=source.token_file,
        signing_key_file=source.signing_key_file,
        trust_domain=source.trust_domain or (str(issuer) if issuer else None),
        identity=str(subject) if subject else None,
    )
    return token


def _read_tarball(s3: Any, bucket: str, key: str) -> Optional[tuple[bytes, str]]:
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    body = response["Body"]
    try:
        data: bytes = body.read()
    finally:
        body.close()
    return data, str(response["ETag"])


def refresh_tarball_token(
    s3: Any, bucket: str, annex_name: str, expires_at: datetime, source: TokenSource
) -> Optional[str]:
    """Put a token valid until `expires_at` into the annex's tarball; a note when it cannot.

    Never replaces a token with one that expires earlier (a shorter extend, or a concurrent one
    that already wrote a later end): the write is conditional on the ETag that was read, and is
    re-read and re-checked when another writer got there first. Mints before writing, so a
    token source that fails changes nothing.
    """
    key = contract.config_key(annex_name)
    wanted = int(expires_at.timestamp())
    fresh: Optional[str] = None
    for _ in range(TARBALL_WRITE_ATTEMPTS):
        found = _read_tarball(s3, bucket, key)
        if found is None:
            return f"s3://{bucket}/{key} is gone: instances that boot now cannot join"
        data, etag = found
        current = tarball.token_in(data)
        if current is None:
            return (
                "its configuration tarball was not written by this tool: running instances keep "
                "the token they booted with"
            )
        current_expiry = _expiry_of(current)
        if current_expiry is None or current_expiry >= wanted:
            return None  # the token there already lasts at least that long
        if fresh is None:
            fresh = _fresh_token(annex_name, current, expires_at, source)
        fresh_expiry = _expiry_of(fresh)
        if fresh_expiry is not None and fresh_expiry <= current_expiry:
            # A -token-file token may end before the lease (create accepts that too); it must
            # still never replace a token that lasts longer.
            return (
                "the new token expires no later than the one running instances have: "
                "the tarball keeps its token"
            )
        try:
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=tarball.with_fresh_token(data, fresh, expires_at),
                ContentType="application/gzip",
                ServerSideEncryption=lease.SSE_ALGORITHM,
                IfMatch=etag,
            )
        except ClientError as exc:
            if error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                continue  # someone else rewrote it: re-read and compare again
            raise
        return ""
    raise AnnexError(
        f"s3://{bucket}/{key} kept changing while extend rewrote it",
        next_step="run the extend again",
    )


def extend_lease(
    annex_name: str,
    duration_seconds: int,
    *,
    settings: Settings,
    clients: AnnexClients,
    now: Optional[datetime] = None,
    token_source: TokenSource = TokenSource(),
) -> ExtendResult:
    """Move the annex's lease to `now + duration`: its token, the record and the schedule.

    The token first: running instances re-read the tarball (`condor-annex-ec2 refresh`) and
    stay in the pool past the old end only if it holds a token for the new one.
    """
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
        token_note = refresh_tarball_token(
            clients.s3, settings.config_bucket, annex_name, new_expiry, token_source
        )
        lease.put_lease_record(clients.s3, moved)
        result = ExtendResult(annex_name, record.expiry, new_expiry)
        if token_note == "":
            result.token_refreshed = True
            result.notes.append(
                "running instances pick up the fresh token within "
                f"{contract.AGENT_REFRESH_INTERVAL_MINUTES} minutes (condor-annex-ec2 refresh)"
            )
        elif token_note:
            result.notes.append(token_note)
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
        return result
    except (ClientError, BotoCoreError) as exc:
        raise translate_aws_error(exc, action="extend the annex's lease", region=region) from exc
