"""The one place boto3 sessions and clients are made.

Retry mode `adaptive` throttles client-side when AWS answers with throttling errors (IAM and the
EC2 Describe* APIs throttle hard at scale); the user agent names the tool in CloudTrail.
Endpoints come from the standard SDK settings (`AWS_ENDPOINT_URL`, profiles), never from here.
Which account and region a CLI verb acts in is decided once, in `condor_annex.target`.
This module is bundled into the lease Lambda: it imports nothing of condor_annex but the version.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from condor_annex import __version__

if TYPE_CHECKING:
    import boto3
    import botocore.session

DEFAULT_MAX_ATTEMPTS = 10
CONNECT_TIMEOUT_SECONDS = 4.0
"""A TCP connect to an AWS endpoint takes milliseconds; four seconds without one means no route
(botocore's default of 60 s per attempt is what made a CLI without network sit silent)."""


def client_config(max_attempts: int = DEFAULT_MAX_ATTEMPTS, **overrides: Any) -> Config:
    """The botocore Config every condor_annex client uses."""
    overrides.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    return Config(
        retries={"mode": "adaptive", "max_attempts": max_attempts},
        user_agent_extra=f"condor-annex/{__version__}",
        **overrides,
    )


def make_session(
    region: Optional[str] = None,
    profile: Optional[str] = None,
    model_dirs: Sequence[Path] = (),
) -> boto3.Session:
    """A session from the standard credential chain (env, profile, SSO, instance metadata).

    `model_dirs`: directories of API models searched before botocore's own (the agent's
    trimmed models, `condor_annex.agent.service_models`).
    """
    # Imported here: the error helpers below are used where no client is ever made (the
    # agent's `check-image`), and importing boto3 costs a cold start most of its time.
    import boto3

    core = make_client_session(model_dirs=model_dirs)
    return boto3.Session(botocore_session=core, region_name=region, profile_name=profile)


def make_client_session(
    region: Optional[str] = None, model_dirs: Sequence[Path] = ()
) -> botocore.session.Session:
    """A botocore session, for code that only makes clients: the boot agent.

    The same credential chain and settings as `make_session`, without importing boto3's
    resources and transfer manager (about a sixth of the agent's cold start).
    """
    import botocore.session

    core = botocore.session.get_session()
    if region:
        core.set_config_variable("region", region)
    if model_dirs:
        # Set before anything creates the session's data loader from this variable.
        searched = [str(d) for d in model_dirs]
        if configured := core.get_config_variable("data_path"):
            searched.append(str(configured))
        core.set_config_variable("data_path", os.pathsep.join(searched))
    return core


def make_client(
    session: boto3.Session | botocore.session.Session, service: str, **config_overrides: Any
) -> Any:
    """A client for `service` with the shared retry and user-agent settings."""
    config = client_config(**config_overrides)
    create_client = getattr(session, "create_client", None)  # a botocore session
    if create_client is not None:
        return create_client(service, config=config)
    return session.client(service, config=config)


# --- AWS error codes: the one place they are read and classified ---------------------------------

NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound", "ResourceNotFoundException"})
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestThrottled",
    }
)
TRANSIENT_CODES = frozenset({"InternalError", "ServiceUnavailable", "Unavailable"})
ACCESS_DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403"}
)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError, else ''."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in NOT_FOUND_CODES


def is_retryable(exc: BaseException) -> bool:
    """Throttling and transient errors, or a connection that failed: worth the same call again."""
    if isinstance(exc, ClientError):
        return error_code(exc) in THROTTLING_CODES | TRANSIENT_CODES
    return isinstance(exc, BotoCoreError) and "Connect" in type(exc).__name__
