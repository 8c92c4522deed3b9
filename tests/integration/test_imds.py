"""The IMDSv2 emulator answers real HTTP exchanges the way EC2's metadata service does."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Optional
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.utils import InstanceMetadataRegionFetcher

from annex_sandbox import LocalAws
from annex_sandbox.imds import (
    INSTANCE_SELECTOR_HEADER,
    TOKEN_HEADER,
    TOKEN_TTL_HEADER,
    Credentials,
    EmulatedInstance,
    ImdsServer,
    instance_from_ec2,
)
from tests.fixtures.aws import STOCK_IMAGE_ID

EC2_TRUST_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)

IMAGE_ID = STOCK_IMAGE_ID

# --- HTTP helpers -------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: str
    headers: dict[str, str]


def call(
    url: str,
    path: str,
    *,
    method: str = "GET",
    headers: Optional[dict[str, str]] = None,
    timeout: float = 5.0,
) -> Reply:
    """One request on a fresh connection, exactly as given (no client-side magic)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.read().decode(), dict(response.getheaders()))
    finally:
        conn.close()


def token(url: str, ttl: int = 21600, headers: Optional[dict[str, str]] = None) -> str:
    reply = call(
        url,
        "/latest/api/token",
        method="PUT",
        headers={TOKEN_TTL_HEADER: str(ttl), **(headers or {})},
    )
    assert reply.status == 200, reply
    return reply.body


def get(url: str, path: str, **headers: str) -> Reply:
    """GET with a fresh token of the instance behind `url` (plus extra headers)."""
    extra = {k.replace("_", "-"): v for k, v in headers.items()}
    return call(url, path, headers={TOKEN_HEADER: token(url, headers=extra), **extra})


def static_credentials() -> Credentials:
    return Credentials(
        access_key_id="ASIAEMULATEDEXAMPLE1",
        secret_access_key="emulated-secret",
        token="emulated-session-token",
        expiration=datetime.now(timezone.utc) + timedelta(hours=1),
    )


_counter = iter(range(10**9))


def new_instance(**overrides: Any) -> EmulatedInstance:
    fields: dict[str, Any] = {"instance_id": f"i-{next(_counter):017x}"}
    fields.update(overrides)
    return EmulatedInstance(**fields)


# --- The local AWS ------------------------------------------------------------------------------


@dataclass
class Launched:
    instance_id: str
    role_name: str
    url: str
    ec2: Any
    iam: Any


@pytest.fixture
def launched(aws: LocalAws, imds_server: ImdsServer) -> Launched:
    """A moto instance with role + instance profile, served by the emulator."""
    iam = aws.client("iam")
    ec2 = aws.client("ec2")
    iam.create_role(RoleName="annex-node", AssumeRolePolicyDocument=EC2_TRUST_POLICY)
    profile = iam.create_instance_profile(InstanceProfileName="annex-node-profile")
    iam.add_role_to_instance_profile(
        InstanceProfileName="annex-node-profile", RoleName="annex-node"
    )
    instance_id = ec2.run_instances(
        ImageId=IMAGE_ID,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.micro",
        IamInstanceProfile={"Arn": profile["InstanceProfile"]["Arn"]},
        MetadataOptions={"HttpTokens": "required", "InstanceMetadataTags": "enabled"},
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "htcondor:AnnexName", "Value": "a1"}]}
        ],
    )["Instances"][0]["InstanceId"]
    emulated = instance_from_ec2(
        ec2, iam, instance_id, sts_client=aws.client("sts"), region=aws.region
    )
    return Launched(instance_id, "annex-node", imds_server.add_instance(emulated), ec2, iam)


