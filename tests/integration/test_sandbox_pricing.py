"""The local AWS's prices and capacity errors, over HTTP with boto3, in the real response shapes."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from annex_sandbox import pricing

AMI = "ami-12345678"
LINUX_SHARED = [
    {"Type": "TERM_MATCH", "Field": "instanceType", "Value": "m5.large"},
    {"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"},
    {"Type": "TERM_MATCH", "Field": "operatingSystem", "Value": "Linux"},
    {"Type": "TERM_MATCH", "Field": "tenancy", "Value": "Shared"},
    {"Type": "TERM_MATCH", "Field": "preInstalledSw", "Value": "NA"},
    {"Type": "TERM_MATCH", "Field": "capacitystatus", "Value": "Used"},
]


def _usd(item: str) -> list[str]:
    product = json.loads(item)
    return [
        d["pricePerUnit"]["USD"]
        for term in product["terms"]["OnDemand"].values()
        for d in term["priceDimensions"].values()
    ]


def test_get_products_with_linux_shared_filters_answers_one_price_list_document(aws):
    """GetProducts answers `PriceList` elements that are JSON documents as strings, with the
    product's attributes and its OnDemand term ("GetProducts", AWS Price List Query API)."""
    client = aws.client("pricing", region_name="us-east-1")

    answer = client.get_products(ServiceCode="AmazonEC2", Filters=LINUX_SHARED)

    assert answer["FormatVersion"] == "aws_v1"
    assert len(answer["PriceList"]) == 1
    item = answer["PriceList"][0]
    assert isinstance(item, str)
    product = json.loads(item)["product"]
    assert product["attributes"]["instanceType"] == "m5.large"
    assert product["attributes"]["regionCode"] == "us-east-1"
    assert _usd(item) == [pricing.on_demand_price("us-east-1", "m5.large")]


def test_get_products_without_the_os_and_tenancy_filters_matches_several_products(aws):
    """A loose query matches Windows, dedicated and reservation rows too, as the real list does."""
    client = aws.client("pricing", region_name="us-east-1")

    answer = client.get_products(ServiceCode="AmazonEC2", Filters=LINUX_SHARED[:2])

    prices = {p for item in answer["PriceList"] for p in _usd(item)}
    assert len(answer["PriceList"]) > 1
    assert len(prices) > 1


def test_get_products_for_an_instance_type_without_a_fixture_price_is_empty(aws):
    client = aws.client("pricing", region_name="us-east-1")
    filters = [dict(f) for f in LINUX_SHARED]
    filters[0]["Value"] = "x2iedn.32xlarge"

    assert client.get_products(ServiceCode="AmazonEC2", Filters=filters)["PriceList"] == []


def test_get_products_pages_with_next_token(aws):
    client = aws.client("pricing", region_name="us-east-1")
    pages = list(
        client.get_paginator("get_products").paginate(
            ServiceCode="AmazonEC2",
            Filters=[{"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"}],
            PaginationConfig={"PageSize": 7},
        )
    )

    assert len(pages) > 1
    assert all(len(p["PriceList"]) <= 7 for p in pages)


def test_get_products_with_an_unknown_filter_type_is_a_client_error(aws):
    client = aws.client("pricing", region_name="us-east-1")

    with pytest.raises(ClientError) as raised:
        client.get_products(
            ServiceCode="AmazonEC2",
            Filters=[{"Type": "TERM_MATCH", "Field": "instanceType", "Value": "m5.large"}],
            FormatVersion="aws_v2",
        )

    assert raised.value.response["Error"]["Code"] == "InvalidParameterException"


