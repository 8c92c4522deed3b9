"""The local AWS's IAM engine (annex_sandbox/authz) decides requests as AWS does.

Each case cites the Service Authorization Reference (SAR, "Actions, resources, and condition keys
for <service>") for what the action authorizes, and checks both outcomes with real signed
requests: an IAM user holding exactly the statements under test.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from typing import Any

import pytest
from botocore.exceptions import ClientError

from annex_sandbox.authz.mapping import MAPPINGS, action_details, mapped_action
from tests.fixtures.aws import STOCK_IMAGE_ID

ACCOUNT = "123456789012"
TAG = "htcondor:AnnexName"


def _user(aws: Any, statements: list[dict[str, Any]], name: str = "engine-user") -> dict[str, str]:
    iam = aws.client("iam")
    iam.create_user(UserName=name)
    iam.put_user_policy(
        UserName=name,
        PolicyName="under-test",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
    )
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {
        "aws_access_key_id": key["AccessKeyId"],
        "aws_secret_access_key": key["SecretAccessKey"],
    }


def _error(call: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as raised:
        call()
    error: dict[str, Any] = raised.value.response["Error"]
    return error


def _ami(aws: Any) -> str:
    return STOCK_IMAGE_ID


LAUNCH_RESOURCES = [
    "arn:aws:ec2:*::image/*",
    *(
        f"arn:aws:ec2:*:*:{kind}/*"
        for kind in ("volume", "subnet", "network-interface", "security-group")
    ),
]
TAGGED_LAUNCH = [
    {"Effect": "Allow", "Action": "ec2:RunInstances", "Resource": LAUNCH_RESOURCES},
    {
        "Effect": "Allow",
        "Action": "ec2:RunInstances",
        "Resource": "arn:aws:ec2:*:*:instance/*",
        "Condition": {"Null": {f"aws:RequestTag/{TAG}": "false"}},
    },
    {
        "Effect": "Allow",
        "Action": "ec2:CreateTags",
        "Resource": "*",
        "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}},
    },
]
ANNEX_TAGS = [{"ResourceType": "instance", "Tags": [{"Key": TAG, "Value": "a"}]}]


def test_run_instances_needs_the_request_tag_the_policy_requires(aws):
    """SAR ec2:RunInstances: resource `instance` with condition key aws:RequestTag/${TagKey};
    a denial is UnauthorizedOperation with an encoded authorization failure message."""
    ec2 = aws.client("ec2", **_user(aws, TAGGED_LAUNCH))
    ami = _ami(aws)

    ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, TagSpecifications=ANNEX_TAGS)
    error = _error(lambda: ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1))

    assert error["Code"] == "UnauthorizedOperation"
    assert (
        "ec2:RunInstances on resource: arn:aws:ec2:us-east-1:123456789012:instance/*"
        in (error["Message"])
    )
    encoded = error["Message"].rsplit("Encoded authorization failure message: ", 1)[1]
    decoded = json.loads(base64.urlsafe_b64decode(encoded))
    assert [r["action"] for r in decoded["refused"]] == ["ec2:RunInstances"]


def test_dry_run_answers_as_ec2_does(aws):
    """EC2 API "DryRun": DryRunOperation when the call would be authorized, else
    UnauthorizedOperation, and nothing is launched either way."""
    ec2 = aws.client("ec2", **_user(aws, TAGGED_LAUNCH))
    ami = _ami(aws)

    allowed = _error(
        lambda: ec2.run_instances(
            ImageId=ami, MinCount=1, MaxCount=1, TagSpecifications=ANNEX_TAGS, DryRun=True
        )
    )
    refused = _error(lambda: ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, DryRun=True))

    assert (allowed["Code"], refused["Code"]) == ("DryRunOperation", "UnauthorizedOperation")
    assert aws.client("ec2").describe_instances()["Reservations"] == []


def test_run_instances_checks_metadata_options_and_pass_role(aws):
    """SAR ec2:RunInstances: `instance` carries ec2:MetadataHttpTokens and ec2:InstanceProfile;
    launching with a profile passes its role (iam:PassRole, iam:PassedToService)."""
    iam = aws.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = iam.create_role(RoleName="inst", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    profile = iam.create_instance_profile(InstanceProfileName="inst")["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName="inst", RoleName="inst")
    guarded = [
        *TAGGED_LAUNCH[:1],
        TAGGED_LAUNCH[2],
        {
            "Effect": "Allow",
            "Action": "ec2:RunInstances",
            "Resource": "arn:aws:ec2:*:*:instance/*",
            "Condition": {
                "StringEquals": {"ec2:MetadataHttpTokens": "required"},
                "ArnEquals": {"ec2:InstanceProfile": profile["Arn"]},
            },
        },
    ]
    without_pass_role = aws.client("ec2", **_user(aws, guarded, "no-pass"))
    with_pass_role = aws.client(
        "ec2",
        **_user(
            aws,
            [
                *guarded,
                {
                    "Effect": "Allow",
                    "Action": "iam:PassRole",
                    "Resource": role["Arn"],
                    "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
                },
            ],
            "may-pass",
        ),
    )
    launch = {
        "ImageId": _ami(aws),
        "MinCount": 1,
        "MaxCount": 1,
        "IamInstanceProfile": {"Arn": profile["Arn"]},
        "MetadataOptions": {"HttpTokens": "required"},
    }

    assert "iam:PassRole" in _error(lambda: without_pass_role.run_instances(**launch))["Message"]
    with_pass_role.run_instances(**launch)
    imdsv1 = {**launch, "MetadataOptions": {"HttpTokens": "optional"}}
    assert _error(lambda: with_pass_role.run_instances(**imdsv1))["Code"] == (
        "UnauthorizedOperation"
    )


def test_terminate_instances_checks_the_current_resource_tags(aws):
    """SAR ec2:TerminateInstances: resource `instance` with aws:ResourceTag/${TagKey}."""
    root = aws.client("ec2")
    ami = _ami(aws)
    tagged = root.run_instances(ImageId=ami, MinCount=1, MaxCount=1, TagSpecifications=ANNEX_TAGS)
    other = root.run_instances(ImageId=ami, MinCount=1, MaxCount=1)
    ec2 = aws.client(
        "ec2",
        **_user(
            aws,
            [
                {
                    "Effect": "Allow",
                    "Action": "ec2:TerminateInstances",
                    "Resource": "*",
                    "Condition": {"Null": {f"aws:ResourceTag/{TAG}": "false"}},
                }
            ],
        ),
    )

    error = _error(
        lambda: ec2.terminate_instances(InstanceIds=[other["Instances"][0]["InstanceId"]])
    )
    ec2.terminate_instances(InstanceIds=[tagged["Instances"][0]["InstanceId"]])

    assert error["Code"] == "UnauthorizedOperation"


def test_request_spot_fleet_authorizes_its_launch_template(aws):
    """SAR ec2:RequestSpotFleet: besides `spot-fleet-request` (required) it authorizes the
    `launch-template`, `subnet`, `image`, `security-group` and `key-pair` the request names."""
    root = aws.client("ec2")
    template = root.create_launch_template(
        LaunchTemplateName="lt", LaunchTemplateData={"ImageId": _ami(aws)}
    )["LaunchTemplate"]
    fleet_only = [
        {
            "Effect": "Allow",
            "Action": "ec2:RequestSpotFleet",
            "Resource": "arn:aws:ec2:*:*:spot-fleet-request/*",
        }
    ]
    ec2 = aws.client("ec2", **_user(aws, fleet_only))
    config = {
        "IamFleetRole": f"arn:aws:iam::{ACCOUNT}:role/fleet",
        "TargetCapacity": 1,
        "LaunchTemplateConfigs": [
            {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateId": template["LaunchTemplateId"],
                    "Version": "$Latest",
                }
            }
        ],
    }

    error = _error(lambda: ec2.request_spot_fleet(SpotFleetRequestConfig=config))

    assert f"launch-template/{template['LaunchTemplateId']}" in error["Message"]


def _fleet_request(template_id: str, fleet_type: str) -> dict[str, Any]:
    return {
        "Type": fleet_type,
        "TargetCapacitySpecification": {
            "TotalTargetCapacity": 1,
            "DefaultTargetCapacityType": "on-demand",
        },
        "LaunchTemplateConfigs": [
            {
                "LaunchTemplateSpecification": {"LaunchTemplateId": template_id, "Version": "1"},
                "Overrides": [{"InstanceType": "m5.large"}],
            }
        ],
        "TagSpecifications": [{"ResourceType": "fleet", "Tags": [{"Key": TAG, "Value": "a"}]}],
    }


def test_create_fleet_needs_the_fleet_request_tag_and_its_launch_template(aws):
    """SAR ec2:CreateFleet: `fleet` (required, aws:RequestTag), `instance` (required) and the
    `launch-template`, subnets, image and volumes the launch uses; tagging at creation is
    ec2:CreateTags with ec2:CreateAction=CreateFleet."""
    root = aws.client("ec2")
    template = root.create_launch_template(
        LaunchTemplateName="lt", LaunchTemplateData={"ImageId": _ami(aws)}
    )["LaunchTemplate"]["LaunchTemplateId"]
    fleet_tagged = {
        "Effect": "Allow",
        "Action": "ec2:CreateFleet",
        "Resource": "arn:aws:ec2:*:*:fleet/*",
        "Condition": {"Null": {f"aws:RequestTag/{TAG}": "false"}},
    }
    tag_fleet = {
        "Effect": "Allow",
        "Action": "ec2:CreateTags",
        "Resource": "arn:aws:ec2:*:*:fleet/*",
        "Condition": {"StringEquals": {"ec2:CreateAction": "CreateFleet"}},
    }
    launch_resources = [
        "arn:aws:ec2:*:*:launch-template/*",
        "arn:aws:ec2:*:*:subnet/*",
        "arn:aws:ec2:*::image/*",
        "arn:aws:ec2:*:*:volume/*",
    ]
    without_template = aws.client("ec2", **_user(aws, [fleet_tagged, tag_fleet], "no-lt"))
    without_instance = aws.client(
        "ec2",
        **_user(
            aws,
            [fleet_tagged, tag_fleet,
             {"Effect": "Allow", "Action": "ec2:CreateFleet", "Resource": launch_resources}],
            "no-instance",
        ),
    )  # fmt: skip
    with_template = aws.client(
        "ec2",
        **_user(
            aws,
            [
                fleet_tagged,
                tag_fleet,
                {
                    "Effect": "Allow",
                    "Action": "ec2:CreateFleet",
                    "Resource": [*launch_resources, "arn:aws:ec2:*:*:instance/*"],
                },
            ],
            "with-lt",
        ),
    )
    untagged = _fleet_request(template, "maintain")
    untagged.pop("TagSpecifications")

    refused = _error(lambda: without_template.create_fleet(**_fleet_request(template, "maintain")))
    refused_untagged = _error(lambda: with_template.create_fleet(**untagged))
    refused_instance = _error(
        lambda: without_instance.create_fleet(**_fleet_request(template, "maintain"))
    )
    created = with_template.create_fleet(**_fleet_request(template, "maintain"))

    assert f"launch-template/{template}" in refused["Message"]
    assert "fleet/" in refused_untagged["Message"]
    assert (
        "ec2:CreateFleet on resource: arn:aws:ec2:us-east-1:123456789012:instance/*"
        in (refused_instance["Message"])
    )
    assert created["FleetId"].startswith("fleet-")


def test_instant_create_fleet_launches_with_the_callers_run_instances(aws):
    """An instant fleet launches with the caller's permissions ("EC2 Fleet prerequisites")."""
    root = aws.client("ec2")
    template = root.create_launch_template(
        LaunchTemplateName="lt", LaunchTemplateData={"ImageId": _ami(aws)}
    )["LaunchTemplate"]["LaunchTemplateId"]
    fleet_only = [
        {"Effect": "Allow", "Action": ["ec2:CreateFleet", "ec2:CreateTags"], "Resource": "*"}
    ]
    ec2 = aws.client("ec2", **_user(aws, fleet_only))

    error = _error(lambda: ec2.create_fleet(**_fleet_request(template, "instant")))

    assert "ec2:RunInstances" in error["Message"]


