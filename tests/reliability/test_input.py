"""Bad input on the command line and in files: refused with exit 2 before anything is made."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from condor_annex import contract, images
from condor_annex.errors import InvalidInput
from tests.integration.annex_env import AnnexEnv
from tests.reliability.conftest import check_refused, claim_left, cli, left_behind, od_args

AREA = "input"
BAD = InvalidInput.exit_code

mark = pytest.mark.reliability


def _case(case: str, *values: Any) -> Any:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", case).strip("-").lower()[:40]
    return pytest.param(*values, marks=mark(AREA, case), id=slug)


@pytest.mark.parametrize(
    "name, mention",
    [
        _case("annex name: empty", "", "-annex-name NAME"),
        _case("annex name: 28 characters (one over the client-token budget)", "a" * 28, "28"),
        _case("annex name: contains a space", "my annex", "not allowed"),
        _case("annex name: shell metacharacters `a;rm -rf ~`", "a;rm -rf ~", "not allowed"),
        _case("annex name: command substitution `$(id)`", "$(id)", "not allowed"),
        _case("annex name: unicode `ännex`", "ännex", "not allowed"),
        _case("annex name: only underscores", "___", "not allowed"),
        _case("annex name: leading digit", "1annex", "not allowed"),
        _case("annex name: trailing underscore (ambiguous token)", "annex_", "not allowed"),
        _case("annex name: path traversal `../x`", "../x", "not allowed"),
        _case("annex name: trailing newline `A\\n`", "A\n", "not allowed"),
    ],
)
def test_bad_annex_name_is_refused_before_any_aws_call(
    env: AnnexEnv, observed: Any, name: str, mention: str
) -> None:
    env.local.clear_calls()
    check_refused(env, observed, od_args(env, name), BAD, mention, "-annex-name")
    # Only the leftover listing itself (describe/list calls) reached AWS: no create call.
    assert not [c for c in env.local.calls() if not c.operation.startswith(("Describe", "List"))]


@mark(AREA, "annex name: uppercase `BigRun2` (allowed: tokens, keys, schedules accept it)")
def test_uppercase_annex_name_works_end_to_end_and_off_cleans_it(
    env: AnnexEnv, observed: Any
) -> None:
    before = env.leftovers()
    run = cli(env, *od_args(env, "BigRun2"))
    made = left_behind(env, before)
    off = cli(env, "off", "-annex-name", "BigRun2")
    left = left_behind(env, before)
    observed.equal("exit {}", run.code, 0)
    observed.equal("made {} instance", len(made["instances"]), 1)
    observed.check(
        f"schedule {', '.join(made['schedules'])} and tarball {contract.config_key('BigRun2')}",
        made["schedules"] == [contract.schedule_name("BigRun2")]
        and contract.config_key("BigRun2") in made["objects"],
        made,
    )
    observed.equal("`off` exit {}", off.code, 0)
    claim_left(observed, left)


@pytest.mark.parametrize(
    "flag, value, mention",
    [
        _case("-count 0", "-count", "0", "between 1 and 1000"),
        _case("-count -1", "-count", "-1", "between 1 and 1000"),
        _case("-count 10000000 (huge)", "-count", "10000000", "between 1 and 1000"),
        _case("-count abc (not a number)", "-count", "abc", "invalid int"),
        _case("-duration 0", "-duration", "0", "-duration must be between"),
        _case("-duration -1 (negative)", "-duration", "-1", "not a duration"),
        _case("-duration 1e9 (absurd, 114 000 years)", "-duration", "1e9", "not a duration"),
        _case("-duration 100000h (absurd)", "-duration", "100000h", "-duration must be between"),
        _case("-duration nan", "-duration", "nan", "not a duration"),
        _case("-idle 0", "-idle", "0", "-idle must be between"),
    ],
)
def test_bad_size_or_duration_is_refused(
    env: AnnexEnv, observed: Any, flag: str, value: str, mention: str
) -> None:
    argv = ["-annex-name", "sizes", "-aws-on-demand-ami-id", env.ami_id]
    if flag != "-count":
        argv += ["-count", "1"]
    check_refused(env, observed, [*argv, flag, value], BAD, mention)


@mark(AREA, "-count and -slots together")
def test_count_and_slots_together_are_refused(env: AnnexEnv, observed: Any) -> None:
    argv = [*od_args(env, "both"), "-slots", "2", "-aws-spot-instance-types", "m5.large"]
    check_refused(env, observed, argv, BAD, "not both")


@mark(AREA, "unknown instance type `m5.gigantic`")
def test_unknown_instance_type_is_refused(env: AnnexEnv, observed: Any) -> None:
    argv = od_args(env, "notype", "-aws-on-demand-instance-type", "m5.gigantic")
    check_refused(env, observed, argv, BAD, "m5.gigantic", "next:")


@mark(AREA, "AMI that does not exist `ami-0000dead`")
def test_missing_ami_is_refused(env: AnnexEnv, observed: Any) -> None:
    argv = ["-annex-name", "noami", "-count", "1", "-aws-on-demand-ami-id", "ami-0000dead"]
    check_refused(env, observed, argv, BAD, "ami-0000dead", "next:")


@mark(AREA, "no AMI given for an on-demand annex: the region's Amazon Linux 2023, made ready")
def test_no_ami_uses_the_default_image(env: AnnexEnv, observed: Any) -> None:
    before = env.leftovers()
    run = cli(env, "-annex-name", "noami2", "-count", "1")
    made = left_behind(env, before)
    default = env.local.client("ssm").get_parameter(Name=images.DEFAULT_IMAGE_PARAMETERS["x86_64"])[
        "Parameter"
    ]["Value"]
    launched = [i["ImageId"] for i in env.live_instances("noami2")]
    off = cli(env, "off", "-annex-name", "noami2", "-drain-timeout", "0")
    observed.equal("exit {}", run.code, 0)
    observed.equal("launched image {} (the SSM parameter's)", launched, [default])
    observed.check(
        "the output says it is made annex-ready at first boot", "stock-al2023" in run.out
    )
    observed.check("one instance", len(made["instances"]) == 1, made)
    observed.equal("`off` exit {}", off.code, 0)
    claim_left(observed, left_behind(env, before))


@mark(AREA, "reserved tag key `-tag htcondor:AnnexName other`")
def test_reserved_tag_is_refused(env: AnnexEnv, observed: Any) -> None:
    argv = od_args(env, "tagger", "-tag", contract.TAG_ANNEX_NAME, "other")
    check_refused(env, observed, argv, BAD, "reserved")


@mark(AREA, "user data over 16 KB")
def test_oversized_user_data_is_refused(env: AnnexEnv, observed: Any) -> None:
    argv = od_args(env, "bigdata", "-aws-user-data", "x" * (16 * 1024 + 1))
    check_refused(env, observed, argv, BAD, "16384")


# --- Spot Fleet config files --------------------------------------------------------------------


def _spot(env: AnnexEnv, name: str, path: Path) -> list[str]:
    return ["-annex-name", name, "-slots", "2", "-aws-spot-fleet-config-file", str(path)]


def _spec(env: AnnexEnv, **extra: Any) -> dict[str, Any]:
    return {"ImageId": env.ami_id, "InstanceType": "m5.large", **extra}


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "fleet.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@mark(AREA, "Spot Fleet config: not JSON")
def test_spot_config_not_json(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    path = _write(tmp_path, "SpotFleetRequestConfig: {oops")
    check_refused(env, observed, _spot(env, "nojson", path), BAD, "is not JSON")


@mark(AREA, "Spot Fleet config: 300 KiB file")
def test_spot_config_huge(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    specs = [_spec(env, UserData="A" * 1000) for _ in range(300)]
    path = _write(tmp_path, {"LaunchSpecifications": specs})
    check_refused(env, observed, _spot(env, "huge", path), BAD, "at most 262144")


@mark(AREA, "Spot Fleet config: JSON but a list, not an object")
def test_spot_config_wrong_shape(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    path = _write(tmp_path, [_spec(env)])
    check_refused(env, observed, _spot(env, "shape", path), BAD, "expected a JSON object")


@mark(AREA, "Spot Fleet config: file does not exist")
def test_spot_config_missing_file(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    argv = _spot(env, "nofile", tmp_path / "absent.json")
    check_refused(env, observed, argv, BAD, "cannot read the Spot Fleet config file")


def _check_replaced(env: AnnexEnv, observed: Any, name: str, path: Path, *mentions: str) -> None:
    """An old condor_annex Spot Fleet file naming its own role/profile/groups: the setup's are
    used instead (said in a note), and `off` leaves nothing behind."""
    before = env.leftovers()
    run = cli(env, *_spot(env, name, path))
    made = left_behind(env, before)
    fleet_roles = [
        f["SpotFleetRequestConfig"]["IamFleetRole"]
        for f in env.admin.ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"]
        if f["SpotFleetRequestConfig"].get("ClientToken", "").startswith(f"{name}_")
    ]
    template = env.admin.ec2.describe_launch_template_versions(
        LaunchTemplateName=contract.launch_template_name(name)
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    off = cli(env, "off", "-annex-name", name)
    left = left_behind(env, before)
    text = run.out + run.err
    observed.equal("exit {}", run.code, 0)
    observed.check("launched", bool(made["instances"]), made)
    observed.check(
        "the file's value is named in a note `... replaced by the setup's ...`",
        all(m in text for m in mentions) and "replaced by the setup's" in text,
        text,
    )
    observed.equal("fleet role {}", fleet_roles, [env.settings.spot_fleet_role_arn])
    observed.equal(
        "launch template profile {}",
        template["IamInstanceProfile"],
        {"Arn": env.settings.instance_profile_arn},
    )
    observed.equal(
        "launch template groups {}",
        template["SecurityGroupIds"],
        list(env.settings.security_group_ids),
    )
    observed.equal("`off` exit {}", off.code, 0)
    claim_left(observed, left)


@mark(AREA, "Spot Fleet config: foreign IamFleetRole (another account's admin role) is replaced")
def test_spot_config_foreign_fleet_role(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    data = {
        "IamFleetRole": "arn:aws:iam::999999999999:role/Admin",
        "LaunchSpecifications": [_spec(env)],
    }
    path = _write(tmp_path, data)
    _check_replaced(
        env, observed, "role", path, "IamFleetRole arn:aws:iam::999999999999:role/Admin"
    )


@mark(AREA, "Spot Fleet config: foreign instance profile (an admin profile) is replaced")
def test_spot_config_foreign_instance_profile(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    profile = {"Arn": f"arn:aws:iam::{env.local.account_id}:instance-profile/Admin"}
    path = _write(tmp_path, {"LaunchSpecifications": [_spec(env, IamInstanceProfile=profile)]})
    _check_replaced(env, observed, "prof", path, "instance-profile/Admin")


@mark(AREA, "Spot Fleet config: security group open to 0.0.0.0/0 from another VPC is replaced")
def test_spot_config_foreign_open_security_group(
    env: AnnexEnv, observed: Any, tmp_path: Path
) -> None:
    ec2 = env.admin.ec2
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    group = ec2.create_security_group(GroupName="wide-open", Description="x", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=group, IpProtocol="-1", CidrIp="0.0.0.0/0", FromPort=-1, ToPort=-1
    )
    spec = _spec(env, SecurityGroups=[{"GroupId": group}])
    path = _write(tmp_path, {"LaunchSpecifications": [spec]})
    try:
        _check_replaced(env, observed, "opensg", path, group)
    finally:
        ec2.delete_security_group(GroupId=group)
        ec2.delete_vpc(VpcId=vpc)


@mark(AREA, "Spot Fleet config: LaunchTemplateConfigs (would bypass IMDSv2 and the profile)")
def test_spot_config_launch_template(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    data = {
        "LaunchTemplateConfigs": [{"LaunchTemplateSpecification": {"LaunchTemplateId": "lt-1"}}]
    }
    path = _write(tmp_path, data)
    check_refused(env, observed, _spot(env, "lt", path), BAD, "LaunchTemplateConfigs")


@mark(AREA, "Spot Fleet config: network interface with a public IP in a launch spec")
def test_spot_config_network_interfaces(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    nic = [{"DeviceIndex": 0, "AssociatePublicIpAddress": True, "Groups": ["sg-1"]}]
    path = _write(tmp_path, {"LaunchSpecifications": [_spec(env, NetworkInterfaces=nic)]})
    check_refused(env, observed, _spot(env, "nic", path), BAD, "NetworkInterfaces")


@mark(AREA, "Spot Fleet config: unknown allocation strategy and fleet type `instant`")
def test_spot_config_bad_choice(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    data = {"Type": "instant", "LaunchSpecifications": [_spec(env)]}
    path = _write(tmp_path, data)
    check_refused(env, observed, _spot(env, "instant", path), BAD, "instant")
