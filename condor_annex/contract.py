"""Every name shared by the setup stacks, the CLI, the Lambda functions and the boot agent.

Nothing here talks to AWS and nothing here imports anything beyond the standard library: the
boot agent (Python 3.9 on Amazon Linux 2023) and the Lambda bundles import this module as is.
Change a name here and every part follows; never repeat one of these strings elsewhere.
"""

from __future__ import annotations

import fnmatch
import json
import re
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Optional

# --- The setup stack and its outputs ------------------------------------------------------------

STACK_NAME = "HTCondorAnnexSetup"
"""Default CloudFormation stack name; `cdk.json` context `stackName` may override it."""
STACK_VPC_PARAMETER = "TargetVpcId"
"""The stack parameter naming the security group's VPC. `-setup` passes it on every deploy:
`cdk deploy` keeps a parameter's previous value unless it is given, so a new `-vpc-id` passed
only as the template default would be ignored on a re-run."""


@dataclass(frozen=True)
class StackOutput:
    """One CloudFormation output of the setup stack and the HTCondor macro the CLI writes it to."""

    key: str
    macro: str
    description: str


OUTPUT_CONFIG_BUCKET = StackOutput(
    "ConfigBucketName", "ANNEX_DEFAULT_S3_BUCKET", "Private bucket holding config-*.tar.gz"
)
OUTPUT_INSTANCE_PROFILE_ARN = StackOutput(
    "InstanceProfileArn",
    "ANNEX_DEFAULT_ODI_INSTANCE_PROFILE_ARN",
    "Instance profile every annex instance is launched with",
)
OUTPUT_INSTANCE_ROLE_ARN = StackOutput(
    "InstanceRoleArn", "ANNEX_DEFAULT_INSTANCE_ROLE_ARN", "Role behind the instance profile"
)
OUTPUT_SPOT_FLEET_ROLE_ARN = StackOutput(
    "SpotFleetRoleArn",
    "ANNEX_DEFAULT_SFR_IAM_FLEET_ROLE_ARN",
    "Role Spot Fleet assumes to launch and tag annex instances",
)
OUTPUT_SECURITY_GROUP_IDS = StackOutput(
    "SecurityGroupIds",
    "ANNEX_DEFAULT_ODI_SECURITY_GROUP_IDS",
    "Comma-separated security groups for annex instances",
)
OUTPUT_VPC_ID = StackOutput("VpcId", "ANNEX_DEFAULT_VPC_ID", "VPC the security groups live in")
OUTPUT_LEASE_FUNCTION_ARN = StackOutput(
    "LeaseFunctionArn",
    "ANNEX_DEFAULT_LEASE_FUNCTION_ARN",
    "Lambda that ends one annex when its lease expires",
)
OUTPUT_SWEEP_FUNCTION_ARN = StackOutput(
    "SweepFunctionArn",
    "ANNEX_DEFAULT_SWEEP_FUNCTION_ARN",
    "Periodic Lambda ending every annex whose recorded lease has passed",
)
OUTPUT_CONNECTIVITY_FUNCTION_ARN = StackOutput(
    "ConnectivityFunctionArn",
    "ANNEX_DEFAULT_CONNECTIVITY_FUNCTION_ARN",
    "Lambda that checks the collector is reachable from AWS",
)
OUTPUT_SCHEDULER_ROLE_ARN = StackOutput(
    "LeaseSchedulerRoleArn",
    "ANNEX_DEFAULT_LEASE_SCHEDULER_ROLE_ARN",
    "Role EventBridge Scheduler assumes to invoke the lease function",
)
OUTPUT_OPERATOR_POLICY_ARN = StackOutput(
    "OperatorPolicyArn",
    "ANNEX_DEFAULT_OPERATOR_POLICY_ARN",
    "Managed policy for day-to-day condor_annex use (attach with OperatorLaunchPolicyArn)",
)
OUTPUT_OPERATOR_LAUNCH_POLICY_ARN = StackOutput(
    "OperatorLaunchPolicyArn",
    "ANNEX_DEFAULT_OPERATOR_LAUNCH_POLICY_ARN",
    "Managed policy for launching annexes (attach with OperatorPolicyArn)",
)

