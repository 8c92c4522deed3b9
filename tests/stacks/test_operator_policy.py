"""The annex operator policy (docs/RULES.md, "Least privilege for day-to-day use"): day-to-day use, limited by tag, profile and role."""

from __future__ import annotations

from condor_annex import contract
from tests.stacks.policies import by_sid, only, rendered, statements_of

REQUEST_TAGGED = {"Null": {f"aws:RequestTag/{contract.TAG_ANNEX_NAME}": "false"}}
RESOURCE_TAGGED = {"Null": {f"aws:ResourceTag/{contract.TAG_ANNEX_NAME}": "false"}}


def policy_id(template) -> str:
    return only(template, "AWS::IAM::ManagedPolicy", "OperatorPolicy")


def test_instances_launch_only_tagged_with_the_setup_profile_and_imdsv2(synthesized_setup):
    template = synthesized_setup.template
    statement = by_sid(template, policy_id(template), "LaunchAnnexInstancesTagged")
    profile = only(template, "AWS::IAM::InstanceProfile")
    assert statement.actions == ["ec2:RunInstances"]
    assert statement.body["Condition"] == {
        **REQUEST_TAGGED,
        "ArnEquals": {"ec2:InstanceProfile": {"Fn::GetAtt": [profile, "Arn"]}},
        "StringEquals": {"ec2:MetadataHttpTokens": "required"},
    }


def test_fleets_are_requested_only_tagged(synthesized_setup):
    template = synthesized_setup.template
    statement = by_sid(template, policy_id(template), "RequestAnnexFleetsTagged")
    assert statement.actions == ["ec2:RequestSpotFleet"]
    assert statement.body["Condition"] == REQUEST_TAGGED


def test_terminate_and_cancel_only_annex_tagged_resources(synthesized_setup):
    template = synthesized_setup.template
    for sid, action in (
        ("EndAnnexInstances", "ec2:TerminateInstances"),
        ("EndAnnexFleets", "ec2:CancelSpotFleetRequests"),
    ):
        statement = by_sid(template, policy_id(template), sid)
        assert statement.actions == [action]
        assert statement.body["Condition"] == RESOURCE_TAGGED
    ending = [
        s
        for s in statements_of(template, policy_id(template))
        if {"ec2:TerminateInstances", "ec2:CancelSpotFleetRequests"} & set(s.actions)
    ]
    assert all(s.body.get("Condition") == RESOURCE_TAGGED for s in ending)


def test_pass_role_names_exactly_the_annex_roles(synthesized_setup):
    template = synthesized_setup.template
    passing = [
        s for s in statements_of(template, policy_id(template)) if "iam:PassRole" in s.actions
    ]
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
    objects = by_sid(template, policy_id(template), "ManageAnnexObjects")
    assert sorted(objects.actions) == ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
    assert [rendered(r) for r in objects.resources] == [
        f"{bucket}/{contract.CONFIG_KEY_PATTERN}",
        f"{bucket}/{contract.LEASE_KEY_PREFIX}*",
    ]
    schedules = by_sid(template, policy_id(template), "ManageLeaseSchedules")
    assert all(a.startswith("scheduler:") for a in schedules.actions)
    assert rendered(schedules.resources[0]).endswith(f"/{contract.SCHEDULE_NAME_PREFIX}*")


def test_operator_may_invoke_the_setup_functions(synthesized_setup):
    template = synthesized_setup.template
    statement = by_sid(template, policy_id(template), "UseSetupFunctions")
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
    granted = {
        a for s in statements_of(template, policy_id(template)) if s.allows for a in s.actions
    }
    assert calls <= granted


def test_launch_templates_are_created_only_with_the_annex_tag(synthesized_setup):
    template = synthesized_setup.template
    statement = by_sid(template, policy_id(template), "CreateAnnexLaunchTemplatesTagged")
    assert statement.actions == ["ec2:CreateLaunchTemplate"]
    assert [rendered(r) for r in statement.resources] == [LAUNCH_TEMPLATES]
    assert statement.body["Condition"] == REQUEST_TAGGED


def test_launch_templates_are_tagged_only_when_created(synthesized_setup):
    template = synthesized_setup.template
    statement = by_sid(template, policy_id(template), "TagLaunchTemplatesAtCreationOnly")
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
        statement = by_sid(template, policy_id(template), sid)
        assert statement.actions == [action]
        assert [rendered(r) for r in statement.resources] == [LAUNCH_TEMPLATES]
        assert statement.body["Condition"] == RESOURCE_TAGGED
    on_templates = [
        s
        for s in statements_of(template, policy_id(template))
        if LAUNCH_TEMPLATES in [rendered(r) for r in s.resources]
    ]
    assert all(s.resources and len(s.resources) == 1 for s in on_templates)
    assert all(s.body.get("Condition") for s in on_templates)


def test_launch_templates_are_described_without_resource_scoping(synthesized_setup):
    template = synthesized_setup.template
    statement = by_sid(template, policy_id(template), "DescribeForStatusAndLaunch")
    assert "ec2:DescribeLaunchTemplates" in statement.actions
    assert statement.resources == ["*"]
    assert all(a.startswith("ec2:Describe") for a in statement.actions)


def test_the_cost_preview_may_read_prices_and_nothing_else_of_the_price_list(synthesized_setup):
    template = synthesized_setup.template
    statement = by_sid(template, policy_id(template), "ReadPrices")
    assert statement.actions == ["pricing:GetProducts"]
    assert statement.resources == ["*"]
    describe = by_sid(template, policy_id(template), "DescribeForStatusAndLaunch")
    assert "ec2:DescribeSpotPriceHistory" in describe.actions


def test_ec2_fleets_are_created_tagged_from_annex_templates_and_deleted_only_tagged(
    synthesized_setup,
):
    template = synthesized_setup.template
    pid = policy_id(template)
    created = by_sid(template, pid, "CreateAnnexEc2FleetsTagged")
    assert created.actions == ["ec2:CreateFleet"]
    assert [rendered(r) for r in created.resources] == [
        "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:fleet/*"
    ]
    assert created.body["Condition"] == REQUEST_TAGGED
    from_templates = by_sid(template, pid, "CreateEc2FleetsFromAnnexLaunchTemplates")
    assert from_templates.body["Condition"] == RESOURCE_TAGGED
    deleted = by_sid(template, pid, "EndAnnexEc2Fleets")
    assert deleted.actions == ["ec2:DeleteFleets"]
    assert deleted.body["Condition"] == RESOURCE_TAGGED
    tagging = by_sid(template, pid, "TagAtLaunchOnly")
    assert "CreateFleet" in tagging.body["Condition"]["StringEquals"]["ec2:CreateAction"]
    describe = by_sid(template, pid, "DescribeForStatusAndLaunch")
    assert {"ec2:DescribeFleets", "ec2:DescribeFleetInstances"} <= set(describe.actions)
    # Nothing else may create or delete EC2 Fleets.
    for statement in statements_of(template, pid):
        if {"ec2:CreateFleet", "ec2:DeleteFleets"} & set(statement.actions):
            assert statement.body.get("Sid") in {
                "CreateAnnexEc2FleetsTagged",
                "CreateEc2FleetsFromAnnexLaunchTemplates",
                "CreateEc2FleetsWithExistingResources",
                "EndAnnexEc2Fleets",
            }