def test_spot_price_history_answers_fixture_prices_per_zone_with_current_timestamps(aws):
    """Per pool (zone, type, product) a price and a recent timestamp; the product-description
    filter narrows instead of emptying ("DescribeSpotPriceHistory")."""
    ec2 = aws.client("ec2")
    now = datetime.now(timezone.utc)

    history = ec2.describe_spot_price_history(
        InstanceTypes=["m5.large", "c5.large"],
        ProductDescriptions=["Linux/UNIX"],
        StartTime=now,
        EndTime=now,
    )["SpotPriceHistory"]

    zones = {p["AvailabilityZone"] for p in history}
    assert {p["InstanceType"] for p in history} == {"m5.large", "c5.large"}
    assert {p["ProductDescription"] for p in history} == {"Linux/UNIX"}
    assert len(zones) >= 2 and all(z.startswith("us-east-1") for z in zones)
    m5 = {p["AvailabilityZone"]: p["SpotPrice"] for p in history if p["InstanceType"] == "m5.large"}
    assert m5["us-east-1a"] == pricing.spot_price("us-east-1", "us-east-1a", "m5.large")
    assert len(set(m5.values())) > 1, "the pools span a price range"
    assert all(abs((now - p["Timestamp"]).total_seconds()) < 3 * 3600 for p in history)


def test_spot_price_history_filters_by_availability_zone(aws):
    ec2 = aws.client("ec2")

    history = ec2.describe_spot_price_history(
        InstanceTypes=["m5.large"],
        Filters=[{"Name": "availability-zone", "Values": ["us-east-1b"]}],
    )["SpotPriceHistory"]

    assert {p["AvailabilityZone"] for p in history} == {"us-east-1b"}


def test_spot_price_history_has_no_price_for_an_unlisted_type(aws):
    ec2 = aws.client("ec2")

    assert (
        ec2.describe_spot_price_history(InstanceTypes=["x2iedn.32xlarge"])["SpotPriceHistory"] == []
    )


def _subnet(ec2, zone: str) -> str:
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    index = ord(zone[-1]) - ord("a")
    return str(
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{index}.0/24", AvailabilityZone=zone)[
            "Subnet"
        ]["SubnetId"]
    )


def test_injected_insufficient_capacity_fails_run_instances_with_a_500_and_launches_nothing(aws):
    """EC2 answers InsufficientInstanceCapacity as a server error (HTTP 500) naming the zone
    ("Error codes for the Amazon EC2 API"; SDKs retry it)."""
    ec2 = aws.client("ec2", config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    subnet = _subnet(ec2, "us-east-1a")
    aws.inject_capacity_error("m5.large", "us-east-1a")

    with pytest.raises(ClientError) as raised:
        ec2.run_instances(
            ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="m5.large", SubnetId=subnet
        )

    error = raised.value.response
    assert error["Error"]["Code"] == "InsufficientInstanceCapacity"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert "us-east-1a" in error["Error"]["Message"]
    assert ec2.describe_instances()["Reservations"] == []


def test_injected_capacity_error_spares_other_pools(aws):
    ec2 = aws.client("ec2", config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    subnet_a = _subnet(ec2, "us-east-1a")
    vpc = ec2.describe_subnets(SubnetIds=[subnet_a])["Subnets"][0]["VpcId"]
    subnet_b = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24", AvailabilityZone="us-east-1b")[
        "Subnet"
    ]["SubnetId"]
    aws.inject_capacity_error("m5.large", "us-east-1a")

    other_zone = ec2.run_instances(
        ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="m5.large", SubnetId=subnet_b
    )
    other_type = ec2.run_instances(
        ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="c5.large", SubnetId=subnet_a
    )

    assert other_zone["Instances"][0]["Placement"]["AvailabilityZone"] == "us-east-1b"
    assert other_type["Instances"][0]["InstanceType"] == "c5.large"


def test_injected_unsupported_is_a_client_error(aws):
    ec2 = aws.client("ec2")
    aws.inject_capacity_error("m5.large", code="Unsupported")

    with pytest.raises(ClientError) as raised:
        ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="m5.large")

    assert raised.value.response["Error"]["Code"] == "Unsupported"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_reset_forgets_injected_capacity_errors(aws):
    ec2 = aws.client("ec2")
    aws.inject_capacity_error("m5.large")
    aws.reset()

    launched = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="m5.large")

    assert len(launched["Instances"]) == 1
