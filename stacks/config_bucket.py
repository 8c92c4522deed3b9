"""The private bucket holding each annex's `config-<annex>.tar.gz` and lease record."""

from __future__ import annotations

from typing import Optional

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from condor_annex import contract
from stacks.nag import acknowledge

ACCESS_LOG_EXPIRY_DAYS = 90


def annex_object_arns(bucket: s3.IBucket) -> list[str]:
    """Every annex's objects in the bucket: `config-*.tar.gz` and `leases/*` (`*` = annex name)."""
    return [
        bucket.arn_for_objects(contract.CONFIG_KEY_PATTERN),
        bucket.arn_for_objects(f"{contract.LEASE_KEY_PREFIX}*"),
    ]


class ConfigBucket(Construct):
    """Private, TLS-only, SSE-S3, owner-enforced; stale tarballs expire by lifecycle.

    No auto-delete custom resource: `-destroy-setup` empties the bucket first (and custom
    resources need Lambda execution the local AWS cannot provide).
    """

    bucket: s3.Bucket
    access_log_bucket: Optional[s3.Bucket]

    def __init__(
        self, scope: Construct, id: str, *, versioned: bool = False, access_logs: bool = True
    ) -> None:
        super().__init__(scope, id)
        self.access_log_bucket = None
        if access_logs:
            self.access_log_bucket = s3.Bucket(
                self,
                "AccessLogs",
                block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
                object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
                encryption=s3.BucketEncryption.S3_MANAGED,
                enforce_ssl=True,
                lifecycle_rules=[
                    s3.LifecycleRule(expiration=Duration.days(ACCESS_LOG_EXPIRY_DAYS))
                ],
                # Logs are evidence: they outlive the setup stack.
                removal_policy=RemovalPolicy.RETAIN,
            )
            acknowledge(
                self.access_log_bucket,
                "AwsSolutions-S1",
                "This is the server access log bucket of the config bucket; logging it into "
                "itself would loop.",
            )
        lifecycle = [
            s3.LifecycleRule(
                id="ExpireStaleConfig",
                prefix=contract.CONFIG_KEY_PREFIX,
                expiration=Duration.days(contract.CONFIG_BUCKET_OBJECT_EXPIRY_DAYS),
                noncurrent_version_expiration=(Duration.days(1) if versioned else None),
            ),
            s3.LifecycleRule(
                id="AbortIncompleteUploads",
                abort_incomplete_multipart_upload_after=Duration.days(1),
            ),
        ]
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            versioned=versioned,
            lifecycle_rules=lifecycle,
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix="config-bucket/" if access_logs else None,
            removal_policy=RemovalPolicy.DESTROY,
        )
        if not access_logs:
            acknowledge(
                self.bucket,
                "AwsSolutions-S1",
                "Access logging was turned off in context (accessLogs=false) by the admin; "
                "object reads by annex instances remain visible as CloudTrail data events.",
            )

    @property
    def bucket_name(self) -> str:
        return self.bucket.bucket_name
