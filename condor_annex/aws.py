"""The one place boto3 sessions and clients are made.

Retry mode `adaptive` throttles client-side when AWS answers with throttling errors (IAM and the
EC2 Describe* APIs throttle hard at scale); the user agent names the tool in CloudTrail.
Endpoints come from the standard SDK settings (`AWS_ENDPOINT_URL`, profiles), never from here.
Which account and region a CLI verb acts in is decided once, in `condor_annex.target`.
This module is bundled into the lease Lambda: it imports nothing of condor_annex but the version.
"""

from __future__ import annotations

from typing import Any, Optional

import boto3
from botocore.config import Config

from condor_annex import __version__

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


def make_session(region: Optional[str] = None, profile: Optional[str] = None) -> boto3.Session:
    """A session from the standard credential chain (env, profile, SSO, instance metadata)."""
    return boto3.Session(region_name=region, profile_name=profile)


def make_client(session: boto3.Session, service: str, **config_overrides: Any) -> Any:
    """A client for `service` with the shared retry and user-agent settings."""
    return session.client(service, config=client_config(**config_overrides))