@pytest.fixture
def instance_metadata_only(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Leave the instance metadata service as the only credential source in the chain."""
    if "aws" in request.fixturenames:
        request.getfixturevalue("aws")  # it sets fake keys: clear them after it, not before
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_EC2_METADATA_DISABLED",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))


# --- botocore's own fetchers --------------------------------------------------------------------


def test_botocore_credential_chain_gets_role_credentials_from_instance(
    launched: Launched, instance_metadata_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", launched.url)
    served = json.loads(
        get(launched.url, f"/latest/meta-data/iam/security-credentials/{launched.role_name}").body
    )

    credentials = boto3.Session().get_credentials()

    assert credentials is not None
    assert credentials.method == "iam-role"
    frozen = credentials.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == (
        served["AccessKeyId"],
        served["SecretAccessKey"],
        served["Token"],
    )


def test_served_credentials_act_as_the_instance_role_on_local_aws(
    launched: Launched, instance_metadata_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", launched.url)

    identity = boto3.Session(region_name="us-east-1").client("sts").get_caller_identity()

    assert identity["Arn"].endswith(f":assumed-role/{launched.role_name}/{launched.instance_id}")


def test_served_credentials_get_exactly_the_role_permissions_under_iam_enforcement(
    launched: Launched,
    aws: LocalAws,
    instance_metadata_only: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    launched.iam.put_role_policy(
        RoleName=launched.role_name,
        PolicyName="describe-only",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"}
                ],
            }
        ),
    )
    # EC2 assumes the role itself; fetch once so the emulator holds the credentials before
    # enforcement would also judge the sandbox's own AssumeRole call.
    get(launched.url, f"/latest/meta-data/iam/security-credentials/{launched.role_name}")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", launched.url)
    session = boto3.Session(region_name="us-east-1")
    aws.enforce_iam(True)
    try:
        reservations = session.client("ec2").describe_instances()["Reservations"]
        with pytest.raises(ClientError) as denied:
            session.client("ec2").terminate_instances(InstanceIds=[launched.instance_id])
    finally:
        aws.enforce_iam(False)

    assert [i["InstanceId"] for r in reservations for i in r["Instances"]] == [launched.instance_id]
    assert denied.value.response["Error"]["Code"] in ("AccessDenied", "UnauthorizedOperation")


def test_ec2_must_be_able_to_assume_the_instance_role(launched: Launched, aws: LocalAws) -> None:
    """EC2 assumes the instance profile's role as ec2.amazonaws.com to serve its credentials
    ("IAM roles for Amazon EC2"): the role's trust policy decides (the IAM engine). A role that
    trusts only Lambda yields IMDS's AssumeRoleUnauthorizedAccess; trusting EC2, credentials."""
    path = f"/latest/meta-data/iam/security-credentials/{launched.role_name}"
    lambda_only = json.loads(EC2_TRUST_POLICY)
    lambda_only["Statement"][0]["Principal"] = {"Service": "lambda.amazonaws.com"}
    launched.iam.update_assume_role_policy(
        RoleName=launched.role_name, PolicyDocument=json.dumps(lambda_only)
    )

    refused = json.loads(get(launched.url, path).body)
    launched.iam.update_assume_role_policy(
        RoleName=launched.role_name, PolicyDocument=EC2_TRUST_POLICY
    )
    served = json.loads(get(launched.url, path).body)

    assert refused["Code"] == "AssumeRoleUnauthorizedAccess"
    assert "(acting as ec2.amazonaws.com)" in refused["Message"]
    assert "sts:AssumeRole" in refused["Message"]
    assert served["Code"] == "Success"


def test_botocore_region_fetcher_reads_region_from_availability_zone(
    imds_server: ImdsServer,
) -> None:
    url = imds_server.add_instance(new_instance(region="eu-west-3"))
    fetcher = InstanceMetadataRegionFetcher(config={"ec2_metadata_service_endpoint": url})

    assert fetcher.retrieve_region() == "eu-west-3"


def test_instance_from_ec2_mirrors_describe_instances(launched: Launched) -> None:
    described = launched.ec2.describe_instances(InstanceIds=[launched.instance_id])
    instance = described["Reservations"][0]["Instances"][0]

    assert get(launched.url, "/latest/meta-data/instance-id").body == launched.instance_id
    assert get(launched.url, "/latest/meta-data/instance-type").body == "t3.micro"
    assert get(launched.url, "/latest/meta-data/ami-id").body == instance["ImageId"]
    assert get(launched.url, "/latest/meta-data/local-ipv4").body == instance["PrivateIpAddress"]
    assert get(launched.url, "/latest/meta-data/public-ipv4").body == instance["PublicIpAddress"]
    assert (
        get(launched.url, "/latest/meta-data/placement/availability-zone").body
        == instance["Placement"]["AvailabilityZone"]
    )
    assert get(launched.url, "/latest/meta-data/iam/security-credentials/").body == "annex-node"
    info = json.loads(get(launched.url, "/latest/meta-data/iam/info").body)
    assert info["InstanceProfileArn"] == instance["IamInstanceProfile"]["Arn"]
    profile = launched.iam.get_instance_profile(InstanceProfileName="annex-node-profile")
    assert info["InstanceProfileId"] == profile["InstanceProfile"]["InstanceProfileId"]


def test_instance_from_ec2_follows_instance_metadata_tags_option(launched: Launched) -> None:
    assert get(launched.url, "/latest/meta-data/tags/instance/").body == "htcondor:AnnexName"
    assert get(launched.url, "/latest/meta-data/tags/instance/htcondor:AnnexName").body == "a1"


def test_tags_changed_in_ec2_after_launch_reach_instance_metadata(launched: Launched) -> None:
    """Tags in metadata follow the instance's current tags ("View tags for your EC2 instances in
    instance metadata"): a Spot Fleet tag added after launch becomes readable."""
    path = "/latest/meta-data/tags/instance/Late"
    assert get(launched.url, path).status == 404
    launched.ec2.create_tags(Resources=[launched.instance_id], Tags=[{"Key": "Late", "Value": "1"}])
    deadline = time.monotonic() + 5
    while get(launched.url, path).status == 404 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert get(launched.url, path).body == "1"


# --- Tokens (IMDSv2 with HttpTokens=required) ---------------------------------------------------


def test_get_without_token_is_unauthorized(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance())

    assert call(url, "/latest/meta-data/instance-id").status == 401


def test_get_with_unknown_token_is_unauthorized(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance())

    reply = call(url, "/latest/meta-data/instance-id", headers={TOKEN_HEADER: "AQAEAforged"})

    assert reply.status == 401


def test_token_of_one_instance_is_refused_by_another(imds_server: ImdsServer) -> None:
    url_a = imds_server.add_instance(new_instance())
    url_b = imds_server.add_instance(new_instance())

    reply = call(url_b, "/latest/meta-data/instance-id", headers={TOKEN_HEADER: token(url_a)})

    assert reply.status == 401


def test_expired_token_is_unauthorized(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance())
    short = token(url, ttl=1)
    assert call(url, "/latest/meta-data/", headers={TOKEN_HEADER: short}).status == 200

    time.sleep(1.05)

    assert call(url, "/latest/meta-data/", headers={TOKEN_HEADER: short}).status == 401


def test_token_response_carries_its_ttl(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance())

    reply = call(url, "/latest/api/token", method="PUT", headers={TOKEN_TTL_HEADER: "120"})

    assert reply.status == 200
    assert reply.body
    assert reply.headers[TOKEN_TTL_HEADER] == "120"


@pytest.mark.parametrize("ttl", ["0", "21601", "-5", "ten", None])
def test_token_request_with_invalid_ttl_is_bad_request(
    imds_server: ImdsServer, ttl: Optional[str]
) -> None:
    url = imds_server.add_instance(new_instance())
    headers = {} if ttl is None else {TOKEN_TTL_HEADER: ttl}

    assert call(url, "/latest/api/token", method="PUT", headers=headers).status == 400


def test_token_request_through_a_proxy_is_forbidden(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance())
    headers = {TOKEN_TTL_HEADER: "60", "X-Forwarded-For": "10.1.2.3"}

    assert call(url, "/latest/api/token", method="PUT", headers=headers).status == 403


def test_token_path_refuses_get(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance())

    assert call(url, "/latest/api/token", headers={TOKEN_TTL_HEADER: "60"}).status == 405


# --- Categories ---------------------------------------------------------------------------------


def test_public_ipv4_is_not_found_without_public_address(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance(public_ipv4=None))

    assert get(url, "/latest/meta-data/public-ipv4").status == 404
    assert "public-ipv4" not in get(url, "/latest/meta-data/").body.split("\n")


def test_public_ipv4_change_is_served_on_the_next_request(imds_server: ImdsServer) -> None:
    instance = new_instance()
    url = imds_server.add_instance(instance)

    imds_server.instance(instance.instance_id).public_ipv4 = "203.0.113.7"

    assert get(url, "/latest/meta-data/public-ipv4").body == "203.0.113.7"


def test_tags_are_not_found_when_tags_in_metadata_are_disabled(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance(tags=None))

    assert get(url, "/latest/meta-data/tags/instance/").status == 404
    assert get(url, "/latest/meta-data/tags/").status == 404


def test_tags_are_listed_and_readable_when_enabled(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(
        new_instance(tags={"Name": "node", "aws:ec2spot:fleet-request-id": "sfr-1"})
    )

    assert get(url, "/latest/meta-data/tags/instance").body == "Name\naws:ec2spot:fleet-request-id"
    assert get(url, "/latest/meta-data/tags/instance/aws:ec2spot:fleet-request-id").body == "sfr-1"
    assert get(url, "/latest/meta-data/tags/instance/Missing").status == 404


def test_tag_added_later_appears_in_metadata(imds_server: ImdsServer) -> None:
    instance = new_instance(tags={})
    url = imds_server.add_instance(instance)
    assert get(url, "/latest/meta-data/tags/instance/Late").status == 404

    imds_server.instance(instance.instance_id).tags = {"Late": "yes"}

    assert get(url, "/latest/meta-data/tags/instance/Late").body == "yes"


def test_spot_instance_action_appears_once_scheduled(imds_server: ImdsServer) -> None:
    instance = new_instance(instance_lifecycle="spot")
    url = imds_server.add_instance(instance)
    assert get(url, "/latest/meta-data/spot/instance-action").status == 404

    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    imds_server.schedule_spot_interruption(instance.instance_id, action="stop", at=at)

    reply = get(url, "/latest/meta-data/spot/instance-action")
    assert reply.status == 200
    assert json.loads(reply.body) == {"action": "stop", "time": "2026-01-02T03:04:05Z"}


def test_spot_notice_stays_hidden_until_two_minutes_before_the_action(
    imds_server: ImdsServer,
) -> None:
    instance = new_instance()
    url = imds_server.add_instance(instance)
    later = datetime.now(timezone.utc) + timedelta(minutes=10)

    imds_server.schedule_spot_interruption(instance.instance_id, at=later)

    assert get(url, "/latest/meta-data/spot/instance-action").status == 404


def test_spot_terminate_notice_defaults_to_two_minutes_ahead(imds_server: ImdsServer) -> None:
    instance = new_instance()
    url = imds_server.add_instance(instance)
    before = datetime.now(timezone.utc).replace(microsecond=0)

    imds_server.schedule_spot_interruption(instance.instance_id)

    notice = json.loads(get(url, "/latest/meta-data/spot/instance-action").body)
    when = datetime.strptime(notice["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert notice["action"] == "terminate"
    assert timedelta(minutes=2) <= when - before <= timedelta(minutes=2, seconds=2)
    assert get(url, "/latest/meta-data/spot/termination-time").body == notice["time"]


def test_rebalance_recommendation_appears_once_scheduled(imds_server: ImdsServer) -> None:
    instance = new_instance()
    url = imds_server.add_instance(instance)
    path = "/latest/meta-data/events/recommendations/rebalance"
    assert get(url, path).status == 404

    at = datetime(2026, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    imds_server.schedule_rebalance_recommendation(instance.instance_id, at=at)

    assert json.loads(get(url, path).body) == {"noticeTime": "2026-05-06T07:08:09Z"}


def test_credentials_document_has_imds_fields(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance(role_name="r", credentials=static_credentials))

    document = json.loads(get(url, "/latest/meta-data/iam/security-credentials/r").body)

    assert document["Code"] == "Success"
    assert document["Type"] == "AWS-HMAC"
    assert document["AccessKeyId"] == "ASIAEMULATEDEXAMPLE1"
    assert document["Token"] == "emulated-session-token"
    datetime.strptime(document["Expiration"], "%Y-%m-%dT%H:%M:%SZ")
    datetime.strptime(document["LastUpdated"], "%Y-%m-%dT%H:%M:%SZ")


def test_role_name_listing_has_no_trailing_newline(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance(role_name="r", credentials=static_credentials))

    assert get(url, "/latest/meta-data/iam/security-credentials/").body == "r"


def test_iam_info_names_the_instance_profile(imds_server: ImdsServer) -> None:
    arn = "arn:aws:iam::123456789012:instance-profile/annex/p"
    url = imds_server.add_instance(
        new_instance(role_name="r", instance_profile_arn=arn, instance_profile_id="AIPAEXAMPLE")
    )

    info = json.loads(get(url, "/latest/meta-data/iam/info").body)

    assert info["Code"] == "Success"
    assert info["InstanceProfileArn"] == arn
    assert info["InstanceProfileId"] == "AIPAEXAMPLE"


def test_instance_without_role_has_no_iam_category(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance(role_name=None))

    assert get(url, "/latest/meta-data/iam/info").status == 404
    assert get(url, "/latest/meta-data/iam/security-credentials/").status == 404


def test_role_that_cannot_be_assumed_yields_no_credentials_to_botocore(
    imds_server: ImdsServer, instance_metadata_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse() -> Credentials:
        raise PermissionError("trust policy does not allow ec2.amazonaws.com")

    url = imds_server.add_instance(new_instance(role_name="r", credentials=refuse))
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", url)

    document = json.loads(get(url, "/latest/meta-data/iam/security-credentials/r").body)
    assert document["Code"] == "AssumeRoleUnauthorizedAccess"
    assert boto3.Session().get_credentials() is None


def test_credentials_are_cached_until_five_minutes_before_expiry(imds_server: ImdsServer) -> None:
    calls: list[int] = []

    def short_lived() -> Credentials:
        calls.append(1)
        expiry = datetime.now(timezone.utc) + timedelta(minutes=4 if len(calls) == 1 else 60)
        return Credentials(f"ASIA{len(calls)}", "s", "t", expiry)

    url = imds_server.add_instance(new_instance(role_name="r", credentials=short_lived))
    path = "/latest/meta-data/iam/security-credentials/r"

    keys = [json.loads(get(url, path).body)["AccessKeyId"] for _ in range(3)]

    assert keys == ["ASIA1", "ASIA2", "ASIA2"]


def test_identity_document_describes_the_instance(imds_server: ImdsServer) -> None:
    pending = datetime(2026, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    instance = new_instance(
        region="us-west-2",
        instance_type="c5.xlarge",
        image_id="ami-0abc",
        private_ipv4="10.9.8.7",
        pending_time=pending,
    )
    url = imds_server.add_instance(instance)

    document = json.loads(get(url, "/latest/dynamic/instance-identity/document").body)

    assert document == {
        "accountId": "123456789012",
        "architecture": "x86_64",
        "availabilityZone": "us-west-2a",
        "billingProducts": None,
        "devpayProductCodes": None,
        "marketplaceProductCodes": None,
        "imageId": "ami-0abc",
        "instanceId": instance.instance_id,
        "instanceType": "c5.xlarge",
        "kernelId": None,
        "pendingTime": "2026-02-03T04:05:06Z",
        "privateIp": "10.9.8.7",
        "ramdiskId": None,
        "region": "us-west-2",
        "version": "2017-09-30",
    }


def test_meta_data_listing_marks_directories_with_a_slash(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance(role_name="r", public_ipv4="198.51.100.1"))

    entries = get(url, "/latest/meta-data/").body.split("\n")

    for expected in ("ami-id", "instance-id", "iam/", "placement/", "public-ipv4", "local-ipv4"):
        assert expected in entries
    assert get(url, "/latest/meta-data/placement/").body.split("\n") == [
        "availability-zone",
        "region",
    ]


def test_unknown_path_is_not_found(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance())

    assert get(url, "/latest/meta-data/no-such-category").status == 404
    assert get(url, "/latest/meta-data/instance-id/deeper").status == 404


def test_values_are_plain_text_from_ec2ws(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance())

    reply = get(url, "/latest/meta-data/instance-id")

    assert reply.headers["Server"] == "EC2ws"
    assert reply.headers["Content-Type"] == "text/plain"
    assert not reply.body.endswith("\n")


def test_user_data_is_served_as_given(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance(user_data=b"#!/bin/sh\necho hi\n"))

    assert get(url, "/latest/user-data").body == "#!/bin/sh\necho hi\n"


# --- Instance selection -------------------------------------------------------------------------


def test_shared_port_selects_the_instance_by_header(imds_server: ImdsServer) -> None:
    first = new_instance()
    second = new_instance()
    assert imds_server.add_instance(first, dedicated_port=False) == imds_server.endpoint
    imds_server.add_instance(second, dedicated_port=False)

    for instance in (first, second):
        reply = get(
            imds_server.endpoint,
            "/latest/meta-data/instance-id",
            **{INSTANCE_SELECTOR_HEADER: instance.instance_id},
        )
        assert reply.body == instance.instance_id


def test_shared_port_token_is_bound_to_the_selected_instance(imds_server: ImdsServer) -> None:
    first = new_instance()
    second = new_instance()
    imds_server.add_instance(first, dedicated_port=False)
    imds_server.add_instance(second, dedicated_port=False)
    first_token = token(imds_server.endpoint, headers={INSTANCE_SELECTOR_HEADER: first.instance_id})

    reply = call(
        imds_server.endpoint,
        "/latest/meta-data/instance-id",
        headers={TOKEN_HEADER: first_token, INSTANCE_SELECTOR_HEADER: second.instance_id},
    )

    assert reply.status == 401


def test_shared_port_without_instance_header_is_not_found(imds_server: ImdsServer) -> None:
    imds_server.add_instance(new_instance(), dedicated_port=False)

    reply = call(
        imds_server.endpoint, "/latest/api/token", method="PUT", headers={TOKEN_TTL_HEADER: "60"}
    )

    assert reply.status == 404


def test_many_instances_each_answer_on_their_own_port(imds_server: ImdsServer) -> None:
    instances = [new_instance() for _ in range(200)]
    urls = [imds_server.add_instance(instance) for instance in instances]

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda url: get(url, "/latest/meta-data/instance-id").body, urls))

    assert answers == [instance.instance_id for instance in instances]


# --- Faults and test hooks ----------------------------------------------------------------------


def test_removed_instance_refuses_connections(imds_server: ImdsServer) -> None:
    instance = new_instance()
    url = imds_server.add_instance(instance)

    imds_server.remove_instance(instance.instance_id)

    with pytest.raises(ConnectionRefusedError):
        call(url, "/latest/api/token", method="PUT", headers={TOKEN_TTL_HEADER: "60"})


def test_unavailable_instance_refuses_connections_until_restored(imds_server: ImdsServer) -> None:
    instance = new_instance()
    url = imds_server.add_instance(instance)

    imds_server.set_available(instance.instance_id, False)
    with pytest.raises(ConnectionRefusedError):
        call(url, "/latest/api/token", method="PUT", headers={TOKEN_TTL_HEADER: "60"})

    imds_server.set_available(instance.instance_id, True)
    assert get(url, "/latest/meta-data/instance-id").body == instance.instance_id


def test_hung_instance_never_answers(imds_server: ImdsServer) -> None:
    instance = new_instance()
    url = imds_server.add_instance(instance)

    imds_server.set_available(instance.instance_id, False, mode="hang")

    with pytest.raises(socket.timeout):
        call(url, "/latest/api/token", method="PUT", headers={TOKEN_TTL_HEADER: "1"}, timeout=0.3)
    imds_server.set_available(instance.instance_id, True)
    assert get(url, "/latest/meta-data/instance-id").status == 200


def test_disabled_endpoint_is_forbidden(imds_server: ImdsServer) -> None:
    instance = new_instance()
    url = imds_server.add_instance(instance)

    imds_server.set_available(instance.instance_id, False, mode="disabled")

    reply = call(url, "/latest/api/token", method="PUT", headers={TOKEN_TTL_HEADER: "60"})
    assert reply.status == 403


def test_latency_delays_every_answer(imds_server: ImdsServer) -> None:
    instance = new_instance()
    url = imds_server.add_instance(instance)
    imds_server.set_latency(instance.instance_id, 0.2)

    started = time.monotonic()
    call(url, "/latest/meta-data/instance-id")

    assert time.monotonic() - started >= 0.2


def test_request_log_records_method_path_and_status(imds_server: ImdsServer) -> None:
    instance = new_instance()
    url = imds_server.add_instance(instance)

    call(url, "/latest/meta-data/instance-id")
    get(url, "/latest/meta-data/instance-id")

    assert imds_server.requests(instance.instance_id) == [
        ("GET", "/latest/meta-data/instance-id", 401),
        ("PUT", "/latest/api/token", 200),
        ("GET", "/latest/meta-data/instance-id", 200),
    ]


def test_concurrent_token_requests_are_all_valid(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(new_instance())
    results: list[int] = []
    lock = threading.Lock()

    def fetch() -> None:
        status = call(url, "/latest/meta-data/", headers={TOKEN_HEADER: token(url)}).status
        with lock:
            results.append(status)

    threads = [threading.Thread(target=fetch) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [200] * 50


def test_unavailable_instance_on_shared_port_gets_no_http_answer(imds_server: ImdsServer) -> None:
    instance = new_instance()
    imds_server.add_instance(instance, dedicated_port=False)

    imds_server.set_available(instance.instance_id, False)

    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        token(imds_server.endpoint, headers={INSTANCE_SELECTOR_HEADER: instance.instance_id})
