"""S3 fidelity fixes: bucket policies are judged with their conditions, by the IAM engine."""

from __future__ import annotations

from typing import Any


def s3_bucket_policies_judged_with_their_conditions() -> None:
    """moto's own bucket-policy check stands aside; the IAM engine judges bucket policies.

    "How Amazon S3 authorizes a request" and "IAM JSON policy elements: Condition" (Amazon S3
    User Guide, IAM User Guide): a bucket policy statement applies only when its Condition
    holds — the CDK's `enforceSSL` statement denies `s3:*` only when `aws:SecureTransport` is
    false. moto evaluates bucket policies on object requests ignoring every Condition (and
    only Principal "*" statements), so that statement refused every object request, TLS or
    not. The IAM engine (annex_sandbox/authz) evaluates the bucket policy as the resource
    policy of each S3 request, conditions included; moto's check answers "no opinion".
    """
    from moto.iam.access_control import PermissionResult
    from moto.s3.models import FakeBucket

    def get_permission(self: FakeBucket, action: str, resource: str) -> Any:
        return PermissionResult.NEUTRAL

    FakeBucket.get_permission = get_permission  # type: ignore[method-assign]
