"""EC2 Fleet annexes (`-aws-fleet`): create, status, off and the lease, instant and maintain."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest

from condor_annex import contract, spot
from condor_annex.cli.main import CliContext, main
from condor_annex.create import create_annex
from condor_annex.errors import CapacityError, InvalidInput
from condor_annex.status import annex_status
from tests.fixtures.cdk import load_lambda_module
from tests.integration import annex_env as _annex_env

minimal_annex_env = _annex_env.minimal_annex_env  # the fixture, shared by this module
lease = load_lambda_module("lease")


def _cli(env, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    ctx = CliContext(
        stdout=out,
        stderr=err,
        clients=lambda region, profile: env.clients,
        create_hooks=env.hooks(progress=None),
    )
    return main([*argv, *env.cli_args()], ctx), out.getvalue(), err.getvalue()


def _fleet(env, fleet_id):
    return env.admin.ec2.describe_fleets(FleetIds=[fleet_id])["Fleets"][0]


def _fleet_instances(env, fleet_id):
    ids = [
        a["InstanceId"]
        for a in env.admin.ec2.describe_fleet_instances(FleetId=fleet_id)["ActiveInstances"]
    ]
    reservations = env.admin.ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def _vpc_subnets(env):
    subnets = env.admin.ec2.describe_subnets(
        Filters=[{"Name": "vpc-id", "Values": [env.settings.vpc_id]}]
    )["Subnets"]
    return sorted(s["SubnetId"] for s in subnets)


@pytest.fixture
def env(minimal_annex_env):
    env = minimal_annex_env
    env.local.set_fleet_tag_delay(0)
    env.local.clear_capacity_errors()
    yield env
    env.local.clear_capacity_errors()
    env.local.set_fleet_tag_delay(0.2)


def test_instant_on_demand_fleet_from_the_command_line(env):
    """One CreateFleet: the annex's template, every subnet of the setup VPC, lowest-price,
    the cap in OnDemandOptions.MaxTotalPrice, `<annex>_<GUID>` as client token."""
    code, out, err = _cli(
        env, "-annex-name", "ef_od", "-count", "2", "-aws-ami-id", env.ami_id, "-aws-fleet",
        "-aws-on-demand-instance-type", "m5.large,c5.large", "-max-price-per-hour", "1",
        "--json",
    )  # fmt: skip

    assert code == 0, err
    document = json.loads(out)
    assert document["kind"] == contract.FLEET_KIND_EC2_FLEET
    fleet = _fleet(env, document["fleet_id"])
    assert fleet["Type"] == "instant"
    assert contract.token_belongs_to(fleet["ClientToken"], "ef_od")
    assert fleet["OnDemandOptions"] == {"AllocationStrategy": "lowest-price", "MaxTotalPrice": "1"}
    assert fleet["TargetCapacitySpecification"]["TotalTargetCapacity"] == 2
    assert fleet["TargetCapacitySpecification"]["DefaultTargetCapacityType"] == "on-demand"
    (config,) = fleet["LaunchTemplateConfigs"]
    template = env.admin.ec2.describe_launch_templates(
        LaunchTemplateNames=[contract.launch_template_name("ef_od")]
    )["LaunchTemplates"][0]
    assert config["LaunchTemplateSpecification"]["LaunchTemplateId"] == template["LaunchTemplateId"]
    pools = {(o["InstanceType"], o["SubnetId"]) for o in config["Overrides"]}
    assert pools == {(t, s) for t in ("m5.large", "c5.large") for s in _vpc_subnets(env)}
    assert {"Key": contract.TAG_ANNEX_NAME, "Value": "ef_od"} in fleet["Tags"]
    instances = _fleet_instances(env, document["fleet_id"])
    assert sorted(i["InstanceId"] for i in instances) == document["instance_ids"]
    for instance in instances:
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert instance["IamInstanceProfile"]["Arn"] == env.settings.instance_profile_arn
        assert {"Key": contract.TAG_ANNEX_NAME, "Value": "ef_od"} in instance["Tags"]
        assert instance.get("InstanceLifecycle") is None


def test_maintain_spot_fleet_carries_strategy_cap_and_lease_expiry(env):
    result = create_annex(
        env.request(
            "ef_spot",
            slots=4,
            aws_fleet=True,
            spot_instance_types=spot.parse_instance_types(["m5.large:2,c5.xlarge:4"]),
            max_price_per_hour=0.9,
        ),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(),
    )

    fleet = _fleet(env, result.fleet_id)
    assert fleet["Type"] == "maintain"
    assert fleet["SpotOptions"]["AllocationStrategy"] == "price-capacity-optimized"
    assert fleet["SpotOptions"]["MaxTotalPrice"] == "0.9"
    assert fleet["TerminateInstancesWithExpiration"] is True
    assert abs(fleet["ValidUntil"] - result.expires_at) < timedelta(seconds=1)
    weights = {
        o["InstanceType"]: o["WeightedCapacity"]
        for o in fleet["LaunchTemplateConfigs"][0]["Overrides"]
    }
    assert weights == {"m5.large": 2.0, "c5.xlarge": 4.0}
    instances = _fleet_instances(env, result.fleet_id)
    assert instances and {i["InstanceLifecycle"] for i in instances} == {"spot"}
    assert result.cost is not None and result.cost.market == "spot"


def test_status_and_off_end_an_ec2_fleet_annex(env):
    code, _, err = _cli(
        env, "-annex-name", "ef_off", "-slots", "2", "-aws-ami-id", env.ami_id, "-aws-fleet",
        "-aws-spot-instance-types", "m5.large", "-aws-fleet-type", "instant",
    )  # fmt: skip
    assert code == 0, err

    report = annex_status(settings=env.settings, clients=env.clients, annex_name="ef_off")
    (annex,) = report.annexes
    assert annex.kind == contract.FLEET_KIND_EC2_FLEET
    assert len(annex.fleet_ids) == 1 and annex.fleet_ids[0].startswith("fleet-")
    assert len(annex.instances) == 2
    assert annex.cost_so_far_usd is not None

    code, out, err = _cli(env, "off", "-annex-name", "ef_off")

    assert code == 0, err
    # The report names the kind of fleet it cancelled (an EC2 Fleet is no Spot Fleet).
    assert f"cancelled EC2 Fleet {annex.fleet_ids[0]}" in out
    assert "Spot Fleet" not in out
    assert annex.fleet_ids[0] not in env.live_ec2_fleets()
    assert env.live_instances("ef_off") == []
    assert contract.launch_template_name("ef_off") not in env.launch_templates()
    assert "ef_off" not in " ".join(env.objects())


@pytest.mark.parametrize("fleet_type", ["instant", "maintain"])
def test_the_lease_ends_an_ec2_fleet_annex(env, fleet_type):
    name = f"ef_lease_{fleet_type}"
    result = create_annex(
        env.request(
            name,
            count=1,
            aws_fleet=True,
            ec2_fleet_type=fleet_type,
        ),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(),
    )
    record = contract.LeaseRecord.from_json(
        env.admin.s3.get_object(Bucket=env.settings.config_bucket, Key=contract.lease_key(name))[
            "Body"
        ].read()
    )
    assert record.kind == contract.FLEET_KIND_EC2_FLEET

    ended = lease.end_lease(
        record,
        now=result.expires_at + timedelta(minutes=1),
        s3=env.clients.s3,
        ec2=env.clients.ec2,
        scheduler=env.clients.scheduler,
    )

    assert ended.errors == []
    assert result.fleet_id in ended.cancelled_fleets
    assert result.fleet_id not in env.live_ec2_fleets()
    assert env.live_instances(name) == []
    assert contract.launch_template_name(name) not in env.launch_templates()


def test_a_fleet_that_launches_nothing_exits_6_and_leaves_nothing(env):
    env.local.inject_capacity_error("m5.large")
    before = env.live_ec2_fleets()

    code, _, err = _cli(
        env, "-annex-name", "ef_none", "-count", "1", "-aws-ami-id", env.ami_id, "-aws-fleet",
    )  # fmt: skip

    assert code == CapacityError.exit_code, err
    assert "InsufficientInstanceCapacity" in err
    assert env.live_ec2_fleets() == before
    assert env.live_instances("ef_none") == []
    assert contract.launch_template_name("ef_none") not in env.launch_templates()
    assert not any("ef_none" in k for k in env.objects())


def test_a_second_create_of_an_ec2_fleet_annex_is_refused(env):
    args = ("-annex-name", "ef_twice", "-count", "1", "-aws-ami-id", env.ami_id, "-aws-fleet")
    assert _cli(env, *args)[0] == 0

    code, _, err = _cli(env, *args)

    assert code == InvalidInput.exit_code
    assert "already exists" in err


def test_aws_fleet_default_comes_from_the_user_config(env):
    text = env.config_file.read_text()
    env.config_file.write_text(text + f"{contract.MACRO_AWS_FLEET} = True\n")
    try:
        code, out, err = _cli(
            env, "-annex-name", "ef_cfg", "-count", "1", "-aws-ami-id", env.ami_id, "--json"
        )
        plain = _cli(
            env, "-annex-name", "ef_plain", "-count", "1", "-aws-ami-id", env.ami_id,
            "-no-aws-fleet", "--json",
        )  # fmt: skip
    finally:
        env.config_file.write_text(text)

    assert code == 0, err
    assert json.loads(out)["kind"] == contract.FLEET_KIND_EC2_FLEET
    assert json.loads(plain[1])["kind"] == contract.FLEET_KIND_ON_DEMAND


def test_a_maintain_annex_is_refilled_after_an_interruption_and_off_ends_the_refill(env):
    result = create_annex(
        env.request(
            "ef_refill",
            slots=2,
            aws_fleet=True,
            spot_instance_types=spot.parse_instance_types(["m5.large"]),
        ),
        settings=env.settings,
        clients=env.clients,
        hooks=env.hooks(),
    )
    before = sorted(i["InstanceId"] for i in env.live_instances("ef_refill"))
    assert len(before) == 2

    # A Spot interruption terminates the instance; the maintain fleet replaces it.
    env.admin.ec2.terminate_instances(InstanceIds=before[:1])  # AWS ends it, not the operator

    report = annex_status(settings=env.settings, clients=env.clients, annex_name="ef_refill")
    running = sorted(i.instance_id for i in report.annexes[0].instances if i.state == "running")
    assert len(running) == 2 and before[0] not in running
    code, _, err = _cli(env, "off", "-annex-name", "ef_refill")
    assert code == 0, err
    assert env.live_instances("ef_refill") == []
    assert result.fleet_id not in env.live_ec2_fleets()