def test_delete_fleets_checks_the_fleets_annex_tag(aws):
    root = aws.client("ec2")
    template = root.create_launch_template(
        LaunchTemplateName="lt", LaunchTemplateData={"ImageId": _ami(aws)}
    )["LaunchTemplate"]["LaunchTemplateId"]
    tagged = root.create_fleet(**_fleet_request(template, "maintain"))["FleetId"]
    untagged_request = _fleet_request(template, "maintain")
    untagged_request.pop("TagSpecifications")
    untagged = root.create_fleet(**untagged_request)["FleetId"]
    ec2 = aws.client(
        "ec2",
        **_user(
            aws,
            [
                {
                    "Effect": "Allow",
                    "Action": "ec2:DeleteFleets",
                    "Resource": "arn:aws:ec2:*:*:fleet/*",
                    "Condition": {"Null": {f"aws:ResourceTag/{TAG}": "false"}},
                }
            ],
        ),
    )

    error = _error(lambda: ec2.delete_fleets(FleetIds=[untagged], TerminateInstances=True))
    deleted = ec2.delete_fleets(FleetIds=[tagged], TerminateInstances=True)

    assert f"fleet/{untagged}" in error["Message"]
    assert [d["FleetId"] for d in deleted["SuccessfulFleetDeletions"]] == [tagged]


