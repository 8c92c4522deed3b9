"""CloudFormation and EventBridge Scheduler behaviour the product relies on, over HTTP."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest

TEMPLATE: dict[str, Any] = {
    "Resources": {
        "Queue": {"Type": "AWS::SQS::Queue"},
        "Param": {"Type": "AWS::SSM::Parameter", "Properties": {"Type": "String", "Value": "v1"}},
    },
    "Outputs": {
        "QueueUrl": {"Value": {"Ref": "Queue"}},
        "ParamName": {"Value": {"Ref": "Param"}},
    },
}
LAMBDA_ROLE_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def _outputs(cfn, stack: str) -> dict[str, str]:
    found = cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])
    return {o["OutputKey"]: o["OutputValue"] for o in found}


def _deploy_with_change_set(cfn, stack: str, change_set_type: str, **template) -> None:
    cfn.create_change_set(
        StackName=stack, ChangeSetName="cs1", ChangeSetType=change_set_type, **template
    )
    cfn.execute_change_set(StackName=stack, ChangeSetName="cs1")


def test_stack_created_with_a_change_set_reports_outputs(aws):
    """Executing a change set makes its template, Outputs included, the stack's ("Update
    CloudFormation stacks using change sets",
    https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/using-cfn-updating-stacks-changesets.html)."""
    cfn = aws.client("cloudformation")

    _deploy_with_change_set(cfn, "cs-stack", "CREATE", TemplateBody=json.dumps(TEMPLATE))

    outputs = _outputs(cfn, "cs-stack")
    assert outputs["QueueUrl"].endswith("Queue") or "cs-stack-Queue" in outputs["QueueUrl"]
    assert outputs["ParamName"]
    assert (
        cfn.describe_stacks(StackName="cs-stack")["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
    )


def test_stack_updated_with_a_change_set_reports_new_outputs(aws):
    cfn = aws.client("cloudformation")
    _deploy_with_change_set(cfn, "cs-update", "CREATE", TemplateBody=json.dumps(TEMPLATE))
    updated = {**TEMPLATE, "Outputs": {**TEMPLATE["Outputs"], "Extra": {"Value": "literal"}}}

    cfn.create_change_set(
        StackName="cs-update",
        ChangeSetName="cs2",
        ChangeSetType="UPDATE",
        TemplateBody=json.dumps(updated),
    )
    cfn.execute_change_set(StackName="cs-update", ChangeSetName="cs2")

    assert _outputs(cfn, "cs-update")["Extra"] == "literal"


def test_ssm_parameter_without_name_gets_a_generated_name(aws):
    """ "If you don't specify a name, AWS CloudFormation generates a unique physical ID"
    ("AWS::SSM::Parameter",
    https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-ssm-parameter.html)."""
    cfn, ssm = aws.client("cloudformation"), aws.client("ssm")
    cfn.create_stack(StackName="ssm-stack", TemplateBody=json.dumps(TEMPLATE))

    name = _outputs(cfn, "ssm-stack")["ParamName"]

    assert ssm.get_parameter(Name=name)["Parameter"]["Value"] == "v1"


def test_no_value_in_a_list_removes_the_element(aws):
    """ "AWS::NoValue: Removes the corresponding resource property when specified as a return
    value in the Fn::If intrinsic function" (CloudFormation User Guide, "Pseudo parameters
    reference"); in a list it removes the element, as the CDK bootstrap template's role trust
    policies rely on (a `null` statement would make the policy unevaluable)."""
    statement = {
        "Effect": "Allow",
        "Principal": {"AWS": "123456789012"},
        "Action": "sts:AssumeRole",
    }
    template = {
        "Conditions": {"Never": {"Fn::Equals": ["a", "b"]}},
        "Resources": {
            "Role": {
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "RoleName": "no-value-role",
                    "AssumeRolePolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            statement,
                            {"Fn::If": ["Never", statement, {"Ref": "AWS::NoValue"}]},
                            {"Ref": "AWS::NoValue"},
                        ],
                    },
                },
            }
        },
    }
    aws.client("cloudformation").create_stack(
        StackName="no-value-stack", TemplateBody=json.dumps(template)
    )

    role = aws.client("iam").get_role(RoleName="no-value-role")["Role"]

    assert role["AssumeRolePolicyDocument"]["Statement"] == [statement]


@pytest.mark.parametrize(
    "url_form",
    [
        "http://127.0.0.1:{port}/{bucket}/{key}",
        "http://localhost:{port}/{bucket}/{key}",
        "https://{bucket}.s3.us-east-1.amazonaws.com/{key}",
        "https://{bucket}.s3.amazonaws.com/{key}",
        "https://s3.us-east-1.amazonaws.com/{bucket}/{key}",
        "https://s3.amazonaws.com/{bucket}/{key}",
        "s3://{bucket}/{key}",
    ],
)
def test_template_url_of_any_s3_form_is_resolved_against_local_s3(aws, url_form):
    """TemplateURL: "The URL of a file that contains the template body ... located in an Amazon S3
    bucket" ("CreateStack",
    https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_CreateStack.html)."""
    s3, cfn = aws.client("s3"), aws.client("cloudformation")
    s3.create_bucket(Bucket="cdk-assets-bucket")
    s3.put_object(
        Bucket="cdk-assets-bucket", Key="templates/abc123.json", Body=json.dumps(TEMPLATE).encode()
    )
    url = url_form.format(port=aws.port, bucket="cdk-assets-bucket", key="templates/abc123.json")

    _deploy_with_change_set(cfn, "url-stack", "CREATE", TemplateURL=url)

    assert set(_outputs(cfn, "url-stack")) == {"QueueUrl", "ParamName"}


def test_lambda_function_in_a_stack_is_created_from_its_s3_code(aws):
    """A stack with AWS::Lambda::Function completes when the code object exists (moto cannot run
    the code here: no Docker; only its creation is needed)."""
    s3, iam, cfn = aws.client("s3"), aws.client("iam"), aws.client("cloudformation")
    s3.create_bucket(Bucket="code-bucket")
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
    s3.put_object(Bucket="code-bucket", Key="lease.zip", Body=code.getvalue())
    role = iam.create_role(
        RoleName="lease-fn", AssumeRolePolicyDocument=json.dumps(LAMBDA_ROLE_TRUST)
    )["Role"]
    template = {
        "Resources": {
            "Fn": {
                "Type": "AWS::Lambda::Function",
                "Properties": {
                    "Runtime": "python3.13",
                    "Handler": "handler.handler",
                    "Role": role["Arn"],
                    "Code": {"S3Bucket": "code-bucket", "S3Key": "lease.zip"},
                },
            }
        },
        "Outputs": {"FnArn": {"Value": {"Fn::GetAtt": ["Fn", "Arn"]}}},
    }

    _deploy_with_change_set(cfn, "fn-stack", "CREATE", TemplateBody=json.dumps(template))

    arn = _outputs(cfn, "fn-stack")["FnArn"]
    assert (
        aws.client("lambda").get_function(FunctionName=arn)["Configuration"]["Runtime"]
        == "python3.13"
    )


def test_one_time_schedule_with_action_after_completion_round_trips(aws):
    """EventBridge Scheduler one-time `at(...)` schedules with ActionAfterCompletion=DELETE
    ("Schedule types on EventBridge Scheduler",
    https://docs.aws.amazon.com/scheduler/latest/UserGuide/schedule-types.html)."""
    scheduler = aws.client("scheduler")
    target = {
        "Arn": "arn:aws:lambda:us-east-1:123456789012:function:lease",
        "RoleArn": "arn:aws:iam::123456789012:role/scheduler",
        "Input": json.dumps({"annex_name": "a1"}),
    }
    common = {
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "Target": target,
        "ActionAfterCompletion": "DELETE",
    }

    scheduler.create_schedule(
        Name="lease-a1", ScheduleExpression="at(2030-01-01T00:00:00)", **common
    )
    first = scheduler.get_schedule(Name="lease-a1")
    scheduler.update_schedule(
        Name="lease-a1", ScheduleExpression="at(2030-01-02T00:00:00)", **common
    )
    moved = scheduler.get_schedule(Name="lease-a1")
    scheduler.delete_schedule(Name="lease-a1")

    assert first["ActionAfterCompletion"] == "DELETE"
    assert json.loads(first["Target"]["Input"]) == {"annex_name": "a1"}
    assert moved["ScheduleExpression"] == "at(2030-01-02T00:00:00)"
    with pytest.raises(scheduler.exceptions.ResourceNotFoundException):
        scheduler.get_schedule(Name="lease-a1")
