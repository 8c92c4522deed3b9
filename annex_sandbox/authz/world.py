"""What the IAM engine reads from the local AWS's own state: callers, their policies, tags, ARNs.

The engine runs in the server's process, so it reads moto's backends directly (no HTTP round
trip, no call-log noise). Every lookup answers in AWS's terms: ARNs with the partition, tags as
`aws:ResourceTag/<key>` context, instance profiles and roles by ARN.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any, Optional

PARTITION = "aws"


@dataclass(frozen=True)
class Caller:
    """Who signed a request. `kind`: root, user or assumed-role."""

    kind: str
    arn: str
    account: str
    name: str
    """User name, or the role name of an assumed-role session."""
    role_arn: Optional[str] = None

    @property
    def is_root(self) -> bool:
        return self.kind == "root"


class CallerUnknown(Exception):
    """The access key (or the session token presented with it) is not one AWS issued."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _document(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    text = str(value)
    if text.startswith("%7B") or text.startswith("%7b"):
        text = urllib.parse.unquote(text)
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _managed_document(policy: Any) -> dict[str, Any]:
    for version in policy.versions:
        if version.is_default_version:
            return _document(version.document)
    return _document(policy.versions[-1].document)


class World:
    """Reads callers, policies and resources from moto; caches policy lookups per caller.

    The cache is dropped on every IAM or CloudFormation write (`invalidate`), the only ways
    policies change in the local AWS.
    """

    def __init__(self, account_id: str, root_access_keys: frozenset[str]) -> None:
        self.account_id = account_id
        self.root_access_keys = root_access_keys
        self._lock = threading.Lock()
        self._policies: dict[str, list[dict[str, Any]]] = {}
        self._callers: dict[tuple[str, Optional[str]], Caller] = {}

    def invalidate(self) -> None:
        with self._lock:
            self._policies.clear()
            self._callers.clear()

    # --- callers ----------------------------------------------------------------------------

    def iam(self) -> Any:
        from moto.iam.models import iam_backends

        return iam_backends[self.account_id][PARTITION]

    def caller(self, access_key_id: Optional[str], session_token: Optional[str]) -> Caller:
        if access_key_id is None:
            raise CallerUnknown("MissingAuthenticationToken")
        if access_key_id in self.root_access_keys:
            return Caller("root", f"arn:{PARTITION}:iam::{self.account_id}:root",
                          self.account_id, "root")  # fmt: skip
        key = (access_key_id, session_token)
        with self._lock:
            cached = self._callers.get(key)
        if cached is not None:
            return cached
        caller = self._find_caller(access_key_id, session_token)
        with self._lock:
            self._callers[key] = caller
        return caller

    def _find_caller(self, access_key_id: str, session_token: Optional[str]) -> Caller:
        from moto.sts.models import sts_backends

        for user in self.iam().users.values():
            for access_key in user.access_keys:
                if access_key.access_key_id == access_key_id:
                    if session_token:
                        raise CallerUnknown("InvalidToken")
                    return Caller("user", user.arn, self.account_id, user.name)
        for session in sts_backends[self.account_id][PARTITION].assumed_roles:
            if session.access_key_id == access_key_id:
                if session_token != session.session_token:
                    raise CallerUnknown("InvalidToken")
                role_name = session.role_arn.rsplit("/", 1)[-1]
                arn = (
                    f"arn:{PARTITION}:sts::{self.account_id}:assumed-role/"
                    f"{role_name}/{session.session_name}"
                )
                return Caller("assumed-role", arn, self.account_id, role_name, session.role_arn)
        raise CallerUnknown("InvalidId")

    # --- identity policies ------------------------------------------------------------------

    def identity_policies(self, caller: Caller) -> list[dict[str, Any]]:
        """`[{"name": ..., "policy": document}]`: inline and managed, as deployed."""
        cache_key = f"{caller.kind}:{caller.name}"
        with self._lock:
            cached = self._policies.get(cache_key)
        if cached is not None:
            return cached
        if caller.kind == "user":
            found = self._user_policies(caller.name)
        elif caller.kind == "assumed-role":
            found = self.role_policies(caller.name)
        else:
            found = []
        with self._lock:
            self._policies[cache_key] = found
        return found

    def role_policies(self, role_name: str) -> list[dict[str, Any]]:
        iam = self.iam()
        role = iam.get_role(role_name)
        out = [
            {"name": f"inline:{name}", "policy": _document(document)}
            for name, document in role.policies.items()
        ]
        out += [
            {"name": arn, "policy": _managed_document(policy)}
            for arn, policy in role.managed_policies.items()
        ]
        return out

    def role_exists(self, role_arn: str) -> bool:
        try:
            self.role_by_arn(role_arn)
        except Exception:
            return False
        return True

    def role_by_arn(self, role_arn: str) -> Any:
        return self.iam().get_role(role_arn.rsplit("/", 1)[-1])

    def _user_policies(self, user_name: str) -> list[dict[str, Any]]:
        iam = self.iam()
        user = iam.get_user(user_name)
        out = [
            {"name": f"inline:{name}", "policy": _document(document)}
            for name, document in user.policies.items()
        ]
        out += [
            {"name": arn, "policy": _managed_document(policy)}
            for arn, policy in user.managed_policies.items()
        ]
        for group in iam.get_groups_for_user(user_name):
            out += [
                {"name": f"group:{group.name}:{name}", "policy": _document(document)}
                for name, document in group.policies.items()
            ]
            out += [
                {"name": arn, "policy": _managed_document(policy)}
                for arn, policy in group.managed_policies.items()
            ]
        return out

    # --- resources --------------------------------------------------------------------------

    def ec2(self, region: str) -> Any:
        from moto.ec2.models import ec2_backends

        return ec2_backends[self.account_id][region]

    def ec2_arn(self, region: str, resource: str, *, account: bool = True) -> str:
        return f"arn:{PARTITION}:ec2:{region}:{self.account_id if account else ''}:{resource}"

    def ec2_tags(self, region: str, resource_id: str) -> dict[str, str]:
        tags: dict[str, str] = dict(self.ec2(region).tags.get(resource_id, {}))
        return tags

    def instance_profile_arn(self, name_or_arn: str) -> str:
        if name_or_arn.startswith("arn:"):
            return name_or_arn
        for profile in self.iam().instance_profiles.values():
            if profile.name == name_or_arn:
                return str(profile.arn)
        return f"arn:{PARTITION}:iam::{self.account_id}:instance-profile/{name_or_arn}"

    def instance_profile_roles(self, profile_arn: str) -> list[str]:
        for profile in self.iam().instance_profiles.values():
            if profile.arn == profile_arn:
                return [str(role.arn) for role in profile.roles]
        return []

    def bucket_policy(self, bucket: str) -> Optional[dict[str, Any]]:
        from moto.s3.models import s3_backends

        found = s3_backends[self.account_id][PARTITION].buckets.get(bucket)
        if found is None or not found.policy:
            return None
        raw = found.policy.decode() if isinstance(found.policy, bytes) else found.policy
        return _document(raw)