STACK_OUTPUTS: tuple[StackOutput, ...] = (
    OUTPUT_CONFIG_BUCKET,
    OUTPUT_INSTANCE_PROFILE_ARN,
    OUTPUT_INSTANCE_ROLE_ARN,
    OUTPUT_SPOT_FLEET_ROLE_ARN,
    OUTPUT_SECURITY_GROUP_IDS,
    OUTPUT_VPC_ID,
    OUTPUT_LEASE_FUNCTION_ARN,
    OUTPUT_SWEEP_FUNCTION_ARN,
    OUTPUT_CONNECTIVITY_FUNCTION_ARN,
    OUTPUT_SCHEDULER_ROLE_ARN,
    OUTPUT_OPERATOR_POLICY_ARN,
    OUTPUT_OPERATOR_LAUNCH_POLICY_ARN,
)
OPERATOR_POLICY_OUTPUTS: tuple[StackOutput, ...] = (
    OUTPUT_OPERATOR_POLICY_ARN,
    OUTPUT_OPERATOR_LAUNCH_POLICY_ARN,
)
"""Every managed policy an operator attaches (split by verb to fit IAM's managed-policy size)."""

MACRO_BY_OUTPUT_KEY: dict[str, str] = {o.key: o.macro for o in STACK_OUTPUTS}
OUTPUT_KEY_BY_MACRO: dict[str, str] = {o.macro: o.key for o in STACK_OUTPUTS}

# Macros the CLI writes that do not come from a stack output.
MACRO_AWS_REGION = "ANNEX_DEFAULT_AWS_REGION"
MACRO_STACK_NAME = "ANNEX_DEFAULT_STACK_NAME"
MACRO_AWS_ACCOUNT_ID = "ANNEX_DEFAULT_AWS_ACCOUNT_ID"
"""The account `-setup` deployed into; destructive verbs refuse credentials of another account."""
# Macros the user sets once (not written by -setup).
MACRO_MAX_PRICE_PER_HOUR = "ANNEX_DEFAULT_MAX_PRICE_PER_HOUR"
MACRO_AWS_FLEET = "ANNEX_DEFAULT_AWS_FLEET"
"""`True`: annexes launch through EC2 Fleet unless `-no-aws-fleet` is given."""
"""USD per hour no annex may exceed: refused before launch, carried into fleet requests."""

# --- Configuration objects in the bucket --------------------------------------------------------

CONFIG_KEY_PREFIX = "config-"
CONFIG_KEY_SUFFIX = ".tar.gz"
CONFIG_KEY_PATTERN = f"{CONFIG_KEY_PREFIX}*{CONFIG_KEY_SUFFIX}"
"""The only objects the instance role may read; `*` is the annex name."""

LEASE_KEY_PREFIX = "leases/"
"""Lease records (JSON, see `LeaseRecord`) live beside the tarballs; the sweep lists this prefix."""

INSTANCE_ROLE_POLICY_NAME = "HTCondorAnnexConfigRead"
"""The inline policy on the instance role that the agent reads first (one GetRolePolicy call)."""

CONFIG_BUCKET_OBJECT_EXPIRY_DAYS = 8
"""Lifecycle expiry for stale tarballs: longer than the longest lease we accept (7 days)."""


def config_key(annex_name: str) -> str:
    """The object key of an annex's configuration tarball."""
    validate_annex_name(annex_name)
    return CONFIG_KEY_PATTERN.replace("*", annex_name, 1)


def lease_key(annex_name: str) -> str:
    """The object key of an annex's lease record."""
    validate_annex_name(annex_name)
    return f"{LEASE_KEY_PREFIX}{annex_name}.json"


COMMERCIAL_PARTITION = "aws"
"""The ARN partition of every region outside China and GovCloud (IAM rejects a policy naming
another partition's ARNs, so the setup stack passes its own `AWS::Partition` instead)."""


def config_object_arn_pattern(bucket: str, *, partition: str = COMMERCIAL_PARTITION) -> str:
    """The S3 resource ARN the instance role is granted `s3:GetObject` on (the setup stack passes
    its own `AWS::Partition`)."""
    return f"arn:{partition}:s3:::{bucket}/{CONFIG_KEY_PATTERN}"


_S3_OBJECT_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:s3:::(?P<bucket>[^/]+)/(?P<key>.+)$")


