"""The annex operator policy (docs/RULES.md, "Least privilege for day-to-day use"): day-to-day use, limited by tag, profile and role."""

from __future__ import annotations

from condor_annex import contract
from tests.stacks.policies import Statement, only, rendered, statements

REQUEST_TAGGED = {"Null": {f"aws:RequestTag/{contract.TAG_ANNEX_NAME}": "false"}}
RESOURCE_TAGGED = {"Null": {f"aws:ResourceTag/{contract.TAG_ANNEX_NAME}": "false"}}


def operator_statements(template) -> list[Statement]:
    """The statements of both operator policies (split by verb to fit IAM's size limit)."""
    ids = {
        only(template, "AWS::IAM::ManagedPolicy", "OperatorPolicy"),
        only(template, "AWS::IAM::ManagedPolicy", "OperatorLaunchPolicy"),
    }
    return [s for s in statements(template) if s.resource_id in ids]


def operator_sid(template, sid: str) -> Statement:
    matches = [s for s in operator_statements(template) if s.body.get("Sid") == sid]
    assert len(matches) == 1, f"the operator policies have {len(matches)} statements {sid}"
    return matches[0]


def test_instances_launch_only_tagged_with_the_setup_profile_and_imdsv2(synthesized_setup):
    template = synthesized_setup.template
    statement = operator_sid(template, "LaunchAnnexInstancesTagged")
    profile = only(template, "AWS::IAM::InstanceProfile")
    assert statement.actions == ["ec2:RunInstances"]
    assert statement.body["Condition"] == {
        **REQUEST_TAGGED,
        "ArnEquals": {"ec2:InstanceProfile": {"Fn::GetAtt": [profile, "Arn"]}},
        "StringEquals": {"ec2:MetadataHttpTokens": "required"},
    }


def test_fleets_are_requested_only_tagged(synthesized_setup):
    template = synthesized_setup.template
    statement = operator_sid(template, "RequestAnnexFleetsTagged")
    assert statement.actions == ["ec2:RequestSpotFleet"]
    assert statement.body["Condition"] == REQUEST_TAGGED


def test_terminate_and_cancel_only_annex_tagged_resources(synthesized_setup):
    template = synthesized_setup.template
    for sid, action in (
        ("EndAnnexInstances", "ec2:TerminateInstances"),
        ("EndAnnexFleets", "ec2:CancelSpotFleetRequests"),
    ):
        statement = operator_sid(template, sid)
        assert statement.actions == [action]
        assert statement.body["Condition"] == RESOURCE_TAGGED
    ending = [
        s
        for s in operator_statements(template)
        if {"ec2:TerminateInstances", "ec2:CancelSpotFleetRequests"} & set(s.actions)
    ]
    assert all(s.body.get("Condition") == RESOURCE_TAGGED for s in ending)


def test_pass_role_names_exactly_the_annex_roles(synthesized_setup):
    template = synthesized_setup.template
    passing = [s for s in operator_statements(template) if "iam:PassRole" in s.actions]
    passed = sorted(r["Fn::GetAtt"][0] for s in passing for r in s.resources)
    assert passed == sorted(
        [
            only(template, "AWS::IAM::Role", "InstanceRole"),
            only(template, "AWS::IAM::Role", "SpotFleetRole"),
            only(template, "AWS::IAM::Role", "LeaseEnforcementSchedulerRole"),
        ]
    )
    assert all("iam:PassedToService" in s.body["Condition"]["StringEquals"] for s in passing)


def test_operator_manages_only_annex_objects_and_schedules(synthesized_setup):
    template = synthesized_setup.template
    bucket = "${" + only(template, "AWS::S3::Bucket", "ConfigBucket") + ".Arn}"
    objects = operator_sid(template, "ManageAnnexObjects")
    assert sorted(objects.actions) == ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
    assert [rendered(r) for r in objects.resources] == [
        f"{bucket}/{contract.CONFIG_KEY_PATTERN}",
        f"{bucket}/{contract.LEASE_KEY_PREFIX}*",
    ]
    schedules = operator_sid(template, "ManageLeaseSchedules")
    assert all(a.startswith("scheduler:") for a in schedules.actions)
    assert rendered(schedules.resources[0]).endswith(f"/{contract.SCHEDULE_NAME_PREFIX}*")


