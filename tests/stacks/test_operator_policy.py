"""The annex operator policy (SPEC §5): day-to-day use, limited by tag, profile and role."""

from __future__ import annotations

from condor_annex import contract
from tests.stacks.policies import by_sid, only, rendered, statements_of

REQUEST_TAGGED = {"Null": {f"aws:RequestTag/{contract.TAG_ANNEX_NAME}": "false"}}
RESOURCE_TAGGED = {"Null": {f"aws:ResourceTag/{contract.TAG_ANNEX_NAME}": "false"}}


def policy_id(template) -> str:
    return only(template, "AWS::IAM::ManagedPolicy", "OperatorPolicy")


def test_instances_launch_only_tagged_and_with_the_setup_profile(synthesized_setup):
    template = synthesized_setup.template
    statement = by_sid(template, policy_id(template), "LaunchAnnexInstancesTagged")
    profile = only(template, "AWS::IAM::InstanceProfile")
    assert statement.actions == ["ec2:RunInstances"]
    assert statement.body["Condition"] == {
        **REQUEST_TAGGED,
        "ArnEquals": {"ec2:InstanceProfile": {"Fn::GetAtt": [profile, "Arn"]}},
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
