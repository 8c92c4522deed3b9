"""Who am I? The annex name (from client tokens) and the config bucket (from the role's policies).

Follows the rules of docs/RULES.md, "Annex identity" while spending the fewest AWS calls: an on-demand instance
needs one DescribeInstances and one GetRolePolicy.
"""

from __future__ import annotations

import fnmatch
import json
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.parsers import ResponseParserError

from condor_annex import contract
from condor_annex.agent.exits import Exit
from condor_annex.agent.imds import ImdsClient, ImdsUnavailable
from condor_annex.agent.log import StepFailed, StepRecord
from condor_annex.aws import error_code
from condor_annex.backoff import Backoff

FLEET_TAG_TIMEOUT_SECONDS = 50 * 60
"""The reference waits this long for Spot Fleet to tag its instance, then powers it off."""

_ACCESS_DENIED = {
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedAccess",
    "InvalidClientTokenId",
    "ExpiredToken",
}
_S3_GET_OBJECT = "s3:getobject"
AWS_ERRORS = (ClientError, BotoCoreError, ResponseParserError)
"""What an AWS call can raise once botocore's retries are spent (a garbled 5xx body included)."""


def aws_failure(error: Exception, what: str) -> StepFailed:
    """Map an AWS error that survived botocore's retries onto the agent's exit codes."""
    if isinstance(error, NoCredentialsError):
        return StepFailed(Exit.IMDS_UNAVAILABLE, f"{what}: no instance credentials")
    if isinstance(error, ClientError):
        code = error_code(error)
        if code in _ACCESS_DENIED:
            return StepFailed(Exit.ACCESS_DENIED, f"{what}: {code}")
        return StepFailed(Exit.AWS_ERROR, f"{what}: {code}")
    return StepFailed(Exit.AWS_ERROR, f"{what}: {type(error).__name__}")


# --- Back-off -------------------------------------------------------------------------------------


def fleet_tag_backoff() -> Backoff:
    """About 1 s at first, doubling to a minute; the waiter keeps its own deadline."""
    return Backoff(
        deadline_seconds=FLEET_TAG_TIMEOUT_SECONDS, base=1.0, cap=60.0, equal_jitter=True
    )


# --- Annex name -----------------------------------------------------------------------------------


@dataclass
class Clock:
    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def _tag(tags: Optional[Iterable[dict[str, Any]]], key: str) -> Optional[str]:
    for tag in tags or ():
        if tag.get("Key") == key:
            value = tag.get("Value")
            return str(value) if value else None
    return None


def describe_self(ec2: Any, instance_id: str) -> dict[str, Any]:
    """This instance's DescribeInstances record."""
    try:
        response = ec2.describe_instances(InstanceIds=[instance_id])
    except AWS_ERRORS as error:
        raise aws_failure(error, "DescribeInstances") from error
    for reservation in response.get("Reservations", []):
        for instance in reservation.get("Instances", []):
            if instance.get("InstanceId") == instance_id:
                found: dict[str, Any] = instance
                return found
    raise StepFailed(Exit.NOT_AN_ANNEX_INSTANCE, f"DescribeInstances does not know {instance_id}")


FLEET_TAGS: tuple[tuple[str, str], ...] = (
    (contract.SPOT_FLEET_REQUEST_ID_TAG, contract.FLEET_KIND_SPOT_FLEET),
    (contract.EC2_FLEET_ID_TAG, contract.FLEET_KIND_EC2_FLEET),
)
"""The tag each fleet service adds to the instances it launches, and the annex kind it means."""


def _fleet_tag(tags: Optional[Iterable[dict[str, Any]]]) -> Optional[tuple[str, str]]:
    """(kind, fleet id) from whichever fleet tag the instance carries."""
    for key, kind in FLEET_TAGS:
        value = _tag(tags, key)
        if value:
            return kind, value
    return None


