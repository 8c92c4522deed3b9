"""The instance role and profile: the agent's well-known policy and scoped introspection."""

from __future__ import annotations

from aws_cdk.assertions import Match

from condor_annex import contract
from stacks.instance_role import INTROSPECTION_POLICY_NAME
from tests.stacks.policies import only, rendered, statements_of


def role_id(template) -> str:
    return only(template, "AWS::IAM::Role", "InstanceRole")


def bucket_ref(template) -> str:
    return "${" + only(template, "AWS::S3::Bucket", "ConfigBucket") + "}"


def test_instance_role_trusts_only_ec2(synthesized_setup):
    role = synthesized_setup.template["Resources"][role_id(synthesized_setup.template)]
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"] == [
        {
            "Action": "sts:AssumeRole",
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
        }
    ]


def test_well_known_policy_grants_only_get_object_on_config_tarballs(synthesized_setup):
    template = synthesized_setup.template
    named = [
        s
        for s in statements_of(template, role_id(template))
        if s.policy_name == contract.INSTANCE_ROLE_POLICY_NAME
    ]
    assert len(named) == 1
    (statement,) = named
    assert statement.allows and statement.actions == ["s3:GetObject"]
    assert [rendered(r) for r in statement.resources] == [
        contract.config_object_arn_pattern(bucket_ref(template), partition="${AWS::Partition}")
    ]
    assert "Condition" not in statement.body


def test_agent_finds_the_bucket_in_the_well_known_policy(synthesized_setup):
    template = synthesized_setup.template
    (statement,) = [
        s
        for s in statements_of(template, role_id(template))
        if s.policy_name == contract.INSTANCE_ROLE_POLICY_NAME
    ]
    resource = rendered(statement.resources[0]).replace(bucket_ref(template), "my-config-bucket")
    for partition in ("aws", "aws-cn", "aws-us-gov"):
        deployed = resource.replace("${AWS::Partition}", partition)
        assert contract.bucket_from_policy_resource(deployed) == "my-config-bucket"


def test_no_other_s3_permission_on_the_instance_role(synthesized_setup):
    template = synthesized_setup.template
    s3_actions = [
        a
        for s in statements_of(template, role_id(template))
        for a in s.actions
        if a.startswith("s3:")
    ]
    assert s3_actions == ["s3:GetObject"]


def test_introspection_describes_on_star_and_reads_only_its_own_iam(synthesized_setup):
    template = synthesized_setup.template
    introspection = [
        s
        for s in statements_of(template, role_id(template))
        if s.policy_name == INTROSPECTION_POLICY_NAME
    ]
    by_action = {a: [rendered(r) for r in s.resources] for s in introspection for a in s.actions}
    own = "${AWS::StackName}-${AWS::Region}-annex-instance"
    account = "arn:${AWS::Partition}:iam::${AWS::AccountId}"
    assert by_action == {
        "ec2:DescribeInstances": ["*"],
        "ec2:DescribeSpotFleetRequests": ["*"],
        "ec2:DescribeFleets": ["*"],
        "iam:GetInstanceProfile": [f"{account}:instance-profile/condor-annex/{own}"],
        "iam:ListRolePolicies": [f"{account}:role/condor-annex/{own}"],
        "iam:GetRolePolicy": [f"{account}:role/condor-annex/{own}"],
        "iam:ListAttachedRolePolicies": [f"{account}:role/condor-annex/{own}"],
    }


def test_role_and_profile_carry_the_names_their_policy_cites(synthesized_setup):
    template = synthesized_setup.template
    name = "${AWS::StackName}-${AWS::Region}-annex-instance"
    role = template["Resources"][role_id(template)]["Properties"]
    assert rendered(role["RoleName"]) == name and role["Path"] == "/condor-annex/"
    assert role.get("ManagedPolicyArns") is None
    synthesized_setup.assertions.has_resource_properties(
        "AWS::IAM::InstanceProfile",
        Match.object_like({"Path": "/condor-annex/", "Roles": [{"Ref": role_id(template)}]}),
    )
    profile = template["Resources"][only(template, "AWS::IAM::InstanceProfile")]["Properties"]
    assert rendered(profile["InstanceProfileName"]) == name
