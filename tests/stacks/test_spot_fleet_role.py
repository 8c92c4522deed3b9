"""The Spot Fleet role: trusts Spot Fleet, passes only the instance role."""

from __future__ import annotations

from tests.stacks.policies import by_sid, only, rendered, statements_of


def test_spot_fleet_role_trusts_spot_fleet_for_this_account(synthesized_setup):
    template = synthesized_setup.template
    role = template["Resources"][only(template, "AWS::IAM::Role", "SpotFleetRole")]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "spotfleet.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}


def test_spot_fleet_policy_is_customer_managed_and_attached(synthesized_setup):
    template = synthesized_setup.template
    policy = only(template, "AWS::IAM::ManagedPolicy", "SpotFleetPolicy")
    role = only(template, "AWS::IAM::Role", "SpotFleetRole")
    assert "Roles" not in template["Resources"][policy]["Properties"]
    assert template["Resources"][role]["Properties"]["ManagedPolicyArns"] == [{"Ref": policy}]


def test_spot_fleet_passes_only_the_instance_role_to_ec2(synthesized_setup):
    template = synthesized_setup.template
    policy = only(template, "AWS::IAM::ManagedPolicy", "SpotFleetPolicy")
    passing = [s for s in statements_of(template, policy) if "iam:PassRole" in s.actions]
    assert len(passing) == 1
    (statement,) = passing
    instance_role = only(template, "AWS::IAM::Role", "InstanceRole")
    assert statement.resources == [{"Fn::GetAtt": [instance_role, "Arn"]}]
    assert statement.body["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}
    }


def test_spot_fleet_tags_only_at_launch_and_terminates_only_annex_instances(synthesized_setup):
    template = synthesized_setup.template
    policy = only(template, "AWS::IAM::ManagedPolicy", "SpotFleetPolicy")
    tagging = by_sid(template, policy, "TagAtLaunch")
    assert tagging.body["Condition"] == {
        "StringEquals": {"ec2:CreateAction": ["RunInstances", "RequestSpotInstances"]}
    }
    terminate = by_sid(template, policy, "TerminateAnnexInstances")
    assert terminate.body["Condition"] == {"Null": {"aws:ResourceTag/htcondor:AnnexName": "false"}}
    assert [rendered(r) for r in terminate.resources] == [
        "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/*"
    ]


LAUNCH_TEMPLATES = "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:launch-template/*"


def test_spot_fleet_launches_only_from_annex_tagged_launch_templates(synthesized_setup):
    template = synthesized_setup.template
    policy = only(template, "AWS::IAM::ManagedPolicy", "SpotFleetPolicy")
    statement = by_sid(template, policy, "LaunchFromAnnexLaunchTemplates")
    assert statement.actions == ["ec2:RunInstances"]
    assert [rendered(r) for r in statement.resources] == [LAUNCH_TEMPLATES]
    assert statement.body["Condition"] == {"Null": {"aws:ResourceTag/htcondor:AnnexName": "false"}}
    on_templates = [
        s for s in statements_of(template, policy) if LAUNCH_TEMPLATES in map(rendered, s.resources)
    ]
    assert on_templates == [statement]


def test_spot_fleet_tags_the_instances_and_volumes_a_launch_template_launches(synthesized_setup):
    template = synthesized_setup.template
    policy = only(template, "AWS::IAM::ManagedPolicy", "SpotFleetPolicy")
    tagging = by_sid(template, policy, "TagAtLaunch")
    kinds = {rendered(r).rsplit(":", 1)[1] for r in tagging.resources}
    assert {"instance/*", "volume/*"} <= kinds
    assert "ec2:CreateTags" in tagging.actions
