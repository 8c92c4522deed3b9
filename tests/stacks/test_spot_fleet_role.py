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


def test_spot_fleet_tags_only_with_the_annex_tag_and_terminates_only_annex_instances(
    synthesized_setup,
):
    """As AWS's AmazonEC2SpotFleetTaggingRole, without `ec2:CreateAction` (Spot Fleet also tags in
    calls of its own), but only tag sets naming the annex, on what Spot Fleet creates."""
    template = synthesized_setup.template
    policy = only(template, "AWS::IAM::ManagedPolicy", "SpotFleetPolicy")
    tagging = by_sid(template, policy, "TagAnnexLaunches")
    assert tagging.actions == ["ec2:CreateTags"]
    assert tagging.body["Condition"] == {"Null": {"aws:RequestTag/htcondor:AnnexName": "false"}}
    assert {rendered(r).rsplit(":", 1)[1] for r in tagging.resources} == {
        "instance/*",
        "volume/*",
        "spot-instances-request/*",
    }
    tagging_statements = [
        s for s in statements_of(template, policy) if "ec2:CreateTags" in s.actions
    ]
    assert tagging_statements == [tagging]
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


def test_spot_fleet_launches_keep_the_operators_guard_rails(synthesized_setup):
    """Spot Fleet launches from the annex's template, whose contents nobody authorized at
    creation: its own launch must hold the setup's profile, IMDSv2, security group and VPC."""
    template = synthesized_setup.template
    policy = only(template, "AWS::IAM::ManagedPolicy", "SpotFleetPolicy")
    profile = only(template, "AWS::IAM::InstanceProfile")
    instances = by_sid(template, policy, "LaunchSetupInstances")
    assert instances.body["Condition"] == {
        "ArnEquals": {"ec2:InstanceProfile": {"Fn::GetAtt": [profile, "Arn"]}},
        "StringEquals": {"ec2:MetadataHttpTokens": "required"},
    }
    group = only(template, "AWS::EC2::SecurityGroup", "Network")
    assert [
        rendered(r) for r in by_sid(template, policy, "LaunchInSetupSecurityGroup").resources
    ] == [
        f"arn:${{AWS::Partition}}:ec2:${{AWS::Region}}:${{AWS::AccountId}}:security-group/${{{group}.GroupId}}"
    ]
    vpc = by_sid(template, policy, "LaunchInSetupVpc")
    assert list(vpc.body["Condition"]["ArnEquals"]) == ["ec2:Vpc"]
    for statement in statements_of(template, policy):
        kinds = {rendered(r).rsplit(":", 1)[-1].split("/")[0] for r in statement.resources}
        if "ec2:RunInstances" in statement.actions and kinds & {"subnet", "security-group"}:
            assert statement.body.get("Sid") in {"LaunchInSetupSecurityGroup", "LaunchInSetupVpc"}
