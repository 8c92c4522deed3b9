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
    result = extend_lease("longer", 3 * 3600, settings=env.settings, clients=env.clients, now=later)
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
    extend_lease("record", 7200, settings=env.settings, clients=env.clients, now=START)
    record = lease.read_lease_record(env.clients.s3, env.settings.config_bucket, "record")
    assert record is not None
    assert record.expiry == START + timedelta(hours=2)
    assert record.client_token == made.client_token


def test_extending_recreates_a_schedule_that_is_gone(shared_annex_env):
    env = shared_annex_env
    _create(env, "lost_schedule")
    env.clients.scheduler.delete_schedule(Name=contract.schedule_name("lost_schedule"))
    result = extend_lease("lost_schedule", 3600, settings=env.settings, clients=env.clients)
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
