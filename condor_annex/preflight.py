"""Pre-flight checks of a create: what AWS must confirm before anything is made.

The config bucket exists, the image and instance types do, no annex of that name is there yet,
the price is under the cap, and AWS can reach the collector. Each function takes its clients;
none changes anything in AWS.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

from botocore.exceptions import ClientError

from condor_annex import annex, contract, cost, inputs, lease, spot
from condor_annex.annex_settings import AnnexClients, Settings
from condor_annex.aws import error_code
from condor_annex.collector import CONNECTIVITY_TIMEOUT_SECONDS
from condor_annex.create_request import MAX_COUNT, CreateRequest, annex_tags
from condor_annex.errors import ConnectivityFailed, InvalidInput, SetupMissing

Probe = Callable[[str, int], dict[str, Any]]


def lambda_connectivity_probe(lambda_client: Any, function_arn: str) -> Probe:
    """A probe that invokes the setup's connectivity Lambda (it runs inside the account)."""

    def probe(host: str, port: int) -> dict[str, Any]:
        payload = json.dumps(
            {"host": host, "port": port, "timeout": CONNECTIVITY_TIMEOUT_SECONDS}
        ).encode()
        response = lambda_client.invoke(
            FunctionName=function_arn, InvocationType="RequestResponse", Payload=payload
        )
        body = response["Payload"].read()
        if response.get("FunctionError"):
            raise ConnectivityFailed(
                f"the connectivity function failed: {body[:200]!r}",
                next_step="run `condor_annex -check-setup`",
            )
        result: dict[str, Any] = json.loads(body)
        return result

    return probe


def check_bucket(clients: AnnexClients, settings: Settings) -> None:
    try:
        clients.s3.head_bucket(Bucket=settings.config_bucket)
    except ClientError as exc:
        if error_code(exc) in {"404", "NoSuchBucket", "NotFound"}:
            where = f" -aws-region {clients.region}" if clients.region else ""
            raise SetupMissing(
                f"the setup's config bucket {settings.config_bucket} does not exist"
                + (f" in {clients.region}" if clients.region else ""),
                next_step=f"run `condor_annex -check-setup{where}` or `condor_annex -setup{where}`",
            ) from None
        if error_code(exc) in {"400", "403"}:
            # HEAD responses carry no error body, so a bad, expired or unauthorized credential
            # shows up as a bare 400/403. Ask again with a request whose answer names the cause
            # (S3 API reference, "HeadBucket": "the response ... does not include a body").
            clients.s3.list_objects_v2(
                Bucket=settings.config_bucket, Prefix=contract.LEASE_KEY_PREFIX, MaxKeys=1
            )
        raise


def check_image(ec2: Any, ami_id: str) -> dict[str, Any]:
    """The image's description; InvalidInput when it does not exist or is not available."""
    try:
        images = ec2.describe_images(ImageIds=[ami_id]).get("Images", [])
    except ClientError as exc:
        if error_code(exc).startswith("InvalidAMIID"):
            images = []
        else:
            raise
    if not images:
        raise InvalidInput(
            f"the AMI {ami_id} does not exist (or is not visible) in this region",
            next_step="check -aws-on-demand-ami-id and -aws-region",
        )
    state = images[0].get("State", "available")
    if state != "available":
        raise InvalidInput(f"the AMI {ami_id} is {state}, not available")
    return dict(images[0])


def check_instance_types(ec2: Any, types: Sequence[str]) -> None:
    """Refuse unknown instance types; quietly skip when the identity may not describe them."""
    if not types:
        return
    try:
        ec2.describe_instance_types(InstanceTypes=list(types))
    except ClientError as exc:
        code = error_code(exc)
        if code.startswith("InvalidInstanceType") or code == "InvalidParameterValue":
            raise InvalidInput(
                f"unknown instance type among {', '.join(types)} ({exc.response['Error'].get('Message', code)})",
                next_step="check the instance type names for this region",
            ) from None
        if code in {"UnauthorizedOperation", "AccessDenied"}:
            return  # the operator policy may not grant it; RunInstances will say so
        raise


def existing_annex_summary(
    clients: AnnexClients, settings: Settings, annex_name: str
) -> Optional[str]:
    """A description of what already exists under `annex_name`, or None when nothing does."""
    parts: list[str] = []
    record = lease.read_lease_record(clients.s3, settings.config_bucket, annex_name)
    if record is not None:
        parts.append(f"a lease until {record.expires_at}")
    found = annex.find(clients.ec2, annex_name)
    if found.instances:
        parts.append(f"{len(found.instances)} instance(s)")
    if found.fleets:
        parts.append(f"{len(found.fleets)} fleet request(s)")
    if found.launch_template_id:
        parts.append("its launch template")
    parts.extend(u.describe() for u in found.unowned)
    return ", ".join(parts) or None


