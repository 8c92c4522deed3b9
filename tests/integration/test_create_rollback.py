"""A create that fails at any step leaves nothing behind: instances, fleet, template, tarball,
lease record, schedule. Failures are injected after each step (progress callback), by the local
AWS's throttling, by a failing connectivity probe, and by ^C."""

from __future__ import annotations

from typing import Any

import pytest

from condor_annex import contract, spot
from condor_annex.annex_settings import AnnexClients
from condor_annex.aws import make_client, make_session
from condor_annex.create import (
    STEP_CONNECTIVITY,
    STEP_LAUNCH,
    STEP_LAUNCH_TEMPLATE,
    STEP_LEASE,
    STEP_TARBALL,
    STEP_TOKEN,
    STEP_VALIDATE,
    create_annex,
)
from condor_annex.errors import AnnexError, AwsThrottled, ConnectivityFailed, VerbInterrupted
from tests.integration import annex_env as _annex_env

shared_annex_env = _annex_env.shared_annex_env  # the fixture, shared by this module

NOTHING: dict[str, list[str]] = {
    "instances": [],
    "fleets": [],
    "objects": [],
    "schedules": [],
    "launch_templates": [],
}


class Injected(Exception):
    """The failure a test injects."""


def _failing_at(step: str, exc: BaseException):
    def progress(name: str, state: str) -> None:
        if name == step and state == "done":
            raise exc

    return progress


def _on_demand(env, name="doomed"):
    return env.request(name, count=2)


def _spot(env, name="doomed"):
    return env.request(name, slots=2, spot_instance_types=spot.parse_instance_types(["m5.large"]))


@pytest.fixture
def env(shared_annex_env):
    assert shared_annex_env.leftovers() == NOTHING
    yield shared_annex_env
    shared_annex_env.local.clear_throttles()


@pytest.mark.parametrize(
    "step",
    [STEP_VALIDATE, STEP_CONNECTIVITY, STEP_TOKEN, STEP_TARBALL, STEP_LEASE, STEP_LAUNCH],
)
def test_on_demand_create_failing_after_each_step_leaves_nothing(env, step):
    with pytest.raises(Injected):
        create_annex(
            _on_demand(env),
            settings=env.settings,
            clients=env.clients,
            hooks=env.hooks(progress=_failing_at(step, Injected(step))),
        )
    assert env.leftovers() == NOTHING


@pytest.mark.parametrize("step", [STEP_TARBALL, STEP_LEASE, STEP_LAUNCH_TEMPLATE, STEP_LAUNCH])
def test_spot_fleet_create_failing_after_each_step_leaves_nothing(env, step):
    with pytest.raises(Injected):
        create_annex(
            _spot(env),
            settings=env.settings,
            clients=env.clients,
            hooks=env.hooks(progress=_failing_at(step, Injected(step))),
        )
    assert env.leftovers() == NOTHING


def test_interrupted_create_rolls_back_and_propagates_the_interrupt(env):
    # The interrupt reaches the caller as VerbInterrupted (exit 130), after the rollback.
    with pytest.raises(VerbInterrupted, match="rolled back"):
        create_annex(
            _on_demand(env),
            settings=env.settings,
            clients=env.clients,
            hooks=env.hooks(progress=_failing_at(STEP_LAUNCH, KeyboardInterrupt())),
        )
    assert env.leftovers() == NOTHING


def test_unreachable_collector_fails_the_connectivity_step_and_leaves_nothing(env):
    def unreachable(host: str, port: int) -> dict[str, Any]:
        return {"reachable": False, "host": host, "port": port, "address": None, "error": "timeout"}

    with pytest.raises(ConnectivityFailed, match="could not reach the collector"):
        create_annex(
            _on_demand(env),
            settings=env.settings,
            clients=env.clients,
            hooks=env.hooks(connectivity_probe=unreachable),
        )
    assert env.leftovers() == NOTHING


def _impatient_clients(env) -> AnnexClients:
    """Clients that make one attempt, so a throttled API fails fast."""
    session = make_session(region=env.local.region)
    return AnnexClients(
        ec2=make_client(session, "ec2", max_attempts=1),
        s3=make_client(session, "s3", max_attempts=1),
        scheduler=make_client(session, "scheduler", max_attempts=1),
        lambda_=make_client(session, "lambda", max_attempts=1),
        region=env.local.region,
    )


def test_throttled_schedule_creation_is_reported_and_leaves_nothing(env):
    env.local.throttle("scheduler", "CreateSchedule", capacity=0, refill_per_second=0.001)
    with pytest.raises(AwsThrottled) as caught:
        create_annex(
            _on_demand(env),
            settings=env.settings,
            clients=_impatient_clients(env),
            hooks=env.hooks(),
        )
    assert caught.value.exit_code == AwsThrottled.exit_code
    assert "lease" in str(caught.value)
    env.local.clear_throttles()
    assert env.leftovers() == NOTHING


def test_throttled_spot_fleet_request_is_reported_and_leaves_nothing(env):
    from condor_annex.backoff import Backoff

    env.local.throttle("ec2", "RequestSpotFleet", capacity=0, refill_per_second=0.001)
    with pytest.raises(AwsThrottled):
        create_annex(
            _spot(env),
            settings=env.settings,
            clients=_impatient_clients(env),
            hooks=env.hooks(backoff=lambda: Backoff(deadline_seconds=0.5, base=0.05)),
        )
    env.local.clear_throttles()
    assert env.leftovers() == NOTHING


def test_failed_create_names_its_step_in_one_line(env):
    env.local.throttle("s3", "PutObject", capacity=0, refill_per_second=0.001)
    with pytest.raises(AnnexError) as caught:
        create_annex(
            _on_demand(env),
            settings=env.settings,
            clients=_impatient_clients(env),
            hooks=env.hooks(),
        )
    message = str(caught.value)
    assert "\n" not in message
    assert "configuration" in message
    assert "next:" in message
    env.local.clear_throttles()
    assert contract.config_key("doomed") not in env.objects()