def test_s3_object_grants_are_per_key_and_bucket_policy_denies_win(aws):
    """SAR s3:GetObject acts on `object` (arn:aws:s3:::bucket/key); an explicit Deny in the
    bucket policy wins over an identity Allow (IAM policy evaluation logic)."""
    root = aws.client("s3")
    root.create_bucket(Bucket="engine-bucket")
    for key in ("config-a.tar.gz", "other.txt", "secret/x"):
        root.put_object(Bucket="engine-bucket", Key=key, Body=b"x")
    root.put_bucket_policy(
        Bucket="engine-bucket",
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:GetObject",
                        "Resource": "arn:aws:s3:::engine-bucket/secret/*",
                    }
                ],
            }
        ),
    )
    s3 = aws.client(
        "s3",
        **_user(
            aws,
            [
                {
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": [
                        "arn:aws:s3:::engine-bucket/config-*.tar.gz",
                        "arn:aws:s3:::engine-bucket/secret/*",
                    ],
                },
            ],
        ),
    )

    s3.get_object(Bucket="engine-bucket", Key="config-a.tar.gz")
    assert _error(lambda: s3.get_object(Bucket="engine-bucket", Key="other.txt"))["Code"] == (
        "AccessDenied"
    )
    denied = _error(lambda: s3.get_object(Bucket="engine-bucket", Key="secret/x"))
    assert "explicit deny" in denied["Message"]


