"""The errors a pool admin sees: one line saying what went wrong and one saying what to do next.

Every verb raises `AnnexError` (or a subclass) and nothing else; the CLI prints `str(error)` to
stderr and exits with `error.exit_code`. botocore exceptions are translated at the boundary by
`translate_aws_error`, so no caller needs to know AWS error codes.

Exit codes (documented for scripts that wrap condor_annex):

| code | class               | meaning                                                    |
|------|---------------------|------------------------------------------------------------|
| 1    | AnnexError          | anything else                                              |
| 2    | InvalidInput        | a flag, file or value is wrong; nothing was changed        |
| 3    | SetupMissing        | no setup in this account/region (`condor_annex -setup`)    |
| 3    | SetupIncomplete     | setup exists but is broken or drifted (`-check-setup`)      |
| 4    | CredentialsError    | no, expired or insufficient AWS credentials                |
| 5    | AwsThrottled        | AWS kept throttling after the adaptive retries             |
| 6    | CapacityError       | EC2 capacity or account quota                              |
| 7    | ConnectivityFailed  | AWS cannot reach the pool's collector                      |
| 130  | VerbInterrupted     | SIGINT, SIGTERM or SIGHUP; create rolled back (or says what is left) |
"""

from __future__ import annotations

from typing import Optional

import botocore.exceptions

from condor_annex import contract
from condor_annex.aws import error_code


class AnnexError(Exception):
    """An error with a message a pool admin can act on."""

    exit_code: int = 1

    def __init__(
        self,
        message: str,
        *,
        next_step: Optional[str] = None,
        exit_code: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.next_step = next_step
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        if self.next_step:
            return f"{self.message} — next: {self.next_step}"
        return self.message


class InvalidInput(AnnexError):
    """A flag, file or value the admin gave is wrong; nothing was changed."""

    exit_code = 2


class SetupMissing(AnnexError):
    """No setup stack (or no macros) for this account and region."""

    exit_code = 3


class SetupIncomplete(AnnexError):
    """The setup exists but is failed, drifted or missing a piece."""

    exit_code = 3


class CredentialsError(AnnexError):
    """No credentials, expired credentials, or credentials without the needed permission."""

    exit_code = 4


class AwsThrottled(AnnexError):
    """AWS still throttled after the client's adaptive retries."""

    exit_code = 5


class CapacityError(AnnexError):
    """EC2 has no capacity for the request or an account quota is exhausted."""

    exit_code = 6


class ConnectivityFailed(AnnexError):
    """Instances in AWS would not be able to reach the pool's collector."""

    exit_code = 7


class VerbInterrupted(AnnexError):
    """SIGINT, SIGTERM or SIGHUP stopped a verb; the message names the verb and what was left."""

    exit_code = 130


# --- botocore → AnnexError ----------------------------------------------------------------------

_EXPIRED_CODES = frozenset(
    {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
)
_BAD_CREDENTIAL_CODES = frozenset(
    {
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "AuthFailure",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "InvalidToken",  # S3: a session token it cannot decode (revoked or garbled)
    }
)
_DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "Forbidden"}
)
_THROTTLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "ProvisionedThroughputExceededException",
        "PriorRequestNotComplete",
    }
)
_CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientFreeAddressesInSubnet",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "MaxSpotFleetRequestCountExceeded",
        "Unsupported",
    }
)
_QUOTA_CODES = frozenset(
    {"InstanceLimitExceeded", "VcpuLimitExceeded", "LimitExceededException", "LimitExceeded"}
)
_INVALID_CODES_PREFIXES = ("Invalid", "Malformed", "MissingParameter", "UnknownParameter")
_NOT_FOUND_SETUP_CODES = frozenset(
    {"NoSuchBucket", "ResourceNotFoundException", "NoSuchEntity", "NoSuchEntityException"}
)


def _region_flag(region: Optional[str]) -> str:
    return f" -aws-region {region}" if region else ""


