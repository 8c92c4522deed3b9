"""Fidelity fixes: change sets as `cdk deploy` uses them to update a stack.

AWS CloudFormation API Reference, "DescribeChangeSet", "DeleteChangeSet", "ExecuteChangeSet",
"ListChangeSets", and the User Guide's "Update CloudFormation stacks using change sets".
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

# The name `cdk deploy` gives every change set it makes, in every stack it deploys.
CDK_CHANGE_SET = "cdk-deploy-change-set"
NO_CHANGES = (
    "The submitted information didn't contain changes. "
    "Submit different information to create a change set."
)
TEMPLATE: dict[str, Any] = {
    "Parameters": {"Label": {"Type": "String", "Default": "first"}},
    "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
    "Outputs": {"Label": {"Value": {"Ref": "Label"}}},
}


def _error(info: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    response: Any = info.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


def _stack_via_change_set(cfn: Any, stack: str, label: str = "first") -> None:
    cfn.create_change_set(
        StackName=stack,
        ChangeSetName=CDK_CHANGE_SET,
        ChangeSetType="CREATE",
        TemplateBody=json.dumps(TEMPLATE),
        Parameters=[{"ParameterKey": "Label", "ParameterValue": label}],
    )
    cfn.execute_change_set(StackName=stack, ChangeSetName=CDK_CHANGE_SET)


def _update(cfn: Any, stack: str, label: str, name: str = CDK_CHANGE_SET) -> dict[str, Any]:
    created: dict[str, Any] = cfn.create_change_set(
        StackName=stack,
        ChangeSetName=name,
        ChangeSetType="UPDATE",
        TemplateBody=json.dumps(TEMPLATE),
        Parameters=[{"ParameterKey": "Label", "ParameterValue": label}],
    )
    return created


def test_a_change_set_name_is_looked_up_in_its_own_stack_and_a_missing_one_is_not_found(aws):
    """DescribeChangeSet: a name is resolved within StackName; an unknown change set is
    ChangeSetNotFound (HTTP 404), the answer `cdk deploy` waits for after deleting its old change
    set. DeleteChangeSet of a change set the stack does not have succeeds ("DeleteChangeSet"
    has no not-found error; the CDK CLI relies on it before every update)."""
    cfn = aws.client("cloudformation")
    _stack_via_change_set(cfn, "one")
    _stack_via_change_set(cfn, "two")
    pending = _update(cfn, "two", "second")

    cfn.delete_change_set(StackName="one", ChangeSetName=CDK_CHANGE_SET)

    with pytest.raises(ClientError) as info:
        cfn.describe_change_set(StackName="one", ChangeSetName=CDK_CHANGE_SET)
    assert _error(info) == (
        "ChangeSetNotFound",
        404,
        f"ChangeSet [{CDK_CHANGE_SET}] does not exist",
    )
    # Stack "two"'s change set of the same name was neither found for "one" nor deleted.
    kept = cfn.describe_change_set(StackName="two", ChangeSetName=CDK_CHANGE_SET)
    assert kept["ChangeSetId"] == pending["Id"]
    assert kept["Status"] == "CREATE_COMPLETE"
    assert [s["ChangeSetId"] for s in cfn.list_change_sets(StackName="two")["Summaries"]] == [
        pending["Id"]
    ]
    assert cfn.list_change_sets(StackName="one")["Summaries"] == []


def test_change_set_calls_naming_a_missing_stack_are_validation_errors(aws):
    cfn = aws.client("cloudformation")
    for call in (cfn.delete_change_set, cfn.describe_change_set, cfn.execute_change_set):
        with pytest.raises(ClientError) as info:
            call(StackName="nowhere", ChangeSetName=CDK_CHANGE_SET)
        assert _error(info) == ("ValidationError", 400, "Stack [nowhere] does not exist")


def test_an_unchanged_submission_makes_a_failed_change_set_that_cannot_run_and_can_be_deleted(
    aws,
):
    """The stack's own template and parameters again: Status FAILED, ExecutionStatus
    UNAVAILABLE, StatusReason "The submitted information didn't contain changes…" (what the CDK
    CLI reads as "no changes"); ExecuteChangeSet refuses it with InvalidChangeSetStatus; the CDK
    then deletes it by ARN."""
    cfn = aws.client("cloudformation")
    _stack_via_change_set(cfn, "same")

    created = _update(cfn, "same", "first")

    described = cfn.describe_change_set(StackName=created["StackId"], ChangeSetName=created["Id"])
    assert (described["Status"], described["ExecutionStatus"]) == ("FAILED", "UNAVAILABLE")
    assert described["StatusReason"] == NO_CHANGES
    with pytest.raises(ClientError) as info:
        cfn.execute_change_set(StackName="same", ChangeSetName=CDK_CHANGE_SET)
    assert _error(info)[:2] == ("InvalidChangeSetStatus", 400)
    cfn.delete_change_set(StackName=created["StackId"], ChangeSetName=created["Id"])
    assert cfn.list_change_sets(StackName="same")["Summaries"] == []


def test_executing_a_change_set_updates_the_stack_and_leaves_no_change_set(aws):
    """ "After you execute a change set, CloudFormation deletes any additional change sets that
    are associated with the stack"; the stack takes the change set's parameters, so submitting
    them again is "no changes"."""
    cfn = aws.client("cloudformation")
    _stack_via_change_set(cfn, "updated")
    _update(cfn, "updated", "second")
    _update(cfn, "updated", "other", name="another-change-set")

    cfn.execute_change_set(StackName="updated", ChangeSetName=CDK_CHANGE_SET)

    (stack,) = cfn.describe_stacks(StackName="updated")["Stacks"]
    assert stack["StackStatus"] == "UPDATE_COMPLETE"
    assert stack["Outputs"] == [{"OutputKey": "Label", "OutputValue": "second"}]
    assert cfn.list_change_sets(StackName="updated")["Summaries"] == []
    again = _update(cfn, "updated", "second")
    assert cfn.describe_change_set(ChangeSetName=again["Id"])["StatusReason"] == NO_CHANGES


def test_use_previous_value_of_an_ssm_parameter_resolves_its_store_key_again(aws):
    """For `AWS::SSM::Parameter::Value<String>` the parameter's value is the Parameter Store
    key (DescribeStacks' ParameterValue; the value is its ResolvedValue), so UsePreviousValue
    reuses the key and the update resolves it anew — what `cdk deploy` does with the CDK's
    BootstrapVersion ("Parameter", API Reference)."""
    cfn, ssm = aws.client("cloudformation"), aws.client("ssm")
    ssm.put_parameter(Name="/cdk-bootstrap/test/version", Value="30", Type="String")
    template: dict[str, Any] = {
        "Parameters": {
            "BootstrapVersion": {
                "Type": "AWS::SSM::Parameter::Value<String>",
                "Default": "/cdk-bootstrap/test/version",
            }
        },
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"Version": {"Value": {"Ref": "BootstrapVersion"}}},
    }
    cfn.create_change_set(
        StackName="boot", ChangeSetName=CDK_CHANGE_SET, ChangeSetType="CREATE",
        TemplateBody=json.dumps(template),
    )  # fmt: skip
    cfn.execute_change_set(StackName="boot", ChangeSetName=CDK_CHANGE_SET)
    ssm.put_parameter(Name="/cdk-bootstrap/test/version", Value="31", Overwrite=True)
    template["Outputs"]["Extra"] = {"Value": "updated"}

    cfn.create_change_set(
        StackName="boot", ChangeSetName=CDK_CHANGE_SET, ChangeSetType="UPDATE",
        TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": "BootstrapVersion", "UsePreviousValue": True}],
    )  # fmt: skip
    cfn.execute_change_set(StackName="boot", ChangeSetName=CDK_CHANGE_SET)

    (stack,) = cfn.describe_stacks(StackName="boot")["Stacks"]
    assert stack["StackStatus"] == "UPDATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs == {"Version": "31", "Extra": "updated"}


def _group_template(vpc_id: str, cidrs: list[str], description: str = "annex") -> str:
    return json.dumps(
        {
            "Resources": {
                "Group": {
                    "Type": "AWS::EC2::SecurityGroup",
                    "Properties": {
                        "GroupDescription": description,
                        "VpcId": vpc_id,
                        "SecurityGroupIngress": [
                            {"IpProtocol": "tcp", "FromPort": 9618, "ToPort": 9618, "CidrIp": c}
                            for c in cidrs
                        ],
                    },
                }
            },
            "Outputs": {"GroupId": {"Value": {"Ref": "Group"}}},
        }
    )


def test_changing_only_a_security_groups_ingress_updates_the_group_in_place(aws):
    """AWS::EC2::SecurityGroup: SecurityGroupIngress updates with "No interruption" (the group
    and its ID stay, instances in it keep running); GroupDescription requires replacement."""
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    vpc_id = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0][
        "VpcId"
    ]

    def deploy(change_set_type: str, template: str) -> str:
        cfn.create_change_set(
            StackName="sg", ChangeSetName=CDK_CHANGE_SET, ChangeSetType=change_set_type,
            TemplateBody=template,
        )  # fmt: skip
        cfn.execute_change_set(StackName="sg", ChangeSetName=CDK_CHANGE_SET)
        (stack,) = cfn.describe_stacks(StackName="sg")["Stacks"]
        return str(stack["Outputs"][0]["OutputValue"])

    def ingress(group_id: str) -> list[str]:
        (group,) = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
        return sorted(r["CidrIp"] for p in group["IpPermissions"] for r in p["IpRanges"])

    first = deploy("CREATE", _group_template(vpc_id, ["198.51.100.0/24"]))
    assert ingress(first) == ["198.51.100.0/24"]

    same = deploy("UPDATE", _group_template(vpc_id, ["203.0.113.0/24", "192.0.2.0/24"]))
    assert same == first
    assert ingress(first) == ["192.0.2.0/24", "203.0.113.0/24"]

    replaced = deploy("UPDATE", _group_template(vpc_id, ["192.0.2.0/24"], description="other"))
    assert replaced != first
    assert ingress(replaced) == ["192.0.2.0/24"]


def test_a_vpc_id_parameter_naming_no_vpc_is_refused_before_anything_changes(aws):
    """AWS-specific parameter types are validated against the account when the change set is
    created ("CloudFormation-supplied parameter types"): a missing VPC is ValidationError
    "Parameter validation failed: …", and the stack keeps its group and rules."""
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    vpc_id = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0][
        "VpcId"
    ]
    template = json.loads(_group_template("unused", ["198.51.100.0/24"]))
    template["Parameters"] = {"TargetVpcId": {"Type": "AWS::EC2::VPC::Id", "Default": vpc_id}}
    template["Resources"]["Group"]["Properties"]["VpcId"] = {"Ref": "TargetVpcId"}
    cfn.create_stack(StackName="in-vpc", TemplateBody=json.dumps(template))
    (group,) = ec2.describe_security_groups(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "description", "Values": ["annex"]},
        ]
    )["SecurityGroups"]

    missing = "vpc-0123456789abcdef0"
    with pytest.raises(ClientError) as info:
        cfn.create_change_set(
            StackName="in-vpc", ChangeSetName=CDK_CHANGE_SET, ChangeSetType="UPDATE",
            TemplateBody=json.dumps(template),
            Parameters=[{"ParameterKey": "TargetVpcId", "ParameterValue": missing}],
        )  # fmt: skip

    assert _error(info) == (
        "ValidationError",
        400,
        f"Parameter validation failed: parameter value {missing} for parameter name "
        "TargetVpcId does not exist",
    )
    assert cfn.list_change_sets(StackName="in-vpc")["Summaries"] == []
    (kept,) = ec2.describe_security_groups(GroupIds=[group["GroupId"]])["SecurityGroups"]
    assert kept["IpPermissions"] == group["IpPermissions"]


def test_a_templates_ipv6_ingress_range_is_admitted_on_create_and_update(aws):
    """ "AWS::EC2::SecurityGroup Ingress": a rule's source may be `CidrIpv6` (how the CDK writes an
    IPv6 pool range); the group admits it, and an update replaces it in place."""
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    vpc_id = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0][
        "VpcId"
    ]

    def template(ipv6: str) -> str:
        document = json.loads(_group_template(vpc_id, ["198.51.100.0/24"]))
        document["Resources"]["Group"]["Properties"]["SecurityGroupIngress"].append(
            {"IpProtocol": "tcp", "FromPort": 9618, "ToPort": 9618, "CidrIpv6": ipv6}
        )
        return json.dumps(document)

    def ranges(group_id: str) -> tuple[list[str], list[str]]:
        (group,) = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
        permissions = [p for p in group["IpPermissions"] if p.get("FromPort") == 9618]
        return (
            sorted(r["CidrIp"] for p in permissions for r in p.get("IpRanges", [])),
            sorted(r["CidrIpv6"] for p in permissions for r in p.get("Ipv6Ranges", [])),
        )

    cfn.create_stack(StackName="v6", TemplateBody=template("2001:db8::/32"))
    (resource,) = cfn.describe_stack_resources(StackName="v6")["StackResources"]
    group_id = resource["PhysicalResourceId"]
    assert ranges(group_id) == (["198.51.100.0/24"], ["2001:db8::/32"])

    cfn.create_change_set(
        StackName="v6", ChangeSetName=CDK_CHANGE_SET, ChangeSetType="UPDATE",
        TemplateBody=template("2001:db8:1::/48"),
    )  # fmt: skip
    cfn.execute_change_set(StackName="v6", ChangeSetName=CDK_CHANGE_SET)

    assert ranges(group_id) == (["198.51.100.0/24"], ["2001:db8:1::/48"])


def test_an_update_whose_resource_fails_rolls_back_to_the_previous_stack(aws):
    """ExecuteChangeSet succeeds; the failing resource sends the stack through
    UPDATE_ROLLBACK_IN_PROGRESS (reason: the failure) to UPDATE_ROLLBACK_COMPLETE with the
    previous resources and outputs ("Stack status codes"); a corrected update then works."""
    cfn, ec2 = aws.client("cloudformation"), aws.client("ec2")
    vpc_id = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0][
        "VpcId"
    ]
    good = _group_template(vpc_id, ["198.51.100.0/24"])
    cfn.create_stack(StackName="rolls-back", TemplateBody=good)
    (before,) = cfn.describe_stacks(StackName="rolls-back")["Stacks"]
    bad = json.loads(good)
    missing_group = "sg-0000000000000000f"  # a rule for a group that does not exist fails
    bad["Resources"]["Rule"] = {
        "Type": "AWS::EC2::SecurityGroupIngress",
        "Properties": {
            "GroupId": missing_group, "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
            "CidrIp": "192.0.2.0/24",
        },
    }  # fmt: skip
    bad["Outputs"]["Extra"] = {"Value": "never"}
    cfn.create_change_set(
        StackName="rolls-back", ChangeSetName=CDK_CHANGE_SET, ChangeSetType="UPDATE",
        TemplateBody=json.dumps(bad),
    )  # fmt: skip

    cfn.execute_change_set(StackName="rolls-back", ChangeSetName=CDK_CHANGE_SET)

    (after,) = cfn.describe_stacks(StackName="rolls-back")["Stacks"]
    assert after["StackStatus"] == "UPDATE_ROLLBACK_COMPLETE"
    assert after["Outputs"] == before["Outputs"]
    events = cfn.describe_stack_events(StackName="rolls-back")["StackEvents"]
    [rolling_back] = [e for e in events if e["ResourceStatus"] == "UPDATE_ROLLBACK_IN_PROGRESS"]
    assert missing_group in rolling_back["ResourceStatusReason"]
    assert cfn.list_change_sets(StackName="rolls-back")["Summaries"] == []

    fixed = json.loads(good)
    fixed["Outputs"]["Extra"] = {"Value": "fixed"}
    cfn.create_change_set(
        StackName="rolls-back", ChangeSetName=CDK_CHANGE_SET, ChangeSetType="UPDATE",
        TemplateBody=json.dumps(fixed),
    )  # fmt: skip
    cfn.execute_change_set(StackName="rolls-back", ChangeSetName=CDK_CHANGE_SET)
    (final,) = cfn.describe_stacks(StackName="rolls-back")["Stacks"]
    assert final["StackStatus"] == "UPDATE_COMPLETE"
    assert {"OutputKey": "Extra", "OutputValue": "fixed"} in final["Outputs"]