@dataclass
class FleetTagWaiter:
    """Wait for the fleet tag on this instance: Spot Fleet's `aws:ec2spot:fleet-request-id` or
    EC2 Fleet's `aws:ec2:fleet-id`.

    The fleet adds its tag some time after launch. Instance metadata tags (when the launch
    enabled them) cost no AWS call; otherwise DescribeInstances is polled (one call sees both
    tags). Bounded by `timeout`.
    """

    ec2: Any
    imds: ImdsClient
    instance_id: str
    timeout: float = FLEET_TAG_TIMEOUT_SECONDS
    backoff: Backoff = field(default_factory=lambda: fleet_tag_backoff())
    clock: Clock = field(default_factory=Clock)
    polls: int = 0
    source: str = ""

    def _poll(self, use_imds: bool) -> Optional[tuple[str, str]]:
        self.polls += 1
        if use_imds:
            for key, kind in FLEET_TAGS:
                value = self.imds.instance_tag(key)
                if value:
                    return kind, value
            return None
        instance = describe_self(self.ec2, self.instance_id)
        return _fleet_tag(instance.get("Tags"))

    def wait(self, initial_tags: Optional[list[dict[str, Any]]]) -> tuple[str, str]:
        """(annex kind, fleet id) once a fleet tag is there."""
        fleet = _fleet_tag(initial_tags)
        if fleet:
            self.source = "describe-instances"
            return fleet
        give_up = self.clock.now() + self.timeout
        try:
            use_imds = self.imds.instance_tags_enabled()
        except ImdsUnavailable:
            use_imds = False
        self.source = "imds-tags" if use_imds else "describe-instances"
        for delay in self.backoff.schedule():
            remaining = give_up - self.clock.now()
            if remaining <= 0:
                break
            self.clock.sleep(min(delay, remaining))
            fleet = self._poll(use_imds)
            if fleet:
                return fleet
        raise StepFailed(
            Exit.FLEET_TAG_TIMEOUT,
            f"no {' or '.join(k for k, _ in FLEET_TAGS)} tag within {self.timeout:g}s",
            polls=self.polls,
        )


def fleet_client_token(
    ec2: Any, fleet_id: str, kind: str = contract.FLEET_KIND_SPOT_FLEET
) -> Optional[str]:
    """The client token the fleet was requested with (one Describe call)."""
    if kind == contract.FLEET_KIND_EC2_FLEET:
        try:
            answer = ec2.describe_fleets(FleetIds=[fleet_id])
        except AWS_ERRORS as error:
            raise aws_failure(error, "DescribeFleets") from error
        for fleet in answer.get("Fleets", []):
            if fleet.get("ClientToken"):
                return str(fleet["ClientToken"])
        return None
    try:
        response = ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])
    except AWS_ERRORS as error:
        raise aws_failure(error, "DescribeSpotFleetRequests") from error
    for config in response.get("SpotFleetRequestConfigs", []):
        token = config.get("SpotFleetRequestConfig", {}).get("ClientToken")
        if token:
            return str(token)
    return None


@dataclass(frozen=True)
class AnnexIdentity:
    name: str
    kind: str
    fleet_request_id: Optional[str] = None


def annex_name(
    ec2: Any,
    imds: ImdsClient,
    instance_id: str,
    record: StepRecord,
    *,
    fleet_tag_timeout: float = FLEET_TAG_TIMEOUT_SECONDS,
    backoff: Optional[Backoff] = None,
    clock: Optional[Clock] = None,
) -> AnnexIdentity:
    """The annex this instance belongs to: left of the last `_` of its (fleet's) client token."""
    instance = describe_self(ec2, instance_id)
    token = instance.get("ClientToken") or ""
    name = contract.annex_name_from_client_token(token)
    if name is not None:
        return AnnexIdentity(name, contract.FLEET_KIND_ON_DEMAND)
    if not token:
        raise StepFailed(Exit.NOT_AN_ANNEX_INSTANCE, "instance has no client token")
    waiter = FleetTagWaiter(
        ec2,
        imds,
        instance_id,
        timeout=fleet_tag_timeout,
        backoff=backoff or fleet_tag_backoff(),
        clock=clock or Clock(),
    )
    try:
        kind, fleet_id = waiter.wait(instance.get("Tags"))
    finally:
        record.note(tag_source=waiter.source, tag_polls=waiter.polls)
    record.note(kind=kind, fleet=fleet_id)
    fleet_token = fleet_client_token(ec2, fleet_id, kind)
    name = contract.annex_name_from_client_token(fleet_token or "")
    if name is None:
        raise StepFailed(Exit.NOT_AN_ANNEX_INSTANCE, f"{kind} {fleet_id} has no annex client token")
    return AnnexIdentity(name, kind, fleet_id)


# --- Bucket ---------------------------------------------------------------------------------------


