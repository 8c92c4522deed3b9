"""The local AWS's EC2 instance behaviour the product relies on, over HTTP with boto3."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from condor_annex.contract import new_client_token

AMI = "ami-12345678"


def _instance_profile_arn(aws, name: str = "annex-profile") -> str:
    iam = aws.client("iam")
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"}))
    iam.create_instance_profile(InstanceProfileName=name)
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return str(iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Arn"])


def _ids(response) -> list[str]:
    return sorted(i["InstanceId"] for r in response["Reservations"] for i in r["Instances"])


def test_run_instances_retry_with_same_client_token_returns_the_original_instances(aws):
    """Same ClientToken + same parameters = the same result, nothing new launched.

    "Ensure idempotency in Amazon EC2 API requests":
    https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html
    """
    ec2 = aws.client("ec2")
    token = new_client_token("burst")
    first = ec2.run_instances(ImageId=AMI, MinCount=2, MaxCount=2, ClientToken=token)
    retry = ec2.run_instances(ImageId=AMI, MinCount=2, MaxCount=2, ClientToken=token)

    assert retry["ReservationId"] == first["ReservationId"]
    assert [i["InstanceId"] for i in retry["Instances"]] == [
        i["InstanceId"] for i in first["Instances"]
    ]
    assert len(_ids(ec2.describe_instances())) == 2


def test_run_instances_same_client_token_different_parameters_is_a_mismatch(aws):
    """Same ClientToken + different parameters = HTTP 400 IdempotentParameterMismatch.

    "Ensure idempotency in Amazon EC2 API requests":
    https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html
    """
    ec2 = aws.client("ec2")
    token = new_client_token("burst")
    ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, ClientToken=token)

    with pytest.raises(ClientError) as raised:
        ec2.run_instances(ImageId=AMI, MinCount=3, MaxCount=3, ClientToken=token)

    assert raised.value.response["Error"]["Code"] == "IdempotentParameterMismatch"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert len(_ids(ec2.describe_instances())) == 1


def test_run_instances_gives_every_instance_the_instance_profile(aws):
    """Every instance of a RunInstances request is launched with its IamInstanceProfile.

    "RunInstances" (IamInstanceProfile): https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RunInstances.html
    """
    arn = _instance_profile_arn(aws)
    ec2 = aws.client("ec2")
    ec2.run_instances(ImageId=AMI, MinCount=3, MaxCount=3, IamInstanceProfile={"Arn": arn})

    reservations = ec2.describe_instances()["Reservations"]
    profiles = [
        i.get("IamInstanceProfile", {}).get("Arn") for r in reservations for i in r["Instances"]
    ]
    assert profiles == [arn, arn, arn]


def test_describe_instances_filters_by_client_token_with_wildcard(aws):
    """`client-token` filter, with `*` wildcards ("List and filter your resources",
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_Filtering.html; filter list in
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstances.html)."""
    ec2 = aws.client("ec2")
    mine = ec2.run_instances(
        ImageId=AMI, MinCount=2, MaxCount=2, ClientToken=new_client_token("big")
    )
    ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, ClientToken=new_client_token("big_data"))
    ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)

    exact = mine["Instances"][0]["ClientToken"]
    by_exact = ec2.describe_instances(Filters=[{"Name": "client-token", "Values": [exact]}])
    by_prefix = ec2.describe_instances(Filters=[{"Name": "client-token", "Values": ["big_*"]}])

    assert _ids(by_exact) == sorted(i["InstanceId"] for i in mine["Instances"])
    assert len(_ids(by_prefix)) == 3  # `big_*` also matches big_data's token: callers confirm


def test_describe_instances_filters_by_instance_profile_arn(aws):
    """`iam-instance-profile.arn` filter (DescribeInstances filter list)."""
    arn = _instance_profile_arn(aws)
    ec2 = aws.client("ec2")
    with_profile = ec2.run_instances(
        ImageId=AMI, MinCount=2, MaxCount=2, IamInstanceProfile={"Arn": arn}
    )
    ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)

    found = ec2.describe_instances(Filters=[{"Name": "iam-instance-profile.arn", "Values": [arn]}])

    assert _ids(found) == sorted(i["InstanceId"] for i in with_profile["Instances"])


def test_describe_instances_filters_by_tags_state_and_id(aws):
    """`tag:<key>`, `tag-key`, `instance-state-name`, `instance-id` filters."""
    ec2 = aws.client("ec2")
    tagged = ec2.run_instances(
        ImageId=AMI,
        MinCount=2,
        MaxCount=2,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "htcondor:AnnexName", "Value": "a1"}]}
        ],
    )["Instances"]
    ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)
    ec2.terminate_instances(InstanceIds=[tagged[1]["InstanceId"]])

    def ids(name: str, values: list[str]) -> list[str]:
        return _ids(ec2.describe_instances(Filters=[{"Name": name, "Values": values}]))

    tagged_ids = sorted(i["InstanceId"] for i in tagged)
    assert ids("tag:htcondor:AnnexName", ["a1"]) == tagged_ids
    assert ids("tag-key", ["htcondor:AnnexName"]) == tagged_ids
    assert ids("instance-id", [tagged[0]["InstanceId"]]) == [tagged[0]["InstanceId"]]
    running_tagged = ec2.describe_instances(
        Filters=[
            {"Name": "tag:htcondor:AnnexName", "Values": ["a1"]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    assert _ids(running_tagged) == [tagged[0]["InstanceId"]]


def test_describe_instances_paginates_with_max_results(aws):
    """MaxResults/NextToken pagination ("Pagination", Amazon EC2 API Reference:
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/Query-Requests.html#api-pagination)."""
    ec2 = aws.client("ec2")
    launched = sorted(
        ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        for _ in range(7)
    )

    pages = list(ec2.get_paginator("describe_instances").paginate(PaginationConfig={"PageSize": 5}))

    assert len(pages) == 2
    assert sorted(i for page in pages for i in _ids(page)) == launched


def test_dry_runs_create_nothing_with_the_engine_off(aws):
    """ "DryRun" (RunInstances, CreateLaunchTemplate, RequestSpotFleet, CreateFleet API
    reference): checks the permissions without making the request; DryRunOperation when
    allowed. moto answers when the IAM engine is off, and launched before the fix."""
    aws.enforce_iam(False)
    ec2 = aws.client("ec2")
    template = {"ImageId": AMI, "InstanceType": "m5.large"}
    calls = {
        "run_instances": lambda: ec2.run_instances(
            DryRun=True, ImageId=AMI, MinCount=1, MaxCount=1
        ),
        "create_launch_template": lambda: ec2.create_launch_template(
            DryRun=True, LaunchTemplateName="probe", LaunchTemplateData=template
        ),
        "request_spot_fleet": lambda: ec2.request_spot_fleet(
            DryRun=True,
            SpotFleetRequestConfig={
                "IamFleetRole": "arn:aws:iam::123456789012:role/fleet",
                "TargetCapacity": 1,
                "LaunchSpecifications": [template],
            },
        ),
        "create_fleet": lambda: ec2.create_fleet(
            DryRun=True,
            Type="maintain",
            TargetCapacitySpecification={
                "TotalTargetCapacity": 1,
                "DefaultTargetCapacityType": "spot",
            },
            LaunchTemplateConfigs=[
                {"LaunchTemplateSpecification": {"LaunchTemplateName": "probe", "Version": "1"}}
            ],
        ),
    }
    codes = {}
    for name, call in calls.items():
        with pytest.raises(ClientError) as answer:
            call()
        codes[name] = answer.value.response["Error"]["Code"]

    assert set(codes.values()) == {"DryRunOperation"}, codes
    assert _ids(ec2.describe_instances()) == []
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []
    assert ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"] == []
    assert ec2.describe_fleets()["Fleets"] == []
