"""Which account and region a verb acts in: resolved once, used by every client and the CDK CLI.

`resolve_target` makes the session (profile, region, credentials), asks STS who that is with a
client that does not retry connection failures (so no network is reported within seconds with
the endpoint, not after botocore's ten attempts), and returns the `AwsTarget` every boto3 client
and the CDK CLI's environment are then made from. `check_recorded` compares it with the account
and region `-setup` recorded, before anything is changed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import boto3
import botocore.exceptions
from botocore.config import Config

from condor_annex import __version__
from condor_annex.aws import CONNECT_TIMEOUT_SECONDS, make_client
from condor_annex.backoff import Backoff
from condor_annex.errors import (
    AnnexError,
    CredentialsError,
    InvalidInput,
    SetupMissing,
    translate_aws_error,
)

IDENTITY_DEADLINE_SECONDS = 8.0
"""`resolve_target` gives up after this long (throttling and 5xx are retried within it)."""
_REGION_RE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}")
_RETRYABLE_IDENTITY_CODES = frozenset(
    {"Throttling", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable",
     "InternalFailure", "InternalError"}
)  # fmt: skip
_NO_ANSWER = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
)


class WrongAccount(CredentialsError):
    """The credentials in use reach another account than the one the setup was made in."""


def validate_region(region: str) -> str:
    """`region` if it is shaped like an AWS region name (`us-east-1`, `us-gov-west-1`)."""
    if not _REGION_RE.fullmatch(region):
        raise InvalidInput(
            f"-aws-region {region!r} is not an AWS region name",
            next_step="write it like us-east-1 (see `aws ec2 describe-regions`)",
        )
    return region


def session_for(region: Optional[str], profile: Optional[str]) -> boto3.Session:
    """A session for `profile` (or the default chain) in `region`; bad names are InvalidInput."""
    if region:
        validate_region(region)
    try:
        return boto3.Session(region_name=region or None, profile_name=profile or None)
    except botocore.exceptions.ProfileNotFound:
        raise InvalidInput(
            f"-aws-profile {profile}: no such profile in the AWS config files",
            next_step="list them with `aws configure list-profiles`",
        ) from None


@dataclass(frozen=True)
class AwsTarget:
    """The account and region one verb acts in, and the session every client is made from."""

    session: boto3.Session
    account_id: str
    region: str
    profile: Optional[str] = None
    arn: str = ""

    def client(self, service: str, **config_overrides: Any) -> Any:
        return make_client(self.session, service, **config_overrides)

    def describe(self) -> str:
        """`account 111122223333 in us-east-1 (profile prod)` for messages and confirmations."""
        via = f" (profile {self.profile})" if self.profile else ""
        return f"account {self.account_id} in {self.region}{via}"

    def cdk_environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """The environment for the CDK CLI so that it acts as this target and nothing else.

        With a profile, the profile is named and credentials from the environment are removed
        (they would otherwise win); without one, the CLI gets this session's own credentials.
        """
        env = dict(base)
        for name in (
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
        ):  # fmt: skip
            env.pop(name, None)
        if self.profile:
            env["AWS_PROFILE"] = self.profile
        else:
            credentials = self.session.get_credentials()
            if credentials is None:
                raise CredentialsError(
                    "no usable AWS credentials were found",
                    next_step="configure credentials (`aws configure`, AWS_PROFILE, or "
                    "`aws sso login`)",
                )
            frozen = credentials.get_frozen_credentials()
            env["AWS_ACCESS_KEY_ID"] = frozen.access_key
            env["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
            if frozen.token:
                env["AWS_SESSION_TOKEN"] = frozen.token
        env["AWS_REGION"] = self.region
        env["AWS_DEFAULT_REGION"] = self.region
        return env


def caller_identity(
    session: boto3.Session, *, action: str, endpoint_url: Optional[str] = None
) -> dict[str, str]:
    """STS's answer for `session`: fails fast (one attempt per try) when nothing answers."""
    region = session.region_name
    sts = session.client(
        "sts",
        endpoint_url=endpoint_url or None,
        config=Config(
            retries={"mode": "standard", "max_attempts": 1},
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=IDENTITY_DEADLINE_SECONDS,
            user_agent_extra=f"condor-annex/{__version__}",
        ),
    )

    def retryable(exc: BaseException) -> bool:
        if isinstance(exc, botocore.exceptions.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            return code in _RETRYABLE_IDENTITY_CODES or status >= 500
        return False  # connection failures are not retried: no network stays no network

    try:
        answer = Backoff(deadline_seconds=IDENTITY_DEADLINE_SECONDS, cap=2.0).retry(
            sts.get_caller_identity, retryable
        )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        error = translate_aws_error(exc, action=action, region=region)
        if isinstance(exc, _NO_ANSWER):
            error = AnnexError(
                f"cannot {action}: no answer from the AWS endpoint {sts.meta.endpoint_url} "
                f"({type(exc).__name__})",
                next_step="check the network (and AWS_ENDPOINT_URL / proxy settings), then retry",
            )
        raise error from exc
    return {k: str(v) for k, v in answer.items() if k in ("Account", "Arn", "UserId")}


def resolve_target(*, region: Optional[str], profile: Optional[str], action: str) -> AwsTarget:
    """The session for `profile`/`region` and the account it reaches (one STS call)."""
    session = session_for(region, profile)
    resolved_region = session.region_name
    if not resolved_region:
        raise InvalidInput(
            f"cannot {action}: no AWS region is configured",
            next_step="pass -aws-region REGION (or set AWS_REGION)",
        )
    validate_region(resolved_region)
    identity = caller_identity(session, action=action)
    return AwsTarget(
        session=session,
        account_id=identity["Account"],
        region=resolved_region,
        profile=profile or None,
        arn=identity.get("Arn", ""),
    )


def check_region(requested: Optional[str], recorded: str, *, config_file: str) -> None:
    """Refuse a region other than the one the setup in `config_file` was made for."""
    if requested and recorded and requested != recorded:
        raise SetupMissing(
            f"no setup is recorded for {requested}: the setup in {config_file} is in {recorded}",
            next_step=f"pass -aws-region {recorded}, or run `condor_annex -setup -aws-region "
            f"{requested} -config-file FILE` and use that -config-file",
        )


def check_recorded(
    target: AwsTarget,
    *,
    account_id: str,
    region: str,
    config_file: str,
    action: str,
) -> None:
    """Refuse to `action` when `target` is not the account/region the setup was recorded for.

    Configs written before the account was recorded carry none; then only the region counts.
    """
    check_region(target.region, region, config_file=config_file)
    if account_id and target.account_id != account_id:
        via = f" (profile {target.profile})" if target.profile else ""
        raise WrongAccount(
            f"refusing to {action}: the credentials in use{via} reach account "
            f"{target.account_id}, but the setup in {config_file} was made in account {account_id}",
            next_step=f"use credentials of account {account_id} (-aws-profile PROFILE), or "
            "another -config-file",
        )