def policy_document(document: Any) -> dict[str, Any]:
    """IAM returns policy documents URL-encoded JSON; boto3 usually decodes them into dicts.

    Anything that is not a JSON object reads as an empty policy (it grants nothing).
    """
    if isinstance(document, dict):
        return document
    text = str(document)
    for candidate in (text, urllib.parse.unquote(text)):
        try:
            parsed = json.loads(candidate)
        except ValueError:
            continue
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def buckets_in_policy(document: Any) -> list[str]:
    """Buckets granted `s3:GetObject` on exactly `config-*.tar.gz` by an Allow statement."""
    found: list[str] = []
    for statement in _as_list(policy_document(document).get("Statement")):
        if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
            continue
        actions = [str(a).lower() for a in _as_list(statement.get("Action"))]
        if not any(fnmatch.fnmatchcase(_S3_GET_OBJECT, action) for action in actions):
            continue
        for resource in _as_list(statement.get("Resource")):
            bucket = contract.bucket_from_policy_resource(str(resource))
            if bucket is not None and bucket not in found:
                found.append(bucket)
    return found


@dataclass(frozen=True)
class BucketFound:
    bucket: str
    source: str
    """`inline:<policy>` or `managed:<arn>`."""
    scanned: bool


def _call(what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        return fn(**kwargs)
    except AWS_ERRORS as error:
        raise aws_failure(error, what) from error


def _paginate(iam: Any, operation: str, key: str, **kwargs: Any) -> list[Any]:
    items: list[Any] = []
    try:
        for page in iam.get_paginator(operation).paginate(**kwargs):
            items.extend(page.get(key, []))
    except AWS_ERRORS as error:
        raise aws_failure(error, operation) from error
    return items


def _scan_role(iam: Any, role: str) -> Optional[BucketFound]:
    for policy_name in _paginate(iam, "list_role_policies", "PolicyNames", RoleName=role):
        response = _call(
            "GetRolePolicy", iam.get_role_policy, RoleName=role, PolicyName=policy_name
        )
        for bucket in buckets_in_policy(response.get("PolicyDocument")):
            return BucketFound(bucket, f"inline:{policy_name}", True)
    attached = _paginate(iam, "list_attached_role_policies", "AttachedPolicies", RoleName=role)
    for policy in attached:
        arn = policy["PolicyArn"]
        meta = _call("GetPolicy", iam.get_policy, PolicyArn=arn)["Policy"]
        version = _call(
            "GetPolicyVersion",
            iam.get_policy_version,
            PolicyArn=arn,
            VersionId=meta["DefaultVersionId"],
        )["PolicyVersion"]
        for bucket in buckets_in_policy(version.get("Document")):
            return BucketFound(bucket, f"managed:{arn}", True)
    return None


def profile_name_from_arn(arn: str) -> str:
    """`arn:<partition>:iam::123:instance-profile/path/name` → `name` (profiles may have paths)."""
    return arn.rsplit("/", 1)[-1]


def find_bucket(iam: Any, imds: ImdsClient, record: StepRecord) -> BucketFound:
    """The config bucket named in the instance role's policies.

    One GetRolePolicy on the well-known inline policy first; the full scan of every inline and
    attached policy of the instance profile's roles only when that finds nothing.
    """
    role = imds.role_name()
    if role is None:
        raise StepFailed(Exit.NO_BUCKET, "instance has no IAM role (iam/security-credentials/)")
    record.note(role=role)
    try:
        response = iam.get_role_policy(RoleName=role, PolicyName=contract.INSTANCE_ROLE_POLICY_NAME)
    except ClientError as error:
        if error_code(error) != "NoSuchEntity":
            raise aws_failure(error, "GetRolePolicy") from error
    except AWS_ERRORS as error:
        raise aws_failure(error, "GetRolePolicy") from error
    else:
        for bucket in buckets_in_policy(response.get("PolicyDocument")):
            return BucketFound(bucket, f"inline:{contract.INSTANCE_ROLE_POLICY_NAME}", False)

    # Fallback: the reference's full scan (instance profile → roles → inline + attached).
    roles = [role]
    profile_arn = imds.instance_profile_arn()
    if profile_arn:
        profile = _call(
            "GetInstanceProfile",
            iam.get_instance_profile,
            InstanceProfileName=profile_name_from_arn(profile_arn),
        )["InstanceProfile"]
        roles = [r["RoleName"] for r in profile.get("Roles", [])] or roles
    for candidate in roles:
        found = _scan_role(iam, candidate)
        if found is not None:
            return found
    raise StepFailed(
        Exit.NO_BUCKET,
        f"no policy of role {role} grants s3:GetObject on {contract.CONFIG_KEY_PATTERN}",
    )