def translate_aws_error(exc: Exception, *, action: str, region: Optional[str] = None) -> AnnexError:
    """The `AnnexError` that tells a pool admin what `exc` (raised while doing `action`) means.

    `action` reads as a verb phrase ("launch the annex instances"); it starts the message.
    Already-translated errors pass through unchanged.
    """
    if isinstance(exc, AnnexError):
        return exc
    where = f" in {region}" if region else ""
    if isinstance(exc, botocore.exceptions.NoRegionError):
        return InvalidInput(
            f"cannot {action}: no AWS region is configured",
            next_step="pass -aws-region REGION (or set AWS_REGION)",
        )
    if isinstance(
        exc,
        (
            botocore.exceptions.NoCredentialsError,
            botocore.exceptions.PartialCredentialsError,
            botocore.exceptions.CredentialRetrievalError,
        ),
    ):
        return CredentialsError(
            f"cannot {action}: no usable AWS credentials were found",
            next_step="configure credentials (`aws configure`, AWS_PROFILE, or `aws sso login`)",
        )
    if isinstance(exc, botocore.exceptions.TokenRetrievalError):
        return CredentialsError(
            f"cannot {action}: the AWS SSO session has expired",
            next_step="run `aws sso login` and try again",
        )
    if isinstance(
        exc,
        (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError),
    ):
        return AnnexError(
            f"cannot {action}: the AWS endpoint could not be reached{where} ({exc})",
            next_step="check the network, the region and AWS_ENDPOINT_URL, then retry",
        )
    if not isinstance(exc, botocore.exceptions.ClientError):
        return AnnexError(f"cannot {action}: {type(exc).__name__}: {exc}")

    error = exc.response.get("Error", {})
    code = error_code(exc) or "Unknown"
    message = str(error.get("Message", "")).strip() or code
    detail = f"{code}: {message}"

    if code in _EXPIRED_CODES:
        return CredentialsError(
            f"cannot {action}: the AWS credentials have expired ({code})",
            next_step="refresh them (`aws sso login`, or new session credentials) and retry",
        )
    if code in _BAD_CREDENTIAL_CODES:
        return CredentialsError(
            f"cannot {action}: AWS rejected the credentials ({detail})",
            next_step="check the access key / profile in use (`aws sts get-caller-identity`)",
        )
    if code in _DENIED_CODES:
        return CredentialsError(
            f"cannot {action}: the AWS identity in use is not allowed to ({detail})",
            # The operator policies grant only the setup's own bucket, security group, VPC and
            # instance profile, so a macro or option naming another one (a typo, a deleted
            # setup) is refused like missing permissions: AWS does not say which it was.
            next_step=(
                "use credentials that carry the setup's operator policies "
                f"({contract.OUTPUT_OPERATOR_POLICY_ARN.macro} and "
                f"{contract.OUTPUT_OPERATOR_LAUNCH_POLICY_ARN.macro}) or an administrator's; "
                "those policies allow only the setup's own bucket, security group, subnets and "
                "instance profile, so check that the options and ANNEX_DEFAULT_* macros name "
                "them (`condor_annex -check-setup` compares the macros with the setup)"
            ),
        )
    if code in _THROTTLE_CODES:
        return AwsThrottled(
            f"cannot {action}: AWS is throttling requests{where} ({code}) even after retries",
            next_step="wait a minute and retry; nothing was left half-done",
        )
    if code in _QUOTA_CODES:
        return CapacityError(
            f"cannot {action}: an account quota is exhausted{where} ({detail})",
            next_step="ask for a higher EC2 quota (Service Quotas console) or request fewer",
        )
    if code in _CAPACITY_CODES:
        return CapacityError(
            f"cannot {action}: EC2 has no capacity for this request{where} ({detail})",
            next_step="retry later, or choose another instance type, subnet or region",
        )
    if code == "ValidationError" and "does not exist" in message:
        return SetupMissing(
            f"cannot {action}: no setup stack found{where} ({message})",
            next_step=f"run `condor_annex -setup{_region_flag(region)}`",
        )
    if code in _NOT_FOUND_SETUP_CODES:
        return SetupIncomplete(
            f"cannot {action}: a part of the setup is missing{where} ({detail})",
            next_step=f"run `condor_annex -check-setup{_region_flag(region)}`",
        )
    if code.startswith(_INVALID_CODES_PREFIXES) or code == "ValidationError":
        return InvalidInput(
            f"cannot {action}: AWS refused the request ({detail})",
            next_step="correct the value named above and retry",
        )
    return AnnexError(f"cannot {action}: {detail}")