def bucket_from_policy_resource(resource: str) -> Optional[str]:
    """The bucket named by an S3 resource ARN whose key part is exactly the config pattern.

    The agent scans its role's policies with this: a resource such as
    `arn:<partition>:s3:::my-bucket/config-*.tar.gz` yields `my-bucket`; anything else yields None.
    """
    match = _S3_OBJECT_ARN.fullmatch(resource)
    if match is None or match.group("key") != CONFIG_KEY_PATTERN:
        return None
    return match.group("bucket")


def is_config_key(key: str) -> bool:
    """True when `key` is a tarball key the instance role may read."""
    return fnmatch.fnmatchcase(key, CONFIG_KEY_PATTERN)


def annex_name_from_config_key(key: str) -> str:
    """Inverse of `config_key`."""
    if not is_config_key(key):
        raise ValueError(f"{key!r} is not a configuration tarball key ({CONFIG_KEY_PATTERN})")
    return key[len(CONFIG_KEY_PREFIX) : -len(CONFIG_KEY_SUFFIX)]


# --- What the tarball holds and what the agent writes beside it ---------------------------------

TARBALL_CONFIG_FILE = "50-annex.config"
"""The annex's HTCondor configuration inside the tarball (unpacked into config.d)."""
TARBALL_TOKEN_DIR = "tokens.d"  # noqa: S105 - a directory name, not a secret
"""Token directory inside the tarball; HTCondor skips subdirectories of LOCAL_CONFIG_DIR."""
TARBALL_TOKEN_FILE = f"{TARBALL_TOKEN_DIR}/annex.token"
AGENT_REFRESH_INTERVAL_MINUTES = 5
"""How often an instance re-reads its tarball for a fresh token (image/systemd timer)."""
AGENT_STATE_FILE = "/var/lib/condor-annex/tarball.json"
"""Where the agent remembers which tarball (bucket, key, ETag) it installed, for `refresh`."""
INSTANCE_MACROS_FILE = "00-annex-instance.config"
"""Written by the agent; sorts first so `if defined EC2PublicIP` in later files sees it."""
MACRO_INSTANCE_ID = "EC2InstanceID"
MACRO_PUBLIC_IP = "EC2PublicIP"
ANNEX_NAME_ATTRIBUTE = "AnnexName"
ANNEX_OWNER_ATTRIBUTE = "AnnexOwner"
INSTANCE_ID_ATTRIBUTE = "EC2InstanceID"

# --- Tags ---------------------------------------------------------------------------------------

TAG_ANNEX_NAME = "htcondor:AnnexName"
"""Every annex resource carries it; IAM conditions on it. Never the source of truth for identity."""
TAG_ANNEX_OWNER = "htcondor:AnnexOwner"
TAG_MANAGED_BY = "htcondor:ManagedBy"
MANAGED_BY_VALUE = "condor_annex"
SPOT_FLEET_REQUEST_ID_TAG = "aws:ec2spot:fleet-request-id"
"""Added by Spot Fleet itself to the instances it launches, some time after launch."""
EC2_FLEET_ID_TAG = "aws:ec2:fleet-id"
"""Added by EC2 Fleet itself to the instances it launches ("Tag an EC2 Fleet")."""

# --- Lease schedules ----------------------------------------------------------------------------

SCHEDULE_NAME_PREFIX = "condor-annex-lease-"


def schedule_name(annex_name: str) -> str:
    """EventBridge Scheduler schedule name for an annex's lease (at most 64 characters)."""
    validate_annex_name(annex_name)
    return f"{SCHEDULE_NAME_PREFIX}{annex_name}"


# --- Client tokens and annex names --------------------------------------------------------------

CLIENT_TOKEN_MAX_LENGTH = 64
"""EC2 client tokens: up to 64 ASCII characters, case-sensitive (EC2 idempotency docs)."""
_GUID_LENGTH = 36
ANNEX_NAME_MAX_LENGTH = CLIENT_TOKEN_MAX_LENGTH - 1 - _GUID_LENGTH
_ANNEX_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*[A-Za-z0-9]$|^[A-Za-z]$")
_GUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


class InvalidAnnexName(ValueError):
    """An annex name AWS or HTCondor would refuse somewhere along the way."""


