"""Fidelity fix: stack deletion removes managed policies, so the roles they are attached to go too."""

from __future__ import annotations

import json

TEMPLATE = {
    "Resources": {
        "FleetRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "spotfleet.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            },
        },
        "FleetPolicy": {
            "Type": "AWS::IAM::ManagedPolicy",
            "Properties": {
                "Roles": [{"Ref": "FleetRole"}],
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": "ec2:DescribeImages", "Resource": "*"}
                    ],
                },
            },
        },
    }
}


def test_deleting_a_stack_deletes_its_managed_policy_and_the_role_it_was_attached_to(aws) -> None:
    """AWS::IAM::ManagedPolicy is detached and deleted on stack deletion (CloudFormation User
    Guide, "AWS::IAM::ManagedPolicy"); the role then deletes without DeleteConflict."""
    cfn, iam = aws.client("cloudformation"), aws.client("iam")
    cfn.create_stack(StackName="policy-stack", TemplateBody=json.dumps(TEMPLATE))
    assert len(iam.list_policies(Scope="Local")["Policies"]) == 1
    assert len(iam.list_roles()["Roles"]) == 1

    cfn.delete_stack(StackName="policy-stack")

    assert iam.list_policies(Scope="Local")["Policies"] == []
    assert iam.list_roles()["Roles"] == []
    statuses = [s["StackStatus"] for s in cfn.list_stacks()["StackSummaries"]]
    assert statuses == ["DELETE_COMPLETE"]