def test_operator_may_invoke_the_setup_functions(synthesized_setup):
    template = synthesized_setup.template
    statement = operator_sid(template, "UseSetupFunctions")
    assert sorted(statement.actions) == ["lambda:GetFunction", "lambda:InvokeFunction"]
    assert len(statement.resources) == 3


LAUNCH_TEMPLATES = "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:launch-template/*"
CLI_MODULES = ("create.py", "off.py", "annex.py")


def _launch_template_calls() -> set[str]:
    """The EC2 launch template API actions the CLI's create and off verbs call (from the source)."""
    import re
    from pathlib import Path

    package = Path(contract.__file__).parent
    calls: set[str] = set()
    for module in CLI_MODULES:
        source = (package / module).read_text()
        for method in re.findall(r"\bec2\.(\w*launch_templates?)\(", source):
            calls.add("ec2:" + "".join(part.capitalize() for part in method.split("_")))
    return calls


def test_cli_launch_template_calls_are_all_granted(synthesized_setup):
    template = synthesized_setup.template
    calls = _launch_template_calls()
    assert calls == {
        "ec2:CreateLaunchTemplate",
        "ec2:DeleteLaunchTemplate",
        "ec2:DescribeLaunchTemplates",
    }
    granted = {a for s in operator_statements(template) if s.allows for a in s.actions}
    assert calls <= granted


def test_launch_templates_are_created_only_with_the_annex_tag(synthesized_setup):
    template = synthesized_setup.template
    statement = operator_sid(template, "CreateAnnexLaunchTemplatesTagged")
    assert statement.actions == ["ec2:CreateLaunchTemplate"]
    assert [rendered(r) for r in statement.resources] == [LAUNCH_TEMPLATES]
    assert statement.body["Condition"] == REQUEST_TAGGED


def test_launch_templates_are_tagged_only_when_created(synthesized_setup):
    template = synthesized_setup.template
    statement = operator_sid(template, "TagLaunchTemplatesAtCreationOnly")
    assert statement.actions == ["ec2:CreateTags"]
    assert [rendered(r) for r in statement.resources] == [LAUNCH_TEMPLATES]
    assert statement.body["Condition"] == {
        "StringEquals": {"ec2:CreateAction": "CreateLaunchTemplate"}
    }


def test_only_annex_tagged_launch_templates_are_deleted_or_launched_from(synthesized_setup):
    template = synthesized_setup.template
    for sid, action in (
        ("DeleteAnnexLaunchTemplates", "ec2:DeleteLaunchTemplate"),
        ("LaunchFromAnnexLaunchTemplates", "ec2:RunInstances"),
    ):
        statement = operator_sid(template, sid)
        assert action in statement.actions
        assert [rendered(r) for r in statement.resources] == [LAUNCH_TEMPLATES]
        assert statement.body["Condition"] == RESOURCE_TAGGED
    on_templates = [
        s
        for s in operator_statements(template)
        if LAUNCH_TEMPLATES in [rendered(r) for r in s.resources]
    ]
    assert all(s.resources and len(s.resources) == 1 for s in on_templates)
    assert all(s.body.get("Condition") for s in on_templates)


def test_launch_templates_are_described_without_resource_scoping(synthesized_setup):
    template = synthesized_setup.template
    statement = operator_sid(template, "DescribeForStatusAndLaunch")
    assert "ec2:DescribeLaunchTemplates" in statement.actions
    assert statement.resources == ["*"]
    assert all(a.startswith("ec2:Describe") for a in statement.actions)


def test_the_cost_preview_may_read_prices_and_nothing_else_of_the_price_list(synthesized_setup):
    template = synthesized_setup.template
    statement = operator_sid(template, "ReadPrices")
    assert statement.actions == ["pricing:GetProducts"]
    assert statement.resources == ["*"]
    describe = operator_sid(template, "DescribeForStatusAndLaunch")
    assert "ec2:DescribeSpotPriceHistory" in describe.actions


