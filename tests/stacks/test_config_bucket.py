"""The config bucket: private, owner-enforced, encrypted, TLS-only, stale tarballs expire."""

from __future__ import annotations

from aws_cdk.assertions import Match

from condor_annex import contract
from tests.stacks.policies import logical_ids, only, rendered, statements_of


def config_bucket_id(template) -> str:
    return only(template, "AWS::S3::Bucket", "ConfigBucket")


def test_config_bucket_blocks_all_public_access_and_enforces_ownership(synthesized_setup):
    synthesized_setup.assertions.has_resource_properties(
        "AWS::S3::Bucket",
        Match.object_like(
            {
                "PublicAccessBlockConfiguration": {
                    "BlockPublicAcls": True,
                    "BlockPublicPolicy": True,
                    "IgnorePublicAcls": True,
                    "RestrictPublicBuckets": True,
                },
                "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
                "BucketEncryption": {
                    "ServerSideEncryptionConfiguration": [
                        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                    ]
                },
                "LoggingConfiguration": Match.object_like(
                    {
                        "DestinationBucketName": {
                            "Ref": Match.string_like_regexp("^ConfigAccessLogs")
                        }
                    }
                ),
            }
        ),
    )


def test_every_bucket_is_private_and_encrypted(synthesized_setup):
    template = synthesized_setup.template
    buckets = logical_ids(template, "AWS::S3::Bucket")
    assert len(buckets) == 2  # the config bucket and its access-log bucket
    for bucket in buckets:
        props = template["Resources"][bucket]["Properties"]
        assert all(props["PublicAccessBlockConfiguration"].values())
        assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
        assert "BucketEncryption" in props


def test_stale_tarballs_expire_by_lifecycle(synthesized_setup):
    rules = synthesized_setup.template["Resources"][config_bucket_id(synthesized_setup.template)][
        "Properties"
    ]["LifecycleConfiguration"]["Rules"]
    expiring = [r for r in rules if r.get("Prefix") == contract.CONFIG_KEY_PREFIX]
    assert expiring == [
        {
            "ExpirationInDays": contract.CONFIG_BUCKET_OBJECT_EXPIRY_DAYS,
            "Id": "ExpireStaleConfig",
            "Prefix": contract.CONFIG_KEY_PREFIX,
            "Status": "Enabled",
        }
    ]


def test_config_bucket_policy_denies_everything_without_tls(synthesized_setup):
    template = synthesized_setup.template
    bucket = config_bucket_id(template)
    policy = next(
        p
        for p in logical_ids(template, "AWS::S3::BucketPolicy")
        if template["Resources"][p]["Properties"]["Bucket"] == {"Ref": bucket}
    )
    (statement,) = statements_of(template, policy)
    assert statement.body["Effect"] == "Deny"
    assert statement.body["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert statement.body["Principal"] == {"AWS": "*"}
    assert statement.actions == ["s3:*"]
    assert {rendered(r) for r in statement.resources} == {
        "${" + bucket + ".Arn}",
        "${" + bucket + ".Arn}/*",
    }


def test_config_bucket_is_deleted_with_the_stack_and_has_no_custom_resources(synthesized_setup):
    template = synthesized_setup.template
    assert template["Resources"][config_bucket_id(template)]["DeletionPolicy"] == "Delete"
    kinds = {r["Type"] for r in template["Resources"].values()}
    assert not [
        k for k in kinds if k.startswith("Custom::") or k == "AWS::CloudFormation::CustomResource"
    ]
