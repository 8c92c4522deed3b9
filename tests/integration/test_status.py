"""`condor_annex status`: exactly the annex's instances, joined with the pool's view."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone

import jsonschema
import pytest

from condor_annex import contract, spot
from condor_annex.cli.main import CliContext, main
from condor_annex.cli.render import status_schema
from condor_annex.contract import utc_iso
from condor_annex.create import create_annex
from condor_annex.status import NEVER_JOINED_AFTER, annex_status
from tests.integration import annex_env as _annex_env

shared_annex_env = _annex_env.shared_annex_env  # the fixture, shared by this module


@pytest.fixture(scope="module")
def annexes(shared_annex_env):
    """`big` (2 on-demand), `big_data` (1 on-demand, a name `big` must not claim), `sp` (spot),
    and one stray instance launched outside condor_annex."""
    env = shared_annex_env
    made = {}
    for name, kw in (
        ("big", {"count": 2}),
        ("big_data", {"count": 1}),
        ("sp", {"slots": 2, "spot_instance_types": spot.parse_instance_types(["m5.large"])}),
    ):
        made[name] = create_annex(
            env.request(name, **kw), settings=env.settings, clients=env.clients, hooks=env.hooks()
        )
    env.admin.ec2.run_instances(ImageId=env.ami_id, MinCount=1, MaxCount=1)  # not an annex
    # Spot Fleet tags its instances a moment after launch (the local AWS: 0.2 s).
    env.clients.ec2.get_waiter("instance_exists").wait(
        Filters=[
            {"Name": f"tag:{contract.SPOT_FLEET_REQUEST_ID_TAG}", "Values": [made["sp"].fleet_id]}
        ],
        WaiterConfig={"Delay": 1, "MaxAttempts": 20},
    )
    return env, made


def test_status_of_one_annex_lists_exactly_its_instances(annexes):
    env, made = annexes
    report = annex_status(settings=env.settings, clients=env.clients, annex_name="big")
    assert [a.annex_name for a in report.annexes] == ["big"]
    assert report.instance_ids() == set(made["big"].instance_ids)


def test_status_of_an_annex_whose_name_prefixes_another_does_not_claim_it(annexes):
    env, made = annexes
    report = annex_status(settings=env.settings, clients=env.clients, annex_name="big_data")
    assert report.instance_ids() == set(made["big_data"].instance_ids)


def test_status_of_a_spot_annex_lists_the_fleet_instances(annexes):
    env, made = annexes
    report = annex_status(settings=env.settings, clients=env.clients, annex_name="sp")
    (annex,) = report.annexes
    assert annex.fleet_ids == [made["sp"].fleet_id]
    assert annex.kind == contract.FLEET_KIND_SPOT_FLEET
    assert annex.instances
    assert all(i.fleet_id == made["sp"].fleet_id for i in annex.instances)


def test_status_of_all_annexes_skips_instances_of_no_annex(annexes):
    env, made = annexes
    report = annex_status(settings=env.settings, clients=env.clients)
    assert [a.annex_name for a in report.annexes] == ["big", "big_data", "sp"]
    everything = {i["InstanceId"] for i in env.live_instances()}
    ours = set(made["big"].instance_ids) | set(made["big_data"].instance_ids)
    stray = everything - report.instance_ids()
    assert len(stray) == 1
    assert ours <= report.instance_ids()


def test_status_shows_each_annex_lease_expiry(annexes):
    env, made = annexes
    report = annex_status(settings=env.settings, clients=env.clients, annex_name="big")
    assert report.annexes[0].lease_expires_at == utc_iso(made["big"].expires_at)
    assert report.annexes[0].lease_expired is False


def test_status_marks_instances_the_pool_knows_as_joined(annexes):
    env, made = annexes
    joined = made["big"].instance_ids[0]
    report = annex_status(
        settings=env.settings, clients=env.clients, annex_name="big", pool_view=lambda: {joined}
    )
    flags = {i.instance_id: i.joined_pool for i in report.annexes[0].instances}
    assert flags == {joined: True, made["big"].instance_ids[1]: False}
    assert report.pool_checked


def test_status_flags_running_instances_that_never_joined(annexes):
    env, made = annexes
    later = datetime.now(timezone.utc) + NEVER_JOINED_AFTER + timedelta(minutes=1)
    report = annex_status(
        settings=env.settings,
        clients=env.clients,
        annex_name="big",
        pool_view=lambda: {made["big"].instance_ids[0]},
        now=later,
    )
    never = {i.instance_id for i in report.annexes[0].instances if i.never_joined}
    assert never == {made["big"].instance_ids[1]}


def test_status_without_a_reachable_pool_says_so_and_still_lists(annexes):
    env, _ = annexes

    def unreachable() -> set[str]:
        raise OSError("connection refused")

    report = annex_status(
        settings=env.settings, clients=env.clients, annex_name="big", pool_view=unreachable
    )
    assert not report.pool_checked
    assert "connection refused" in report.notes[0]
    assert {i.joined_pool for i in report.annexes[0].instances} == {None}


def _cli(env, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    ctx = CliContext(
        stdout=out,
        stderr=err,
        clients=lambda region, profile: env.clients,
        pool_view=lambda: set(),
    )
    code = main([*argv, *env.cli_args()], ctx)
    return code, out.getvalue(), err.getvalue()


def test_status_json_validates_against_the_documented_schema(annexes):
    env, _ = annexes
    code, out, err = _cli(env, "status", "--json")
    assert code == 0, err
    document = json.loads(out)
    jsonschema.validate(document, status_schema())
    assert {a["annex_name"] for a in document["annexes"]} == {"big", "big_data", "sp"}


def test_status_json_schema_rejects_a_document_missing_the_instances(annexes):
    env, _ = annexes
    _, out, _ = _cli(env, "status", "-annex-name", "big", "--json")
    document = json.loads(out)
    del document["annexes"][0]["instances"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, status_schema())


def test_status_table_names_every_instance_of_the_annex(annexes):
    env, made = annexes
    code, out, _ = _cli(env, "status", "-annex-name", "big")
    assert code == 0
    for instance_id in made["big"].instance_ids:
        assert instance_id in out
    assert made["big_data"].instance_ids[0] not in out