def test_ec2_fleets_are_created_tagged_from_annex_templates_and_deleted_only_tagged(
    synthesized_setup,
):
    template = synthesized_setup.template
    created = operator_sid(template, "CreateAnnexEc2FleetsTagged")
    assert created.actions == ["ec2:CreateFleet"]
    assert [rendered(r) for r in created.resources] == [
        "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:fleet/*"
    ]
    assert created.body["Condition"] == REQUEST_TAGGED
    from_templates = operator_sid(template, "LaunchFromAnnexLaunchTemplates")
    assert "ec2:CreateFleet" in from_templates.actions
    assert from_templates.body["Condition"] == RESOURCE_TAGGED
    deleted = operator_sid(template, "EndAnnexEc2Fleets")
    assert deleted.actions == ["ec2:DeleteFleets"]
    assert deleted.body["Condition"] == RESOURCE_TAGGED
    tagging = operator_sid(template, "TagAtLaunchOnly")
    assert "CreateFleet" in tagging.body["Condition"]["StringEquals"]["ec2:CreateAction"]
    describe = operator_sid(template, "DescribeForStatusAndLaunch")
    assert {"ec2:DescribeFleets", "ec2:DescribeFleetInstances"} <= set(describe.actions)
    # Nothing else may create or delete EC2 Fleets.
    for statement in operator_statements(template):
        if {"ec2:CreateFleet", "ec2:DeleteFleets"} & set(statement.actions):
            assert statement.body.get("Sid") in {
                "CreateAnnexEc2FleetsTagged",
                "LaunchFromAnnexLaunchTemplates",
                "CreateEc2FleetsOfSetupInstances",
                "CreateEc2FleetsWithVolumes",
                "LaunchInSetupVpc",
                "LaunchWithChosenImageOrKey",
                "EndAnnexEc2Fleets",
            }


EC2 = "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}"
LAUNCH_ACTIONS = {"ec2:RunInstances", "ec2:RequestSpotFleet", "ec2:CreateFleet"}


def _setup_security_group(template) -> str:
    group = only(template, "AWS::EC2::SecurityGroup", "Network")
    return f"{EC2}:security-group/${{{group}.GroupId}}"


def _setup_vpc_condition() -> dict:
    from stacks.network import VPC_PARAMETER

    return {"ArnEquals": {"ec2:Vpc": f"{EC2}:vpc/${{{VPC_PARAMETER}}}"}}


def test_launches_go_only_into_the_setup_security_group_and_vpc(synthesized_setup):
    template = synthesized_setup.template
    group = operator_sid(template, "LaunchInSetupSecurityGroup")
    assert group.actions == ["ec2:RunInstances", "ec2:RequestSpotFleet"]
    assert [rendered(r) for r in group.resources] == [_setup_security_group(template)]
    assert "Condition" not in group.body
    vpc = operator_sid(template, "LaunchInSetupVpc")
    assert vpc.actions == ["ec2:RunInstances", "ec2:RequestSpotFleet", "ec2:CreateFleet"]
    assert [rendered(r) for r in vpc.resources] == [
        f"{EC2}:subnet/*",
        f"{EC2}:network-interface/*",
    ]
    assert _rendered_condition(vpc) == _setup_vpc_condition()


def _rendered_condition(statement: Statement) -> dict:
    return {
        operator: {key: rendered(value) for key, value in keys.items()}
        for operator, keys in statement.body["Condition"].items()
    }


def test_no_launch_grant_names_any_security_group_or_subnet_outside_the_guard_rails(
    synthesized_setup,
):
    """The guard rails cannot be bypassed through another statement of the policy."""
    template = synthesized_setup.template
    for statement in operator_statements(template):
        if not LAUNCH_ACTIONS & set(statement.actions):
            continue
        for resource in map(rendered, statement.resources):
            kind = resource.rsplit(":", 1)[1].split("/")[0]
            if kind == "security-group":
                assert resource == _setup_security_group(template), statement.body
            if kind in ("subnet", "network-interface", "vpc"):
                assert _rendered_condition(statement) == _setup_vpc_condition(), statement.body
            if (
                kind == "instance"
                and statement.body.get("Sid") != "CreateEc2FleetsOfSetupInstances"
            ):
                conditions = statement.body["Condition"]
                assert conditions["StringEquals"] == {"ec2:MetadataHttpTokens": "required"}
                assert list(conditions["ArnEquals"]) == ["ec2:InstanceProfile"]


def test_ec2_fleets_name_the_setup_profile_wherever_create_fleet_sees_one(synthesized_setup):
    template = synthesized_setup.template
    statement = operator_sid(template, "CreateEc2FleetsOfSetupInstances")
    profile = only(template, "AWS::IAM::InstanceProfile")
    assert statement.body["Condition"] == {
        "ArnEqualsIfExists": {"ec2:InstanceProfile": {"Fn::GetAtt": [profile, "Arn"]}}
    }