def test_scheduler_create_schedule_passes_its_target_role(aws):
    """SAR scheduler:CreateSchedule on `schedule`; the target's role is passed (iam:PassRole
    with iam:PassedToService scheduler.amazonaws.com). Denials are AccessDeniedException."""
    statements = [{"Effect": "Allow", "Action": "scheduler:CreateSchedule", "Resource": "*"}]
    scheduler = aws.client("scheduler", **_user(aws, statements))

    error = _error(
        lambda: scheduler.create_schedule(
            Name="s",
            ScheduleExpression="at(2030-01-01T00:00:00)",
            FlexibleTimeWindow={"Mode": "OFF"},
            Target={
                "Arn": f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:f",
                "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/sched",
            },
        )
    )

    assert error["Code"] == "AccessDeniedException"
    assert "iam:PassRole" in error["Message"]


def test_unmapped_operations_are_denied_to_everyone_but_the_root(aws, monkeypatch):
    """No mapping, no guess: an operation the table does not know is refused ("unmapped").

    The row is removed for this test only (the server runs in this process): every operation
    a flow or test makes has a row, and the session's coverage check fails on any that has not.
    """
    iam = aws.client("iam", **_user(aws, [{"Effect": "Allow", "Action": "*", "Resource": "*"}]))
    monkeypatch.delitem(MAPPINGS, "iam:CreateGroup")

    error = _error(lambda: iam.create_group(GroupName="x"))
    aws.client("iam").create_group(GroupName="by-root")  # the root is allowed: no error

    assert error["Code"] == "AccessDenied" and "unmapped" in error["Message"]


