"""Extending a lease: `-annex-name N -duration D` on an existing annex moves its schedule."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest

from condor_annex import contract, lease
from condor_annex.cli.main import CliContext, main
from condor_annex.create import create_annex
from condor_annex.errors import InvalidInput
from condor_annex.extend import extend_lease
from tests.integration import annex_env as _annex_env

shared_annex_env = _annex_env.shared_annex_env  # the fixture, shared by this module

START = datetime(2030, 5, 6, 7, 0, 0, tzinfo=timezone.utc)


def _create(env, name):
    return create_annex(
        env.request(name, count=1, duration_seconds=3600),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(now=lambda: START),
    )


def test_extending_moves_the_schedule_to_the_new_expiry(shared_annex_env):
    env = shared_annex_env
    _create(env, "longer")
    later = START + timedelta(minutes=30)
    result = extend_lease(
        "longer",
        3 * 3600,
        settings=env.settings,
        clients=env.clients,
        now=later,
        token_source=_source(env),
    )
    assert result.previous_expiry == START + timedelta(hours=1)
    assert result.expires_at == later + timedelta(hours=3)
    schedule = env.clients.scheduler.get_schedule(Name=contract.schedule_name("longer"))
    assert schedule["ScheduleExpression"] == "at(2030-05-06T10:30:00)"
    assert schedule["Target"]["Arn"] == env.settings.lease_function_arn
    assert contract.LeaseRecord.from_json(schedule["Target"]["Input"]).expires_at == (
        "2030-05-06T10:30:00Z"
    )


def test_extending_rewrites_the_lease_record_the_sweep_reads(shared_annex_env):
    env = shared_annex_env
    made = _create(env, "record")
    extend_lease(
        "record",
        7200,
        settings=env.settings,
        clients=env.clients,
        now=START,
        token_source=_source(env),
    )
    record = lease.read_lease_record(env.clients.s3, env.settings.config_bucket, "record")
    assert record is not None
    assert record.expiry == START + timedelta(hours=2)
    assert record.client_token == made.client_token


def test_extending_recreates_a_schedule_that_is_gone(shared_annex_env):
    env = shared_annex_env
    _create(env, "lost_schedule")
    env.clients.scheduler.delete_schedule(Name=contract.schedule_name("lost_schedule"))
    result = extend_lease(
        "lost_schedule",
        3600,
        settings=env.settings,
        clients=env.clients,
        token_source=_source(env),
    )
    assert result.schedule_recreated
    assert contract.schedule_name("lost_schedule") in env.schedules()


def test_extending_an_annex_without_a_lease_is_refused(shared_annex_env):
    env = shared_annex_env
    with pytest.raises(InvalidInput, match="no lease"):
        extend_lease("nobody", 3600, settings=env.settings, clients=env.clients)
    assert contract.schedule_name("nobody") not in env.schedules()


def test_extending_beyond_the_maximum_lease_is_refused(shared_annex_env):
    env = shared_annex_env
    _create(env, "greedy")
    with pytest.raises(InvalidInput, match="-duration"):
        extend_lease(
            "greedy", contract.LEASE_MAX_SECONDS + 1, settings=env.settings, clients=env.clients
        )


def test_extending_from_the_command_line_uses_the_duration_flag(shared_annex_env):
    env = shared_annex_env
    _create(env, "cli_extend")
    out, err = io.StringIO(), io.StringIO()
    ctx = CliContext(stdout=out, stderr=err, clients=lambda region, profile: env.clients)
    before = datetime.now(timezone.utc)
    code = main(["-annex-name", "cli_extend", "-duration", "2h", *env.cli_args()], ctx)
    assert code == 0, err.getvalue()
    record = lease.read_lease_record(env.clients.s3, env.settings.config_bucket, "cli_extend")
    assert record is not None
    assert before + timedelta(hours=2) - timedelta(seconds=1) <= record.expiry
    assert record.expiry <= datetime.now(timezone.utc) + timedelta(hours=2)
    assert "moved" in out.getvalue()


# --- The fresh token running instances fetch (condor-annex-ec2 refresh) ---------------------


def _members(env, name):
    from tests.integration.annex_env import tarball_members

    body = env.clients.s3.get_object(
        Bucket=env.settings.config_bucket, Key=contract.config_key(name)
    )["Body"].read()
    return tarball_members(body)


def _token_expiry(members) -> int:
    from condor_annex import tokens

    token = members[contract.TARBALL_TOKEN_FILE].decode().strip()
    return int(tokens.unverified_claims(token)["exp"])


def _source(env):
    from condor_annex.extend import TokenSource

    return TokenSource(signing_key_file=env.signing_key_file)


def test_extending_puts_a_token_for_the_new_end_into_the_tarball_and_keeps_the_rest(
    shared_annex_env,
):
    env = shared_annex_env
    _create(env, "fresh")
    before = _members(env, "fresh")
    result = extend_lease(
        "fresh",
        3 * 3600,
        settings=env.settings,
        clients=env.clients,
        now=START + timedelta(minutes=30),
        token_source=_source(env),
    )
    after = _members(env, "fresh")
    assert result.token_refreshed
    assert _token_expiry(before) == int((START + timedelta(hours=1)).timestamp())
    assert _token_expiry(after) == int(result.expires_at.timestamp())
    lease_line = f"{contract.ANNEX_LEASE_EXPIRY_ATTRIBUTE} = {int(result.expires_at.timestamp())}"
    assert lease_line in after[contract.TARBALL_CONFIG_FILE].decode()
    # Only the token and the advertised lease end changed.
    strip = lambda text: [  # noqa: E731
        line
        for line in text.decode().splitlines()
        if not line.startswith(contract.ANNEX_LEASE_EXPIRY_ATTRIBUTE)
    ]
    assert strip(after[contract.TARBALL_CONFIG_FILE]) == strip(before[contract.TARBALL_CONFIG_FILE])
    assert set(after) == set(before)


def test_extending_never_leaves_a_tarball_with_an_older_token(shared_annex_env):
    env = shared_annex_env
    _create(env, "shorter")
    extend_lease(
        "shorter",
        5 * 3600,
        settings=env.settings,
        clients=env.clients,
        now=START,
        token_source=_source(env),
    )
    long_token = _members(env, "shorter")[contract.TARBALL_TOKEN_FILE]
    # A later, shorter extend moves the lease earlier but must not shorten the token.
    result = extend_lease(
        "shorter",
        3600,
        settings=env.settings,
        clients=env.clients,
        now=START + timedelta(minutes=10),
        token_source=_source(env),
    )
    assert not result.token_refreshed
    assert _members(env, "shorter")[contract.TARBALL_TOKEN_FILE] == long_token


def test_a_concurrent_rewrite_is_detected_and_compared_again(shared_annex_env):
    """The write is conditional on the ETag read: another extend that wrote a later token in
    between wins, and ours (an earlier end) is not written over it."""
    from condor_annex.extend import refresh_tarball_token

    env = shared_annex_env
    _create(env, "race")
    s3 = env.clients.s3
    later = START + timedelta(hours=6)

    class RacingS3:
        """The real client; just before our write, another extend writes a later token."""

        def __init__(self) -> None:
            self.raced = False

        def __getattr__(self, name):
            return getattr(s3, name)

        def put_object(self, **kwargs):
            if not self.raced:
                self.raced = True
                assert (
                    refresh_tarball_token(
                        s3, env.settings.config_bucket, "race", later, _source(env)
                    )
                    == ""
                )
            return s3.put_object(**kwargs)

    racing = RacingS3()
    note = refresh_tarball_token(
        racing, env.settings.config_bucket, "race", START + timedelta(hours=2), _source(env)
    )
    assert racing.raced
    assert note is None  # re-read: the token there already lasts longer
    assert _token_expiry(_members(env, "race")) == int(later.timestamp())


def test_extending_without_a_way_to_mint_changes_nothing(shared_annex_env, tmp_path):
    from condor_annex.extend import TokenSource

    env = shared_annex_env
    _create(env, "nokey")
    before = _members(env, "nokey")
    record_before = lease.read_lease_record(env.clients.s3, env.settings.config_bucket, "nokey")
    with pytest.raises(InvalidInput):
        extend_lease(
            "nokey",
            7200,
            settings=env.settings,
            clients=env.clients,
            now=START,
            token_source=TokenSource(signing_key_file=tmp_path / "missing"),
        )
    assert _members(env, "nokey") == before
    assert (
        lease.read_lease_record(env.clients.s3, env.settings.config_bucket, "nokey")
        == record_before
    )