def validate_annex_name(name: str) -> str:
    """Return `name` if it is usable everywhere an annex name travels, else raise.

    AWS limits: the client token `<name>_<GUID>` must fit 64 ASCII characters; the schedule name
    allows only `[0-9A-Za-z_.-]`. Ours: start with a letter (HTCondor string literals and shell
    safety), end with a letter or digit (so `<name>_` is never ambiguous).
    """
    if not isinstance(name, str) or not name:
        raise InvalidAnnexName("the annex name is empty: pass -annex-name NAME")
    if len(name) > ANNEX_NAME_MAX_LENGTH:
        raise InvalidAnnexName(
            f"annex name {name!r} has {len(name)} characters; at most {ANNEX_NAME_MAX_LENGTH} fit "
            f"in an EC2 client token with its GUID"
        )
    # fullmatch: `$` alone would accept a trailing newline ("A\n").
    if not _ANNEX_NAME_RE.fullmatch(name):
        raise InvalidAnnexName(
            f"annex name {name!r} is not allowed: use ASCII letters, digits, '-' and '_', "
            "starting with a letter and ending with a letter or digit"
        )
    return name


def new_client_token(annex_name: str, guid: Optional[uuid.UUID] = None) -> str:
    """`<annex>_<GUID>`: the client token of the one request that creates an annex."""
    validate_annex_name(annex_name)
    return f"{annex_name}_{guid or uuid.uuid4()}"


def annex_name_from_client_token(token: str) -> Optional[str]:
    """Everything left of the LAST underscore, or None when `token` is not an annex token.

    Spot Fleet instances carry the fleet's own generated token (no underscore): None.
    """
    name, sep, guid = token.rpartition("_")
    if not sep or not _GUID_RE.fullmatch(guid):
        return None
    try:
        return validate_annex_name(name)
    except InvalidAnnexName:
        return None


def token_belongs_to(token: Optional[str], annex_name: str) -> bool:
    """True when `token` was made for `annex_name`: `big` does not own `big_data_<GUID>`."""
    return token is not None and annex_name_from_client_token(token) == annex_name


def client_token_filter_value(annex_name: str) -> str:
    """Server-side `client-token` filter value; callers still confirm with `token_belongs_to`."""
    validate_annex_name(annex_name)
    return f"{annex_name}_*"


# --- Leases -------------------------------------------------------------------------------------

LEASE_RECORD_VERSION = 1
LEASE_MAX_SECONDS = 7 * 24 * 3600
LEASE_DEFAULT_SECONDS = 50 * 60
IDLE_DEFAULT_SECONDS = 15 * 60

FLEET_KIND_ON_DEMAND = "on-demand"
FLEET_KIND_SPOT_FLEET = "spot-fleet"
FLEET_KIND_EC2_FLEET = "ec2-fleet"


