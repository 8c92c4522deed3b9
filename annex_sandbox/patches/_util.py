"""Helpers shared by the fidelity patches (not patches themselves)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from typing import Any

from moto.ec2.exceptions import EC2ClientError


class IdempotentParameterMismatch(EC2ClientError):
    """EC2's answer when a client token is reused with different parameters.

    "Ensure idempotency in Amazon EC2 API requests":
    https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html
    """

    code = "IdempotentParameterMismatch"
    message = (
        "Arguments on this idempotent request are inconsistent with arguments used in "
        "previous request(s)."
    )


def fingerprint(params: Any) -> str:
    """A stable digest of request parameters (dicts compared regardless of key order)."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def aws_filter_match(value: str | None, patterns: list[str]) -> bool:
    """EC2 filter value matching: exact, or `*` / `?` wildcards as in the Describe* filters.

    "List and filter your resources" (Amazon EC2 User Guide): filter values may use `*` (zero or
    more characters) and `?` (exactly one character).
    """
    if value is None:
        return False
    return any(
        value == p or (("*" in p or "?" in p) and fnmatch.fnmatchcase(value, p)) for p in patterns
    )
