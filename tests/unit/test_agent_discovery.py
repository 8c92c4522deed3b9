"""Pure pieces of discovery: policy documents, back-off, names."""

from __future__ import annotations

import json
import random
import urllib.parse
from dataclasses import replace

from condor_annex import contract
from condor_annex.agent.discovery import buckets_in_policy, fleet_tag_backoff, profile_name_from_arn

BUCKET = "annex-config-123"
RESOURCE = contract.config_object_arn_pattern(BUCKET)


def _policy(**statement: object) -> dict[str, object]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", **statement}]}


def test_bucket_found_in_decoded_policy_with_list_resource() -> None:
    policy = _policy(Action=["s3:GetObject"], Resource=["arn:aws:s3:::other/x", RESOURCE])
    assert buckets_in_policy(policy) == [BUCKET]


def test_bucket_found_in_url_encoded_policy_with_string_resource() -> None:
    encoded = urllib.parse.quote(json.dumps(_policy(Action="s3:GetObject", Resource=RESOURCE)))
    assert buckets_in_policy(encoded) == [BUCKET]


def test_single_statement_object_is_accepted() -> None:
    policy = {"Statement": {"Effect": "Allow", "Action": "s3:Get*", "Resource": RESOURCE}}
    assert buckets_in_policy(policy) == [BUCKET]


def test_deny_statement_is_ignored() -> None:
    policy = {"Statement": [{"Effect": "Deny", "Action": "s3:GetObject", "Resource": RESOURCE}]}
    assert buckets_in_policy(policy) == []


def test_statement_without_get_object_is_ignored() -> None:
    assert buckets_in_policy(_policy(Action="s3:PutObject", Resource=RESOURCE)) == []


def test_resource_with_other_key_pattern_is_ignored() -> None:
    policy = _policy(Action="s3:GetObject", Resource=f"arn:aws:s3:::{BUCKET}/*")
    assert buckets_in_policy(policy) == []


def test_backoff_starts_short_grows_and_is_capped() -> None:
    delays = replace(fleet_tag_backoff(), rng=random.Random(7)).schedule()  # noqa: S311 - jitter test
    first = [next(delays) for _ in range(12)]
    assert 0.5 <= first[0] <= 1.0
    assert first[3] > first[0]
    assert all(d <= 60.0 for d in first)
    assert first[-1] >= 30.0


def test_backoff_is_jittered() -> None:
    a = replace(fleet_tag_backoff(), rng=random.Random(1)).schedule()  # noqa: S311
    b = replace(fleet_tag_backoff(), rng=random.Random(2)).schedule()  # noqa: S311
    assert [next(a) for _ in range(5)] != [next(b) for _ in range(5)]


def test_profile_name_from_arn_with_path() -> None:
    arn = "arn:aws:iam::123456789012:instance-profile/annex/HTCondorAnnexProfile"
    assert profile_name_from_arn(arn) == "HTCondorAnnexProfile"


def test_unparseable_policy_document_grants_nothing() -> None:
    assert buckets_in_policy("{'Statement': 'not JSON'}") == []