def test_policy_changes_apply_to_the_next_request(aws):
    """IAM is eventually consistent in AWS; the local AWS applies a policy write at once, and
    its per-caller policy cache is dropped on every IAM write."""
    ec2 = aws.client(
        "ec2", **_user(aws, [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}])
    )
    assert _error(ec2.describe_instances)["Code"] == "UnauthorizedOperation"

    aws.client("iam").put_user_policy(
        UserName="engine-user",
        PolicyName="more",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"}
                ],
            }
        ),
    )
    ec2.describe_instances()


def test_root_is_allowed_everything_and_the_engine_can_be_switched_off(aws):
    """The sandbox's own credentials are the account root (AWS allows it everything); with the
    engine off (benchmarks) nothing is refused."""
    ec2 = aws.client(
        "ec2", **_user(aws, [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}])
    )
    aws.client("ec2").describe_instances()
    assert _error(ec2.describe_instances)["Code"] == "UnauthorizedOperation"

    aws.enforce_iam(False)
    ec2.describe_instances()


def test_every_mapping_names_an_action_of_the_reference(aws):
    """Each mapped operation is authorized as an action the SAR data knows (no typos, no
    guesses): its own name, or the action its row names (s3:HeadObject as s3:GetObject)."""
    del aws
    for operation, mapping in MAPPINGS.items():
        assert action_details(mapped_action(operation, mapping)) is not None, operation


def test_create_service_linked_role_is_scoped_by_service_name(aws):
    """SAR iam:CreateServiceLinkedRole: the `role` it creates, condition iam:AWSServiceName.
    A grant for the Spot role's ARN and service name allows that one and no other."""
    statements = [
        {
            "Effect": "Allow",
            "Action": "iam:CreateServiceLinkedRole",
            "Resource": f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/spot.amazonaws.com/"
            "AWSServiceRoleForEC2Spot",
            "Condition": {"StringEquals": {"iam:AWSServiceName": "spot.amazonaws.com"}},
        }
    ]
    iam = aws.client("iam", **_user(aws, statements))

    refused = _error(
        lambda: iam.create_service_linked_role(AWSServiceName="ec2fleet.amazonaws.com")
    )
    created = iam.create_service_linked_role(AWSServiceName="spot.amazonaws.com")["Role"]

    assert refused["Code"] == "AccessDenied"
    assert created["RoleName"] == "AWSServiceRoleForEC2Spot"


def test_a_spot_fleet_dry_run_checks_the_caller_not_the_fleet_roles_launch(aws):
    """RequestSpotFleet "DryRun": the caller's permissions; the fleet role launches later (and
    is judged then). A caller allowed the request, its own launch permissions and the PassRole
    gets DryRunOperation even though the fleet role could launch nothing; without
    RequestSpotFleet, UnauthorizedOperation.

    The caller's own launch permissions: EC2 User Guide, "Spot Fleet permissions", Required EC2
    and IAM APIs — the user's policy must include ec2:RunInstances ("Required to launch
    instances in a Spot Fleet") beside ec2:RequestSpotFleet and iam:PassRole of the fleet role.
    A requester holding only the request and the PassRole is refused RunInstances."""
    iam = aws.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "spotfleet.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = iam.create_role(RoleName="fleet", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    passing = {
        "Effect": "Allow",
        "Action": "iam:PassRole",
        "Resource": role["Arn"],
        "Condition": {"StringEquals": {"iam:PassedToService": "spotfleet.amazonaws.com"}},
    }
    request = {"Effect": "Allow", "Action": "ec2:RequestSpotFleet", "Resource": "*"}
    launch = {"Effect": "Allow", "Action": "ec2:RunInstances", "Resource": "*"}
    allowed = aws.client("ec2", **_user(aws, [passing, request, launch]))
    refused = aws.client("ec2", **_user(aws, [passing], name="no-fleets"))
    cannot_launch = aws.client("ec2", **_user(aws, [passing, request], name="no-launch"))
    config = {
        "IamFleetRole": role["Arn"],
        "TargetCapacity": 1,
        "LaunchSpecifications": [{"ImageId": _ami(aws), "InstanceType": "m5.large"}],
    }

    errors = [
        _error(lambda c=client: c.request_spot_fleet(DryRun=True, SpotFleetRequestConfig=config))
        for client in (allowed, refused, cannot_launch)
    ]

    assert [e["Code"] for e in errors] == [
        "DryRunOperation",
        "UnauthorizedOperation",
        "UnauthorizedOperation",
    ]
    assert "perform: ec2:RunInstances on resource" in errors[2]["Message"]
    assert "acting as" not in errors[2]["Message"]  # the requester's own, not the fleet role's


