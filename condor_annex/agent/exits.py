"""The agent's exit codes: one per failure class, documented in docs/AGENT.md."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    CHECK_FAILED = 1
    """`check-image`: at least one MUST requirement is not met."""
    USAGE = 2
    IMDS_UNAVAILABLE = 10
    NOT_AN_ANNEX_INSTANCE = 11
    FLEET_TAG_TIMEOUT = 12
    NO_BUCKET = 13
    ACCESS_DENIED = 14
    TARBALL_MISSING = 15
    TARBALL_REFUSED = 16
    FIREWALL_FAILED = 17
    AWS_ERROR = 18
    """Any other AWS error that persisted through botocore's retries."""
    WRITE_FAILED = 19
    """Writing into the config directory failed (disk full, read-only root, ...)."""
    INTERNAL_ERROR = 20
    """A bug: an exception the agent does not classify (still logged, still powers off)."""