def check_spot_plan(
    request: CreateRequest, settings: Settings, plan: spot.SpotPlan, service_model: Any
) -> None:
    """The Spot Fleet request and launch template this plan becomes, checked against the EC2
    API's own shapes (botocore's service model) and the instance cap; no request is sent."""
    weights = [float(o.get("WeightedCapacity", 1)) for o in plan.overrides]
    inputs.check_fleet_size(int(request.slots or 0), weights, MAX_COUNT)
    source = (
        f"-aws-spot-fleet-config-file {request.spot_fleet_config_file}"
        if request.spot_fleet_config_file is not None
        else "the Spot Fleet request"
    )
    config = spot.build_spot_fleet_request_config(
        plan,
        launch_template_id="lt-0123456789abcdef0",
        launch_template_version="1",
        client_token=contract.new_client_token(request.annex_name),
        slots=int(request.slots or 0),
        fleet_role_arn=settings.spot_fleet_role_arn
        or f"arn:{contract.COMMERCIAL_PARTITION}:iam::123456789012:role/x",
        valid_until="2030-01-01T00:00:00Z",
        tags=annex_tags(request),
        subnet_ids=request.subnet_ids,
    )
    inputs.check_against_model(
        service_model, "RequestSpotFleet", {"SpotFleetRequestConfig": config}, source=source
    )
    template = {k: v for k, v in plan.template_data.items() if k != "UserData"}
    template.setdefault("ImageId", request.ami_id or "ami-00000000")
    inputs.check_against_model(
        service_model,
        "CreateLaunchTemplate",
        {"LaunchTemplateName": "check", "LaunchTemplateData": template},
        source=source,
    )


def spot_plan(request: CreateRequest, settings: Settings) -> Optional[spot.SpotPlan]:
    """The launch plan of a fleet request (None for plain on-demand); raises InvalidInput."""
    if request.kind == contract.FLEET_KIND_EC2_FLEET:
        if request.market == "spot":
            return spot.plan_from_instance_types(request.spot_instance_types)
        # On-demand through EC2 Fleet: `prioritized` follows the order the types were given.
        return spot.SpotPlan(
            overrides=[
                {"InstanceType": t, "Priority": float(i)}
                for i, t in enumerate(request.on_demand_instance_types)
            ]
        )
    if request.kind != contract.FLEET_KIND_SPOT_FLEET:
        return None
    if request.spot_fleet_config_data is not None:
        return spot.parse_spot_fleet_config(
            request.spot_fleet_config_data,
            source="<stdin>",
            fleet_role_arn=settings.spot_fleet_role_arn,
            instance_profile_arn=settings.instance_profile_arn,
            security_group_ids=settings.security_group_ids,
        )
    if request.spot_fleet_config_file is not None:
        return spot.load_spot_fleet_config(
            request.spot_fleet_config_file,
            fleet_role_arn=settings.spot_fleet_role_arn,
            instance_profile_arn=settings.instance_profile_arn,
            security_group_ids=settings.security_group_ids,
        )
    return spot.plan_from_instance_types(
        request.spot_instance_types,
        subnet_ids=request.subnet_ids,
        allocation_strategy=request.spot_allocation_strategy,
        fleet_type=request.spot_fleet_type,
    )


def cost_preview(
    request: CreateRequest,
    clients: AnnexClients,
    *,
    plan: Optional[spot.SpotPlan] = None,
    cache_dir: Optional[Path] = None,
) -> cost.CostPreview:
    """What the annex is expected to cost (prices from AWS or the day-old cache)."""
    book = cost.PriceBook(
        region=clients.region, ec2=clients.ec2, pricing=clients.pricing, cache_dir=cache_dir
    )
    if request.market == "on-demand":
        pools = [cost.Pool(t) for t in request.on_demand_instance_types]
        market, size = "on-demand", int(request.count or 0)
    else:
        weights: dict[str, float] = {}
        for override in plan.overrides if plan else []:
            weights.setdefault(
                str(override["InstanceType"]), float(override.get("WeightedCapacity") or 1)
            )
        pools = [cost.Pool(t, w) for t, w in weights.items()]
        market, size = "spot", int(request.slots or 0)
    return cost.preview(
        book,
        kind=request.kind,
        market=market,
        pools=pools,
        size=size,
        duration_seconds=request.duration_seconds,
        max_price_per_hour=request.max_price_per_hour,
    )


def check_connectivity(
    host: str, port: int, *, remote: dict[str, Any], local: dict[str, Any]
) -> list[str]:
    """Refuse when AWS cannot reach the collector; notes for what is odd but workable."""
    if not remote.get("reachable"):
        raise ConnectivityFailed(
            f"instances in AWS could not reach the collector {host}:{port} "
            f"({remote.get('error') or 'unreachable'})",
            next_step="open the collector port to the setup's security group / pool CIDRs, "
            "or pass the collector's public name with -collector",
        )
    if (
        local.get("reachable")
        and remote.get("address")
        and local.get("address")
        and remote.get("address") != local.get("address")
    ):
        # Split-horizon DNS and NAT make this normal; say it, do not refuse.
        return [
            f"AWS reaches {host} at {remote.get('address')} but this machine at "
            f"{local.get('address')}: make sure both are the same collector"
        ]
    return []