def utc_iso(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SSZ`: the one form every time the tool writes or shows is in.

    A naive datetime is refused, everywhere: botocore returns aware times, and a naive one in
    our code is a bug (local time passed off as UTC) that must not move a lease by hours.
    """
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone; pass an aware datetime (UTC)")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str) -> datetime:
    """Parse the `YYYY-MM-DDTHH:MM:SSZ` form every lease time is written in."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class LeaseRecord:
    """What the CLI records for an annex and what the lease and sweep functions act on.

    Stored as JSON at `lease_key(annex)` in the config bucket and passed, as the same JSON, as
    the input of the annex's one-time schedule.
    """

    annex_name: str
    bucket: str
    expires_at: str
    client_token: str
    kind: str = FLEET_KIND_ON_DEMAND
    created_at: str = ""
    owner: str = ""
    version: int = LEASE_RECORD_VERSION
    max_price_per_hour: Optional[float] = None
    """The annex's price cap (USD/hour) when one was set; `status` shows it."""

    @classmethod
    def new(
        cls,
        *,
        annex_name: str,
        bucket: str,
        expires_at: datetime,
        client_token: str,
        kind: str = FLEET_KIND_ON_DEMAND,
        owner: str = "",
        now: Optional[datetime] = None,
        max_price_per_hour: Optional[float] = None,
    ) -> LeaseRecord:
        if not token_belongs_to(client_token, annex_name):
            raise ValueError(f"client token {client_token!r} does not belong to {annex_name!r}")
        if kind not in (FLEET_KIND_ON_DEMAND, FLEET_KIND_SPOT_FLEET, FLEET_KIND_EC2_FLEET):
            raise ValueError(f"unknown annex kind {kind!r}")
        return cls(
            annex_name=annex_name,
            bucket=bucket,
            expires_at=utc_iso(expires_at),
            client_token=client_token,
            kind=kind,
            created_at=utc_iso(now or datetime.now(timezone.utc)),
            owner=owner,
            max_price_per_hour=max_price_per_hour,
        )

    @property
    def expiry(self) -> datetime:
        return parse_utc(self.expires_at)

    def expired(self, now: Optional[datetime] = None) -> bool:
        return (now or datetime.now(timezone.utc)) >= self.expiry

    def with_expiry(self, expires_at: datetime) -> LeaseRecord:
        return LeaseRecord(**{**asdict(self), "expires_at": utc_iso(expires_at)})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> LeaseRecord:
        data: dict[str, Any] = json.loads(text)
        if data.get("version") != LEASE_RECORD_VERSION:
            raise ValueError(f"unsupported lease record version {data.get('version')!r}")
        record = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        validate_annex_name(record.annex_name)
        parse_utc(record.expires_at)
        return record


# --- Token scopes -------------------------------------------------------------------------------

ANNEX_TOKEN_AUTHZ: tuple[str, ...] = ("READ", "ADVERTISE_STARTD", "ADVERTISE_MASTER")
"""What an execute node needs from the pool; nothing that writes."""


# --- Setup stack internals shared with the Lambda code (added with the setup stacks) ------------

LAMBDA_ENV_CONFIG_BUCKET = "ANNEX_CONFIG_BUCKET"
"""Environment variable naming the config bucket in the sweep function."""

# --- Spot Fleet launch templates (added by the CLI helper) --------------------------------------

LAUNCH_TEMPLATE_NAME_PREFIX = "condor-annex-"
"""Spot Fleet launch specifications cannot require IMDSv2; each Spot Fleet annex launches from
its own launch template (which can), named by `launch_template_name`."""


def launch_template_name(annex_name: str) -> str:
    """The per-annex launch template of a Spot Fleet annex (3-128 chars of [A-Za-z0-9_-])."""
    validate_annex_name(annex_name)
    return f"{LAUNCH_TEMPLATE_NAME_PREFIX}{annex_name}"


# --- Annex ClassAd attributes and job opt-in (added by the tokens/tarball/setup helper) ---------

ANNEX_LEASE_EXPIRY_ATTRIBUTE = "AnnexLeaseExpiresAt"
"""Startd/master attribute: the lease expiry (Unix seconds) the annex was launched with."""
JOB_TARGET_ANNEX_ATTRIBUTE = "TargetAnnexName"
"""Job attribute (`+TargetAnnexName = "NAME"`) that asks for one annex by name."""
JOB_MAY_USE_AWS_ATTRIBUTE = "MayUseAWS"
"""Job attribute (`+MayUseAWS = True`) that lets a job run on any of its owner's annexes."""


# --- Account-wide prerequisites (created by `-setup`, checked by `-check-setup`) ----------------


@dataclass(frozen=True)
class ServiceLinkedRole:
    """A role AWS names and owns for one service; one per account, shared by every region."""

    service: str
    """The `iam:AWSServiceName` (`aws iam create-service-linked-role --aws-service-name ...`)."""
    role_name: str

    def arn_path(self) -> str:
        """`role/aws-service-role/<service>/<name>`: the resource part of its ARN."""
        return f"role/aws-service-role/{self.service}/{self.role_name}"


SERVICE_LINKED_ROLES = (
    ServiceLinkedRole("spotfleet.amazonaws.com", "AWSServiceRoleForEC2SpotFleet"),
    ServiceLinkedRole("spot.amazonaws.com", "AWSServiceRoleForEC2Spot"),
    ServiceLinkedRole("ec2fleet.amazonaws.com", "AWSServiceRoleForEC2Fleet"),
)
"""Spot Fleet, Spot Instances and EC2 Fleet act through these ("Spot Fleet permissions",
"Service-linked role for EC2 Fleet", Amazon EC2 User Guide); a fresh account has none of them
until the console or `-setup` creates them."""
