"""Create with a cost preview, a price cap and on-demand capacity fallback, on the local AWS."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone

import jsonschema
import pytest

from annex_sandbox import pricing
from condor_annex import contract, lease, spot
from condor_annex.cli import render
from condor_annex.cli.main import CliContext, main
from condor_annex.create import create_annex
from condor_annex.errors import CapacityError, InvalidInput
from condor_annex.status import annex_status
from tests.integration import annex_env as _annex_env

minimal_annex_env = _annex_env.minimal_annex_env  # the fixture, shared by this module


def _cli(env, *argv: str, confirm=None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    ctx = CliContext(
        stdout=out,
        stderr=err,
        clients=lambda region, profile: env.clients,
        create_hooks=env.hooks(progress=None),
        confirm=confirm,
    )
    args = [a for a in env.cli_args() if a != "-yes" or confirm is None]
    code = main([*argv, *args], ctx)
    return code, out.getvalue(), err.getvalue()


def _nothing_left(env) -> None:
    assert env.leftovers() == {
        "instances": [],
        "fleets": [],
        "objects": [],
        "schedules": [],
        "launch_templates": [],
    }


@pytest.fixture
def clean(minimal_annex_env):
    env = minimal_annex_env
    env.local.clear_capacity_errors()
    yield env
    env.local.clear_capacity_errors()
    for instance in env.live_instances():
        env.admin.ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])
    for fleet in env.live_fleets():
        env.admin.ec2.cancel_spot_fleet_requests(
            SpotFleetRequestIds=[fleet["SpotFleetRequestId"]], TerminateInstances=True
        )
    for key in env.objects():
        env.admin.s3.delete_object(Bucket=env.settings.config_bucket, Key=key)
    for name in env.schedules():
        env.admin.scheduler.delete_schedule(Name=name)
    for template in env.launch_templates():
        env.admin.ec2.delete_launch_template(LaunchTemplateName=template)


# --- Preview -------------------------------------------------------------------------------------


def test_cli_shows_the_preview_before_asking(clean):
    env = clean
    questions: list[str] = []
    code, _, err = _cli(
        env, "-annex-name", "pv_ask", "-count", "2", "-aws-ami-id", env.ami_id, "-duration", "2h",
        confirm=lambda q: questions.append(q) or False,
    )  # fmt: skip

    listed = float(pricing.on_demand_price("us-east-1", "m5.large") or "nan")
    assert code == 1 and "nothing was started" in err
    assert "Cost preview (on-demand" in err
    assert f"${2 * listed:,.4f} per hour" in err
    assert f"${4 * listed:,.4f} for the 2 h lease" in err
    assert questions
    assert "UNKNOWN" not in questions[0]
    _nothing_left(env)


def test_cli_asks_explicitly_when_the_price_is_unknown(clean):
    env = clean
    questions: list[str] = []
    code, _, err = _cli(
        env, "-annex-name", "pv_unknown", "-count", "1", "-aws-ami-id", env.ami_id,
        "-aws-on-demand-instance-type", "m5.24xlarge",
        confirm=lambda q: questions.append(q) or False,
    )  # fmt: skip

    assert code == 1
    assert "PRICE UNKNOWN" in err and "m5.24xlarge" in err
    assert questions and "UNKNOWN" in questions[0]
    _nothing_left(env)


def test_cli_json_includes_the_preview(clean):
    env = clean
    code, out, err = _cli(
        env, "-annex-name", "pv_json", "-count", "1", "-aws-ami-id", env.ami_id, "--json"
    )

    assert code == 0, err
    preview = json.loads(out)["cost"]
    assert preview["market"] == "on-demand"
    assert preview["usd_per_hour"] == pytest.approx(
        float(pricing.on_demand_price("us-east-1", "m5.large") or "nan"), abs=1e-4
    )
    assert preview["unknown"] == []


# --- Caps ----------------------------------------------------------------------------------------


def test_cap_refuses_the_annex_before_any_aws_change(clean):
    env = clean
    env.local.clear_calls()

    code, _, err = _cli(
        env, "-annex-name", "cap_od", "-count", "20", "-aws-ami-id", env.ami_id,
        "-max-price-per-hour", "1",
    )  # fmt: skip

    assert code == InvalidInput.exit_code
    assert "more than the cap" in err and "nothing was created" in err
    changes = [
        c.operation
        for c in env.local.calls()
        if c.operation.startswith(("Run", "Request", "Create", "Put", "Delete", "Terminate"))
    ]
    assert changes == []
    _nothing_left(env)


def test_cap_from_the_user_config_applies_and_the_flag_overrides_it(clean):
    env = clean
    text = env.config_file.read_text()
    env.config_file.write_text(text + f"{contract.MACRO_MAX_PRICE_PER_HOUR} = 0.05\n")
    try:
        refused = _cli(env, "-annex-name", "cap_cfg", "-count", "1", "-aws-ami-id", env.ami_id)
        allowed = _cli(
            env, "-annex-name", "cap_cfg", "-count", "1", "-aws-ami-id", env.ami_id,
            "-max-price-per-hour", "0.5",
        )  # fmt: skip
    finally:
        env.config_file.write_text(text)

    assert refused[0] == InvalidInput.exit_code and "cap of $0.0500/hour" in refused[2]
    assert allowed[0] == 0, allowed[2]
    record = lease.read_lease_record(env.clients.s3, env.settings.config_bucket, "cap_cfg")
    assert record is not None and record.max_price_per_hour == 0.5


def test_spot_fleet_carries_the_cap_into_spot_max_total_price(clean):
    env = clean
    result = create_annex(
        env.request(
            "cap_sf",
            slots=2,
            spot_instance_types=spot.parse_instance_types(["m5.large", "c5.large"]),
            max_price_per_hour=0.75,
        ),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(),
    )

    config = env.clients.ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[result.fleet_id])[
        "SpotFleetRequestConfigs"
    ][0]["SpotFleetRequestConfig"]
    assert config["SpotMaxTotalPrice"] == "0.75"
    assert result.cost is not None and result.cost.market == "spot"
    assert result.cost.max_price_per_hour == 0.75


# --- On-demand capacity fallback -----------------------------------------------------------------


def test_on_demand_moves_to_the_next_instance_type_without_capacity(clean):
    env = clean
    env.local.inject_capacity_error("m5.large")

    result = create_annex(
        env.request(
            "fb_type", count=2, instance_type="m5.large", fallback_instance_types=("c5.large",)
        ),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(),
    )

    instances = env.live_instances("fb_type")
    assert {i["InstanceType"] for i in instances} == {"c5.large"}
    assert sorted(result.instance_ids) == sorted(i["InstanceId"] for i in instances)
    assert [(p.instance_type, bool(p.error)) for p in result.launched] == [
        ("m5.large", True),
        ("c5.large", False),
    ]
    assert "InsufficientInstanceCapacity" in (result.launched[0].error or "")
    assert any("launched 2 c5.large" in n for n in result.notes)
    assert all(contract.token_belongs_to(i["ClientToken"], "fb_type") for i in instances)


def test_on_demand_moves_to_the_next_subnet_when_a_zone_has_no_capacity(clean):
    env = clean
    subnets = env.clients.ec2.describe_subnets(SubnetIds=env.subnet_ids[:2])["Subnets"]
    first, second = sorted(subnets, key=lambda s: env.subnet_ids.index(s["SubnetId"]))
    env.local.inject_capacity_error("m5.large", first["AvailabilityZone"], code="Unsupported")

    result = create_annex(
        env.request("fb_zone", count=1, subnet_ids=(first["SubnetId"], second["SubnetId"])),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(),
    )

    (instance,) = env.live_instances("fb_zone")
    assert instance["SubnetId"] == second["SubnetId"]
    assert [p.subnet_id for p in result.launched] == [first["SubnetId"], second["SubnetId"]]
    assert "Unsupported" in (result.launched[0].error or "")


def test_no_capacity_in_any_pool_exits_6_and_leaves_nothing(clean):
    env = clean
    env.local.inject_capacity_error("m5.large")
    env.local.inject_capacity_error("c5.large")

    code, _, err = _cli(
        env, "-annex-name", "fb_none", "-count", "1", "-aws-ami-id", env.ami_id,
        "-aws-on-demand-instance-type", "m5.large,c5.large",
    )  # fmt: skip

    assert code == CapacityError.exit_code, err
    assert "InsufficientInstanceCapacity" in err
    _nothing_left(env)


# --- Status: cost so far and the cap -------------------------------------------------------------


def test_status_shows_cost_so_far_and_the_cap(clean):
    env = clean
    create_annex(
        env.request("st_cost", count=2, max_price_per_hour=1.0),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(),
    )
    later = datetime.now(timezone.utc) + timedelta(hours=3)

    report = annex_status(
        settings=env.settings, clients=env.clients, annex_name="st_cost", now=later
    )

    (annex,) = report.annexes
    listed = float(pricing.on_demand_price("us-east-1", "m5.large") or "nan")
    assert annex.max_price_per_hour == 1.0
    assert annex.cost_so_far_usd == pytest.approx(2 * 3 * listed, rel=0.02)
    text = render.render_status(report)
    assert f"cost so far ${annex.cost_so_far_usd:,.4f}; cap $1.0000/hour" in text
    document = json.loads(render.to_json(report))
    jsonschema.validate(document, render.status_schema())
    assert document["annexes"][0]["cost_so_far_usd"] == annex.cost_so_far_usd


def test_status_says_why_the_cost_is_unknown(clean):
    env = clean
    create_annex(
        env.request("st_unknown", count=1, instance_type="m5.24xlarge"),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(),
    )

    report = annex_status(settings=env.settings, clients=env.clients, annex_name="st_unknown")

    assert report.annexes[0].cost_so_far_usd is None
    assert any("cost so far unknown" in n and "m5.24xlarge" in n for n in report.notes)
