"""A small IMDSv2 client (standard library only).

IMDSv2: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` returns a session
token that every GET must carry in `X-aws-ec2-metadata-token`. Annex instances are launched with
`HttpTokens=required`, so there is deliberately no IMDSv1 fallback. The endpoint honours the SDK's
own `AWS_EC2_METADATA_SERVICE_ENDPOINT` so boto3's credential provider and this client always talk
to the same service.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

DEFAULT_ENDPOINT = "http://169.254.169.254"
ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
TOKEN_TTL_SECONDS = 21600
TOKEN_REFRESH_MARGIN_SECONDS = 300
"""Refresh the token this long before it expires, so no GET races its expiry."""
_TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a URL path, not a secret
_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
_TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
# Never send metadata requests through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ImdsUnavailable(Exception):
    """The metadata service did not answer usefully before the deadline."""


class ImdsNotFound(Exception):
    """The metadata service answered 404 for a path."""


def endpoint_from_env() -> str:
    return os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT


@dataclass
class ImdsClient:
    """IMDSv2 session: one token, refreshed before expiry, every request retried until a deadline.

    `deadline_seconds` bounds each call (the metadata service may take a moment at early boot).
    """

    endpoint: str = field(default_factory=endpoint_from_env)
    ttl_seconds: int = TOKEN_TTL_SECONDS
    request_timeout: float = 2.0
    deadline_seconds: float = 60.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _token: Optional[str] = field(default=None, repr=False)
    _token_expires: float = field(default=0.0, repr=False)

    def _url(self, path: str) -> str:
        return self.endpoint.rstrip("/") + path

    def _open(self, request: urllib.request.Request) -> tuple[int, bytes]:
        try:
            with _OPENER.open(request, timeout=self.request_timeout) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read()

    def _retrying(self, attempt: Callable[[], Optional[bytes]], what: str) -> bytes:
        """Call `attempt` until it returns bytes; connection errors and 5xx retry with back-off."""
        give_up = self.clock() + self.deadline_seconds
        delay = 0.1
        last = "no attempt"
        while True:
            try:
                result = attempt()
                if result is not None:
                    return result
                last = "server error"
            except (urllib.error.URLError, OSError) as error:
                last = str(getattr(error, "reason", error))
            if self.clock() + delay > give_up:
                raise ImdsUnavailable(f"{what}: {last}")
            self.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, 5.0)

    def token(self) -> str:
        """The session token, fetched or refreshed when it is within the refresh margin of expiry."""
        if self._token is not None and self.clock() < self._token_expires:
            return self._token

        def put() -> Optional[bytes]:
            request = urllib.request.Request(  # noqa: S310
                self._url(_TOKEN_PATH),
                method="PUT",
                headers={_TTL_HEADER: str(self.ttl_seconds)},
            )
            status, body = self._open(request)
            if status == 200 and body:
                return body
            if status >= 500:
                return None
            # 403 (IMDS disabled), 400 (bad TTL), 405 ...: no point in retrying.
            raise ImdsUnavailable(f"token request refused with HTTP {status}")

        issued = self.clock()
        self._token = self._retrying(put, "token").decode().strip()
        self._token_expires = issued + max(self.ttl_seconds - TOKEN_REFRESH_MARGIN_SECONDS, 1)
        return self._token

    def get_bytes(self, path: str) -> bytes:
        """GET `/latest/<path>` with the session token; raises ImdsNotFound on 404."""
        refreshed = False

        def get() -> Optional[bytes]:
            nonlocal refreshed
            request = urllib.request.Request(  # noqa: S310
                self._url("/latest/" + path.lstrip("/")), headers={_TOKEN_HEADER: self.token()}
            )
            status, body = self._open(request)
            if status == 200:
                return body
            if status == 404:
                raise ImdsNotFound(path)
            if status == 401 and not refreshed:
                # The token expired or the service restarted: fetch a new one once.
                refreshed = True
                self._token = None
                return None
            if status >= 500:
                return None
            raise ImdsUnavailable(f"GET {path}: HTTP {status}")

        return self._retrying(get, f"GET {path}")

    def get(self, path: str) -> str:
        return self.get_bytes(path).decode()

    def get_optional(self, path: str) -> Optional[str]:
        """The value at `path`, or None when the service answers 404."""
        try:
            return self.get(path)
        except ImdsNotFound:
            return None

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path))

    # --- The facts the agent needs ---------------------------------------------------------

    def identity_document(self) -> dict[str, Any]:
        document: dict[str, Any] = self.get_json("dynamic/instance-identity/document")
        return document

    def public_ipv4(self) -> Optional[str]:
        value = self.get_optional("meta-data/public-ipv4")
        return value.strip() if value and value.strip() else None

    def role_name(self) -> Optional[str]:
        """The instance role's name: the first line of `iam/security-credentials/`."""
        listing = self.get_optional("meta-data/iam/security-credentials/")
        if not listing:
            return None
        names = [line.strip().rstrip("/") for line in listing.splitlines() if line.strip()]
        return names[0] if names else None

    def instance_profile_arn(self) -> Optional[str]:
        info = self.get_optional("meta-data/iam/info")
        if not info:
            return None
        arn = json.loads(info).get("InstanceProfileArn")
        return str(arn) if arn else None

    def instance_tags_enabled(self) -> bool:
        """True when instance tags are exposed in metadata (`tags/instance/` answers)."""
        return self.get_optional("meta-data/tags/instance/") is not None

    def instance_tag(self, key: str) -> Optional[str]:
        value = self.get_optional("meta-data/tags/instance/" + key)
        return value.strip() if value is not None else None