def test_create_tags_by_id_checks_the_resource_and_its_current_tags(aws):
    """SAR ec2:CreateTags: the resource named (typed by its id) with aws:ResourceTag/${TagKey}
    and aws:RequestTag/${TagKey}; a direct call carries no ec2:CreateAction."""
    root = aws.client("ec2")
    tagged = root.run_instances(
        ImageId=_ami(aws), MinCount=1, MaxCount=1, TagSpecifications=ANNEX_TAGS
    )["Instances"][0]["InstanceId"]
    other = root.run_instances(ImageId=_ami(aws), MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    ec2 = aws.client(
        "ec2",
        **_user(
            aws,
            [
                {
                    "Effect": "Allow",
                    "Action": "ec2:CreateTags",
                    "Resource": "arn:aws:ec2:*:*:instance/*",
                    "Condition": {"StringEquals": {f"aws:ResourceTag/{TAG}": "a"}},
                }
            ],
        ),
    )
    late = [{"Key": "Late", "Value": "1"}]

    ec2.create_tags(Resources=[tagged], Tags=late)
    refused = _error(lambda: ec2.create_tags(Resources=[other], Tags=late))

    assert refused["Code"] == "UnauthorizedOperation"
    assert f"instance/{other}" in refused["Message"]


def test_create_subnet_also_needs_the_vpc(aws):
    """SAR ec2:CreateSubnet: `subnet` and `vpc` are both required resource types."""
    root = aws.client("ec2")
    vpc = root.create_vpc(CidrBlock="10.61.0.0/16")["Vpc"]["VpcId"]
    subnet_only = [
        {"Effect": "Allow", "Action": "ec2:CreateSubnet", "Resource": "arn:aws:ec2:*:*:subnet/*"}
    ]
    ec2 = aws.client("ec2", **_user(aws, subnet_only))
    with_vpc = aws.client(
        "ec2",
        **_user(
            aws,
            [
                {
                    **subnet_only[0],
                    "Resource": ["arn:aws:ec2:*:*:subnet/*", f"arn:aws:ec2:*:*:vpc/{vpc}"],
                }
            ],
            name="with-vpc",
        ),
    )

    refused = _error(lambda: ec2.create_subnet(VpcId=vpc, CidrBlock="10.61.1.0/24"))
    with_vpc.create_subnet(VpcId=vpc, CidrBlock="10.61.2.0/24")

    assert refused["Code"] == "UnauthorizedOperation" and f"vpc/{vpc}" in refused["Message"]


def test_copy_object_needs_get_on_the_source_and_put_on_the_destination(aws):
    """S3 API Reference "CopyObject", Permissions: s3:GetObject on the source object and
    s3:PutObject on the destination."""
    root = aws.client("s3")
    root.create_bucket(Bucket="copy-bucket")
    root.put_object(Bucket="copy-bucket", Key="source/a", Body=b"x")
    put = {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::copy-bucket/*"}
    get = {**put, "Action": "s3:GetObject", "Resource": "arn:aws:s3:::copy-bucket/source/*"}
    put_only = aws.client("s3", **_user(aws, [put]))
    both = aws.client("s3", **_user(aws, [put, get], name="both"))
    copy = {"Bucket": "copy-bucket", "Key": "dest/a", "CopySource": "copy-bucket/source/a"}

    refused = _error(lambda: put_only.copy_object(**copy))
    both.copy_object(**copy)

    assert refused["Code"] == "AccessDenied"
    assert "s3:GetObject on resource: arn:aws:s3:::copy-bucket/source/a" in refused["Message"]


def test_spot_fleet_must_be_able_to_assume_its_fleet_role(aws):
    """Spot Fleet launches as the IamFleetRole, which it assumes as spotfleet.amazonaws.com
    ("Spot Fleet permissions", EC2 User Guide): the role's trust policy decides. A role trusting
    only EC2 refuses the fleet; trusting Spot Fleet within this account, the fleet launches."""
    iam = aws.client("iam")

    def trust(service: str) -> str:
        return json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": service},
                        "Action": "sts:AssumeRole",
                        "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT}},
                    }
                ],
            }
        )

    role = iam.create_role(RoleName="fleet", AssumeRolePolicyDocument=trust("ec2.amazonaws.com"))
    iam.put_role_policy(
        RoleName="fleet",
        PolicyName="launch",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["ec2:RunInstances", "ec2:CreateTags"],
                        "Resource": "*",
                    }
                ],
            }
        ),
    )
    fleet_role = role["Role"]["Arn"]
    ec2 = aws.client(
        "ec2",
        **_user(
            aws,
            [
                {"Effect": "Allow", "Action": "ec2:*", "Resource": "*"},
                {"Effect": "Allow", "Action": "iam:PassRole", "Resource": fleet_role},
            ],
        ),
    )
    config = {
        "IamFleetRole": fleet_role,
        "TargetCapacity": 1,
        "LaunchSpecifications": [{"ImageId": _ami(aws), "InstanceType": "m5.large"}],
    }

    error = _error(lambda: ec2.request_spot_fleet(SpotFleetRequestConfig=config))
    assert error["Code"] == "UnauthorizedOperation"
    assert (
        f"(acting as spotfleet.amazonaws.com) is not authorized to perform: sts:AssumeRole on resource: {fleet_role}"
        in error["Message"]
    )

    iam.update_assume_role_policy(RoleName="fleet", PolicyDocument=trust("spotfleet.amazonaws.com"))
    assert ec2.request_spot_fleet(SpotFleetRequestConfig=config)["SpotFleetRequestId"]


def test_public_ssm_parameters_are_judged_by_their_account_less_arn(aws):
    """SAR ssm:GetParameter acts on `parameter`; AWS's public parameters have no account in
    their ARN (Systems Manager User Guide, "Working with public parameters"), so a policy
    naming the caller's own account does not cover them, and `*` in the account field does."""
    name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"

    def grant(resource: str) -> dict[str, Any]:
        return {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": resource}

    any_account = aws.client("ssm", **_user(aws, [grant("arn:aws:ssm:*:*:parameter/*")]))
    public_only = aws.client(
        "ssm",
        **_user(
            aws,
            [grant("arn:aws:ssm:us-east-1::parameter/aws/service/ami-amazon-linux-latest/*")],
            name="public-only",
        ),
    )
    own_account = aws.client(
        "ssm",
        **_user(aws, [grant(f"arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/*")], name="own-account"),
    )

    values = [c.get_parameter(Name=name)["Parameter"]["Value"] for c in (any_account, public_only)]
    refused = _error(lambda: own_account.get_parameter(Name=name))

    assert all(v.startswith("ami-") for v in values)
    assert refused["Code"] == "AccessDeniedException"
    assert f"resource: arn:aws:ssm:us-east-1::parameter{name}" in refused["Message"]
    assert "could not evaluate" not in refused["Message"]


def test_update_function_configuration_passes_a_new_role(aws):
    """SAR lambda:UpdateFunctionConfiguration on `function`; a new execution role is passed to
    Lambda (iam:PassRole with iam:PassedToService lambda.amazonaws.com), as at CreateFunction."""
    iam = aws.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    first, second = (
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        for name in ("fn-first", "fn-second")
    )
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
    function = aws.client("lambda").create_function(
        FunctionName="fn",
        Runtime="python3.13",
        Role=first,
        Handler="handler.handler",
        Code={"ZipFile": package.getvalue()},
    )["FunctionArn"]
    update = {
        "Effect": "Allow",
        "Action": "lambda:UpdateFunctionConfiguration",
        "Resource": function,
    }
    passing = {
        "Effect": "Allow",
        "Action": "iam:PassRole",
        "Resource": second,
        "Condition": {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}},
    }
    without_pass = aws.client("lambda", **_user(aws, [update]))
    with_pass = aws.client("lambda", **_user(aws, [update, passing], name="passer"))

    refused = _error(
        lambda: without_pass.update_function_configuration(FunctionName="fn", Role=second)
    )
    with_pass.update_function_configuration(FunctionName="fn", Role=second)

    assert refused["Code"] == "AccessDeniedException"
    assert f"iam:PassRole on resource: {second}" in refused["Message"]
    assert aws.client("lambda").get_function(FunctionName="fn")["Configuration"]["Role"] == second


def test_delete_objects_is_judged_per_object_and_version(aws):
    """S3 API Reference "DeleteObjects": s3:DeleteObject for each key named, and
    s3:DeleteObjectVersion for a specific version (SAR: with s3:versionid)."""
    root = aws.client("s3")
    root.create_bucket(Bucket="batch-bucket")
    root.put_bucket_versioning(Bucket="batch-bucket", VersioningConfiguration={"Status": "Enabled"})
    versions = {
        key: root.put_object(Bucket="batch-bucket", Key=key, Body=b"x")["VersionId"]
        for key in ("annex/a", "annex/b", "other/c")
    }
    delete = {
        "Effect": "Allow",
        "Action": "s3:DeleteObject",
        "Resource": "arn:aws:s3:::batch-bucket/annex/*",
    }
    s3 = aws.client("s3", **_user(aws, [delete]))
    versioned = aws.client(
        "s3", **_user(aws, [{**delete, "Action": "s3:DeleteObjectVersion"}], name="versions")
    )

    s3.delete_objects(Bucket="batch-bucket", Delete={"Objects": [{"Key": "annex/a"}]})
    outside = _error(
        lambda: s3.delete_objects(
            Bucket="batch-bucket", Delete={"Objects": [{"Key": "annex/b"}, {"Key": "other/c"}]}
        )
    )
    one_version = {"Objects": [{"Key": "annex/b", "VersionId": versions["annex/b"]}]}
    version_refused = _error(lambda: s3.delete_objects(Bucket="batch-bucket", Delete=one_version))
    versioned.delete_objects(Bucket="batch-bucket", Delete=one_version)

    assert outside["Code"] == "AccessDenied"
    assert "s3:DeleteObject on resource: arn:aws:s3:::batch-bucket/other/c" in outside["Message"]
    assert (
        "s3:DeleteObjectVersion on resource: arn:aws:s3:::batch-bucket/annex/b"
        in (version_refused["Message"])
    )


def test_group_writes_are_judged_on_the_group_with_the_policy_arn(aws):
    """SAR iam:AttachGroupPolicy acts on `group` with iam:PolicyARN: an administrator limited
    to one group and one policy can attach only that."""
    root = aws.client("iam")
    for group in ("annex-operators", "admins"):
        root.create_group(GroupName=group)
    policy = root.create_policy(
        PolicyName="annex-operator",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}],
            }
        ),
    )["Policy"]["Arn"]
    iam = aws.client(
        "iam",
        **_user(
            aws,
            [
                {
                    "Effect": "Allow",
                    "Action": ["iam:AttachGroupPolicy", "iam:AddUserToGroup"],
                    "Resource": f"arn:aws:iam::{ACCOUNT}:group/annex-operators",
                    "Condition": {"ArnEqualsIfExists": {"iam:PolicyARN": policy}},
                }
            ],
        ),
    )

    iam.attach_group_policy(GroupName="annex-operators", PolicyArn=policy)
    iam.add_user_to_group(GroupName="annex-operators", UserName="engine-user")
    other_group = _error(lambda: iam.attach_group_policy(GroupName="admins", PolicyArn=policy))
    admin_policy = "arn:aws:iam::aws:policy/AdministratorAccess"
    other_policy = _error(
        lambda: iam.attach_group_policy(GroupName="annex-operators", PolicyArn=admin_policy)
    )

    assert other_group["Code"] == other_policy["Code"] == "AccessDenied"
    assert "group/admins" in other_group["Message"]


def test_assume_role_of_a_role_that_does_not_exist_is_access_denied(aws):
    """AWS answers AssumeRole of a missing role AccessDenied ("not authorized to perform:
    sts:AssumeRole"), as for a trust that does not let the caller in; the engine allowed it."""
    sts = aws.client(
        "sts", **_user(aws, [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}])
    )
    arn = f"arn:aws:iam::{aws.account_id}:role/no-such-role"

    error = _error(lambda: sts.assume_role(RoleArn=arn, RoleSessionName="probe"))

    assert error["Code"] == "AccessDenied"
    assert "sts:AssumeRole" in error["Message"]
