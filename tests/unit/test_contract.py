"""The shared contract: names, the client-token round trip, annex-name rules and lease records."""

from __future__ import annotations

import string
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from condor_annex import contract

VALID_NAME = st.from_regex(r"\A[A-Za-z]([A-Za-z0-9_-]{0,25}[A-Za-z0-9])?\Z")


@given(name=VALID_NAME, guid=st.uuids(version=4))
def test_client_token_round_trips_to_the_annex_name(name: str, guid: uuid.UUID) -> None:
    token = contract.new_client_token(name, guid)
    assert contract.annex_name_from_client_token(token) == name
    assert len(token) <= contract.CLIENT_TOKEN_MAX_LENGTH
    assert token.isascii()


@given(name=VALID_NAME, other=VALID_NAME)
def test_token_belongs_only_to_its_own_annex(name: str, other: str) -> None:
    token = contract.new_client_token(name)
    assert contract.token_belongs_to(token, other) == (name == other)


def test_prefix_sharing_names_do_not_own_each_other() -> None:
    big_data = contract.new_client_token("big_data")
    assert not contract.token_belongs_to(big_data, "big")
    assert contract.token_belongs_to(big_data, "big_data")
    # ...even though the server-side wildcard for `big` matches it: callers must confirm.
    assert big_data.startswith(contract.client_token_filter_value("big")[:-1])


@pytest.mark.parametrize(
    "token",
    [
        "a3e2c1d0-5f6b-4a7c-8d9e-0f1a2b3c4d5e",  # a Spot Fleet's own generated token
        "fleet-token-without-underscore",
        "name_not-a-guid",
        "_a3e2c1d0-5f6b-4a7c-8d9e-0f1a2b3c4d5e",
        "",
    ],
)
def test_tokens_not_made_by_us_have_no_annex_name(token: str) -> None:
    assert contract.annex_name_from_client_token(token) is None


def test_longest_valid_name_fills_a_client_token_exactly() -> None:
    name = "a" * contract.ANNEX_NAME_MAX_LENGTH
    assert len(contract.new_client_token(name)) == contract.CLIENT_TOKEN_MAX_LENGTH
    with pytest.raises(contract.InvalidAnnexName, match="at most"):
        contract.validate_annex_name(name + "a")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        " ",
        "has space",
        "semi;colon",
        "$(reboot)",
        "naïve",
        "___",
        "9lives",
        "trailing_",
        "dot.ted",
        "slash/name",
        'quote"d',
        "new\nline",
    ],
)
def test_names_aws_or_htcondor_would_refuse_are_rejected(bad: str) -> None:
    with pytest.raises(contract.InvalidAnnexName):
        contract.validate_annex_name(bad)


@given(st.text(alphabet=string.printable + "é✓", max_size=40))
def test_every_accepted_name_is_safe_in_every_aws_name_it_reaches(name: str) -> None:
    try:
        contract.validate_annex_name(name)
    except contract.InvalidAnnexName:
        return
    # Scheduler names: [0-9a-zA-Z-_.]+, at most 64; S3 keys: any UTF-8 but we keep ASCII.
    assert len(contract.schedule_name(name)) <= 64
    assert set(contract.schedule_name(name)) <= set(string.ascii_letters + string.digits + "-_.")
    assert contract.annex_name_from_config_key(contract.config_key(name)) == name


def test_config_key_fills_the_pattern_and_matches_it() -> None:
    key = contract.config_key("big_data")
    assert key == "config-big_data.tar.gz"
    assert contract.is_config_key(key)
    assert not contract.is_config_key("leases/big_data.json")


@pytest.mark.parametrize(
    ("resource", "bucket"),
    [
        ("arn:aws:s3:::annex-config-123/config-*.tar.gz", "annex-config-123"),
        ("arn:aws-us-gov:s3:::gov-bucket/config-*.tar.gz", "gov-bucket"),
        ("arn:aws:s3:::annex-config-123/*", None),
        ("arn:aws:s3:::annex-config-123", None),
        ("arn:aws:s3:::annex-config-123/config-x.tar.gz", None),
        ("*", None),
    ],
)
def test_bucket_is_found_only_from_the_exact_config_pattern(
    resource: str, bucket: str | None
) -> None:
    assert contract.bucket_from_policy_resource(resource) == bucket


def test_policy_resource_round_trips_through_the_agent_parser() -> None:
    arn = contract.config_object_arn_pattern("my-bucket")
    assert contract.bucket_from_policy_resource(arn) == "my-bucket"


def test_every_output_maps_to_one_distinct_annex_default_macro() -> None:
    macros = [o.macro for o in contract.STACK_OUTPUTS]
    keys = [o.key for o in contract.STACK_OUTPUTS]
    assert len(set(macros)) == len(macros) and len(set(keys)) == len(keys)
    assert all(m.startswith("ANNEX_DEFAULT_") for m in macros)
    assert all(k.isalnum() for k in keys), "CloudFormation output ids are alphanumeric"
    assert contract.OUTPUT_KEY_BY_MACRO[contract.MACRO_BY_OUTPUT_KEY["ConfigBucketName"]] == (
        "ConfigBucketName"
    )


def test_lease_record_round_trips_and_knows_when_it_expired() -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
    record = contract.LeaseRecord.new(
        annex_name="big_data",
        bucket="b",
        expires_at=now + timedelta(minutes=50),
        client_token=contract.new_client_token("big_data"),
        kind=contract.FLEET_KIND_SPOT_FLEET,
        now=now,
    )
    again = contract.LeaseRecord.from_json(record.to_json())
    assert again == record
    assert again.expires_at == "2026-11-25T12:50:00Z"
    assert not again.expired(now + timedelta(minutes=49, seconds=59))
    assert again.expired(now + timedelta(minutes=50))
    moved = again.with_expiry(now + timedelta(hours=2))
    assert moved.expires_at == "2026-11-25T14:00:00Z" and moved.client_token == record.client_token


def test_lease_record_refuses_a_token_of_another_annex() -> None:
    with pytest.raises(ValueError, match="does not belong"):
        contract.LeaseRecord.new(
            annex_name="big",
            bucket="b",
            expires_at=datetime.now(timezone.utc),
            client_token=contract.new_client_token("big_data"),
        )


def test_lease_record_with_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        contract.LeaseRecord.from_json('{"version": 99}')
