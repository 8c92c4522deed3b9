"""`-setup`, `-check-setup` and `-destroy-setup` against the local AWS with the real CDK CLI.

The stack is deployed once for this module (bootstrap + deploy take most of a minute); the tests
after it only read it, except the last one, which destroys it. Run with `-p no:randomly` and
without splitting this file across xdist workers (`--dist loadfile`).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import os
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from annex_sandbox import LocalAws
from annex_sandbox.principals import UserKeys, create_administrator
from condor_annex import contract
from condor_annex import setup as setup_verbs
from condor_annex.annex_settings import AnnexClients, load_settings, region_prefix
from condor_annex.create import CreateHooks, create_annex
from condor_annex.create_request import CreateRequest
from condor_annex.errors import AnnexError, CredentialsError, InvalidInput, SetupMissing
from condor_annex.images import READY_IMAGE_TAG
from condor_annex.off import annex_off
from condor_annex.setup import (
    CdkFailed,
    SetupResult,
    check_setup,
    destroy_setup,
    raise_for_problems,
    run_setup,
)
from condor_annex.setup_checks import ensure_service_linked_roles
from condor_annex.target import WrongAccount
from condor_annex.user_config import read_annex_macros, write_annex_macros
from tests.fixtures.aws import STOCK_IMAGE_ID as STOCK_IMAGE
from tests.integration.annex_env import POOL_KEY, TRUST_DOMAIN, write_scrambled_key

PROJECT_DIR = Path(__file__).resolve().parents[2]
POOL_CIDR = "198.51.100.0/24"
NEW_POOL_CIDR = "203.0.113.0/24"
SECOND_NEW_POOL_CIDR = "192.0.2.0/24"
HTCONDOR_PORT = 9618
SECOND_REGION = "us-west-2"
USER_LINES = "# my settings\nSCHEDD_HOST = submit.example.org\n"

KEY_FILE_ACCESS_KEY_ID = "AKIAFROMKEYFILE00001"
cdk = pytest.mark.cdk

_SDK_VARIABLES_TO_CLEAR = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN")


def _connectivity_handler() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The connectivity function's code, run in-process (no Lambda runtime needed)."""
    path = PROJECT_DIR / "lambda" / "connectivity" / "handler.py"
    spec = importlib.util.spec_from_file_location("connectivity_handler", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler: Callable[[dict[str, Any], Any], dict[str, Any]] = module.handler
    return lambda event: handler(event, None)


def _key_files(
    directory: Path, mode: int = 0o600, keys: Optional[UserKeys] = None
) -> tuple[Path, Path]:
    access, secret = directory / "publicKeyFile", directory / "privateKeyFile"
    access.write_text((keys.access_key_id if keys else KEY_FILE_ACCESS_KEY_ID) + "\n")
    secret.write_text((keys.secret_access_key if keys else "secret-from-key-file") + "\n")
    access.chmod(mode)
    secret.chmod(mode)
    return access, secret


@dataclass
class Deployed:
    aws: LocalAws
    result: SetupResult
    env: dict[str, str]
    config_file: Path
    progress: list[str]
    administrator: UserKeys


@pytest.fixture(scope="module")
def deployed(local_aws: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    local_aws.reset()
    with pytest.MonkeyPatch.context() as patch:
        for name in _SDK_VARIABLES_TO_CLEAR:
            patch.delenv(name, raising=False)
        for name, value in local_aws.env().items():
            patch.setenv(name, value)
        # The CDK CLI must reach the emulator as `localhost` (moto reads bucket names from
        # the host of S3 URLs); in-process clients keep 127.0.0.1.
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": f"http://localhost:{local_aws.port}",
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        }
        # Reference compatibility: keys from ACCESS_KEY_FILE/SECRET_KEY_FILE, none in the env.
        # They are an administrator's (an IAM user, not the account root), so the local AWS's
        # IAM engine decides every request the setup verbs make.
        administrator = create_administrator(local_aws.client("iam"))
        env.pop("AWS_ACCESS_KEY_ID")
        env.pop("AWS_SECRET_ACCESS_KEY")
        home = tmp_path_factory.mktemp("home")
        config_file = home / ".condor" / "user_config"
        config_file.parent.mkdir()
        config_file.write_text(USER_LINES)
        progress: list[str] = []
        local_aws.clear_calls()
        result = run_setup(
            region=local_aws.region,
            pool_cidrs=[POOL_CIDR],
            config_file=config_file,
            project_dir=PROJECT_DIR,
            env=env,
            progress=progress.append,
            credentials_files=_key_files(config_file.parent, keys=administrator),
        )
        yield Deployed(local_aws, result, env, config_file, progress, administrator)


@pytest.fixture
def collector() -> Iterator[str]:
    """A TCP listener standing in for the collector (the check is the TCP handshake)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=2)
    server.close()


def _stack_outputs(aws: LocalAws, stack_name: str) -> dict[str, str]:
    stack = aws.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


@cdk
def test_setup_writes_every_output_as_its_macro(deployed):
    outputs = _stack_outputs(deployed.aws, contract.STACK_NAME)
    macros = read_annex_macros(deployed.config_file)
    for output in contract.STACK_OUTPUTS:
        assert macros[output.macro] == outputs[output.key], output.macro
    assert macros[contract.MACRO_AWS_REGION] == deployed.aws.region
    assert macros[contract.MACRO_STACK_NAME] == contract.STACK_NAME
    assert deployed.result.outputs == outputs


@cdk
def test_setup_keeps_the_users_other_lines(deployed):
    assert deployed.config_file.read_text().startswith(USER_LINES)


@cdk
def test_setup_streams_the_stack_events_as_progress(deployed):
    # moto records stack-level events only; against AWS the same path streams one line per
    # resource (the line format is covered by test_cdk_event_lines_become_per_resource_progress).
    events = [line for line in deployed.progress if line.startswith("[")]
    assert any("CREATE_COMPLETE" in line and contract.STACK_NAME in line for line in events), (
        deployed.progress
    )
    assert any("bootstrapping" in line for line in deployed.progress)


@cdk
def test_setup_deploys_with_the_keys_from_the_key_files(deployed):
    keys = {c.access_key_id for c in deployed.aws.calls("cloudformation")}
    assert deployed.administrator.access_key_id in keys


@cdk
def test_setup_runs_as_an_administrator_the_engine_judged(deployed):
    """AdministratorAccess is all `-setup` needs: the engine judged the administrator's requests
    and refused none, and the CDK CLI deployed through the bootstrap stack's deploy role (its
    trust lets the account in), as it does in AWS."""
    decisions = list(deployed.aws.state.authorizer.decisions)
    mine = [
        (op, ok, why)
        for op, caller, _, ok, why in decisions
        if caller == deployed.administrator.arn
    ]
    made = {operation.split(":")[0] for operation, _, _ in mine}
    assert {"cloudformation", "iam", "sts"} <= made, made
    assert [(op, why) for op, ok, why in mine if not ok] == []
    deploy_role = ":assumed-role/cdk-hnb659fds-deploy-role-"
    as_deploy_role = [
        (op, ok, why) for op, caller, _, ok, why in decisions if deploy_role in caller
    ]
    assert any(op.startswith("cloudformation:") for op, _, _ in as_deploy_role), as_deploy_role
    assert [(op, why) for op, ok, why in as_deploy_role if not ok] == []


@cdk
def test_setup_creates_the_fleet_service_linked_roles(deployed):
    iam = deployed.aws.client("iam")
    for role in contract.SERVICE_LINKED_ROLES:
        found = iam.get_role(RoleName=role.role_name)["Role"]
        assert found["Path"] == f"/aws-service-role/{role.service}/"
        assert f"created service-linked role {role.role_name}" in deployed.progress


@cdk
def test_each_function_runs_the_code_asset_setup_published(deployed):
    """CloudFormation built each function from the code asset `cdk deploy` published, and it runs."""
    cfn, s3, lambda_ = (deployed.aws.client(s) for s in ("cloudformation", "s3", "lambda"))
    template = cfn.get_template(StackName=contract.STACK_NAME)["TemplateBody"]
    template = json.loads(template) if isinstance(template, str) else template
    code_keys = {
        logical_id: resource["Properties"]["Code"]["S3Key"]
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Lambda::Function"
    }
    assert len(code_keys) == 3
    physical_ids = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for page in cfn.get_paginator("list_stack_resources").paginate(
            StackName=contract.STACK_NAME
        )
        for r in page["StackResourceSummaries"]
    }
    assets = f"cdk-hnb659fds-assets-{deployed.aws.account_id}-{deployed.aws.region}"
    for logical_id, key in code_keys.items():
        published = s3.get_object(Bucket=assets, Key=key)["Body"].read()
        config = lambda_.get_function(FunctionName=physical_ids[logical_id])["Configuration"]
        assert config["CodeSha256"] == base64.b64encode(hashlib.sha256(published).digest()).decode()
        with zipfile.ZipFile(io.BytesIO(published)) as bundle:
            assert {"handler.py", "condor_annex/contract.py"} <= set(bundle.namelist())

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        answer = lambda_.invoke(
            FunctionName=deployed.result.outputs[contract.OUTPUT_CONNECTIVITY_FUNCTION_ARN.key],
            Payload=json.dumps(
                {"host": "127.0.0.1", "port": listener.getsockname()[1], "timeout": 2}
            ),
        )
    report = json.loads(answer["Payload"].read())
    assert "FunctionError" not in answer, report
    assert report["reachable"] is True


@cdk
def test_rerunning_setup_changes_nothing_and_keeps_the_file(deployed):
    before = deployed.config_file.read_bytes()
    keys = deployed.config_file.parent
    progress: list[str] = []
    again = run_setup(
        region=deployed.aws.region,
        pool_cidrs=[POOL_CIDR],
        config_file=deployed.config_file,
        project_dir=PROJECT_DIR,
        env=deployed.env,
        progress=progress.append,
        credentials_files=(keys / "publicKeyFile", keys / "privateKeyFile"),
    )
    assert not again.changed
    assert deployed.config_file.read_bytes() == before
    # IAM answered "has been taken" for each role (the local AWS as AWS does): not an error.
    for role in contract.SERVICE_LINKED_ROLES:
        assert f"service-linked role {role.role_name} already exists" in progress


@cdk
def test_check_setup_is_green_after_setup(deployed, collector):
    result = check_setup(
        session=deployed.aws.session(),
        config_file=deployed.config_file,
        collector=collector,
        connectivity_probe=_connectivity_handler(),
    )
    assert result.problems == []
    assert result.ok
    for action in (
        "ec2:RunInstances",
        "ec2:CreateLaunchTemplate",
        "ec2:RequestSpotFleet",
        "ec2:CreateFleet",
        "scheduler:GetSchedule",
    ):
        assert any(line.startswith(f"{action} would be allowed") for line in result.checked)
    # Dry runs: nothing was launched or created by the check.
    ec2 = deployed.aws.client("ec2")
    assert ec2.describe_instances()["Reservations"] == []
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []


@cdk
def test_check_setup_names_each_missing_service_linked_role(deployed, collector):
    iam = deployed.aws.client("iam")
    for role in contract.SERVICE_LINKED_ROLES:
        iam.delete_service_linked_role(RoleName=role.role_name)
    try:
        result = check_setup(
            session=deployed.aws.session(),
            config_file=deployed.config_file,
            collector=collector,
            connectivity_probe=_connectivity_handler(),
        )
    finally:
        created, problems = ensure_service_linked_roles(iam)
    assert not result.ok
    assert len(result.problems) == len(contract.SERVICE_LINKED_ROLES)
    for role, problem in zip(contract.SERVICE_LINKED_ROLES, result.problems):
        assert role.role_name in problem.what and "does not exist" in problem.what
        assert "condor_annex -setup" in problem.next_step
        assert f"aws iam create-service-linked-role --aws-service-name {role.service}" in (
            problem.next_step
        )
    assert (created, problems) == ([r.role_name for r in contract.SERVICE_LINKED_ROLES], [])


@cdk
def test_check_setup_reports_credentials_of_another_account(deployed, tmp_path):
    elsewhere = tmp_path / "user_config"
    elsewhere.write_text(deployed.config_file.read_text())
    write_annex_macros(elsewhere, {contract.MACRO_AWS_ACCOUNT_ID: "999999999999"})
    result = check_setup(session=deployed.aws.session(), config_file=elsewhere, collector="x")
    [problem] = result.problems
    assert "999999999999" in problem.what and deployed.aws.account_id in problem.what
    assert "credentials of account 999999999999" in problem.next_step
    with pytest.raises(WrongAccount):
        raise_for_problems(result)


@cdk
def test_check_setup_reports_a_region_without_a_setup(deployed):
    other = "eu-west-1" if deployed.aws.region != "eu-west-1" else "us-west-2"
    result = check_setup(
        session=deployed.aws.session(region_name=other),
        config_file=deployed.config_file,
        collector="x",
    )
    [problem] = result.problems
    assert problem.what.startswith(f"no setup is recorded for {other}")
    assert f"-aws-region {deployed.aws.region}" in problem.next_step
    with pytest.raises(SetupMissing):
        raise_for_problems(result)


@cdk
def test_check_setup_detects_a_drifted_macro(deployed, collector, tmp_path):
    drifted = tmp_path / "user_config"
    drifted.write_text(deployed.config_file.read_text())
    write_annex_macros(drifted, {contract.OUTPUT_CONFIG_BUCKET.macro: "someone-elses-bucket"})
    result = check_setup(
        session=deployed.aws.session(),
        config_file=drifted,
        collector=collector,
        connectivity_probe=_connectivity_handler(),
    )
    assert not result.ok
    [problem] = result.problems
    assert contract.OUTPUT_CONFIG_BUCKET.macro in problem.what
    assert "someone-elses-bucket" in problem.what
    assert "condor_annex -setup" in problem.next_step


@cdk
def test_check_setup_reports_an_unreachable_collector(deployed):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    result = check_setup(
        session=deployed.aws.session(),
        config_file=deployed.config_file,
        collector=f"127.0.0.1:{port}",
        connectivity_probe=_connectivity_handler(),
    )
    [problem] = result.problems
    assert problem.what.startswith("AWS cannot reach the collector")
    assert str(port) in problem.next_step


@cdk
def test_check_setup_without_macros_says_run_setup(deployed, tmp_path):
    empty = tmp_path / "user_config"
    empty.write_text(USER_LINES)
    result = check_setup(session=deployed.aws.session(), config_file=empty, collector="x")
    [problem] = result.problems
    assert "condor_annex -setup" in problem.next_step


@cdk
def test_check_setup_with_credentials_aws_rejects_names_the_fix(deployed):
    deployed.aws.enforce_iam(True)
    try:
        session = deployed.aws.session(
            aws_access_key_id="AKIANOBODYKNOWS00000", aws_secret_access_key="wrong"
        )
        with pytest.raises(CredentialsError, match="get-caller-identity") as info:
            check_setup(session=session, config_file=deployed.config_file, collector="x")
        assert info.value.exit_code == CredentialsError.exit_code
    finally:
        deployed.aws.enforce_iam(deployed.aws.state.iam_engine_default)


@cdk
def test_destroy_refuses_while_an_annex_instance_runs(deployed):
    ec2 = deployed.aws.client("ec2")
    image = STOCK_IMAGE
    instance = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": contract.TAG_ANNEX_NAME, "Value": "busy-annex"}],
            }
        ],
    )["Instances"][0]["InstanceId"]
    try:
        with pytest.raises(AnnexError, match="busy-annex") as info:
            destroy_setup(
                session=deployed.aws.session(),
                config_file=deployed.config_file,
                stack_name=contract.STACK_NAME,
                region=deployed.aws.region,
                project_dir=PROJECT_DIR,
                env=deployed.env,
            )
        assert "condor_annex off" in str(info.value)
        assert _stack_outputs(deployed.aws, contract.STACK_NAME)
        assert read_annex_macros(deployed.config_file)
    finally:
        ec2.terminate_instances(InstanceIds=[instance])


@cdk
def test_destroy_refuses_while_a_lease_is_recorded(deployed):
    s3 = deployed.aws.client("s3")
    bucket = deployed.result.outputs[contract.OUTPUT_CONFIG_BUCKET.key]
    s3.put_object(Bucket=bucket, Key=contract.lease_key("leased-annex"), Body=b"{}")
    try:
        with pytest.raises(AnnexError, match="leased-annex"):
            destroy_setup(
                session=deployed.aws.session(),
                config_file=deployed.config_file,
                stack_name=contract.STACK_NAME,
                region=deployed.aws.region,
                project_dir=PROJECT_DIR,
                env=deployed.env,
            )
    finally:
        s3.delete_object(Bucket=bucket, Key=contract.lease_key("leased-annex"))


def _rerun_setup(deployed: Deployed, pool_cidrs: list[str]) -> SetupResult:
    keys = deployed.config_file.parent
    return run_setup(
        region=deployed.aws.region,
        pool_cidrs=pool_cidrs,
        config_file=deployed.config_file,
        project_dir=PROJECT_DIR,
        env=deployed.env,
        credentials_files=(keys / "publicKeyFile", keys / "privateKeyFile"),
    )


def _pool_ingress(aws: LocalAws, group_ids: str) -> set[str]:
    """The address ranges the setup's security groups admit to HTCondor's port."""
    groups = aws.client("ec2").describe_security_groups(GroupIds=group_ids.split(","))
    return {
        ip_range["CidrIp"]
        for group in groups["SecurityGroups"]
        for permission in group["IpPermissions"]
        if permission.get("FromPort") == HTCONDOR_PORT
        for ip_range in permission.get("IpRanges", [])
    }


def _change_sets(aws: LocalAws) -> list[dict[str, Any]]:
    summaries: list[dict[str, Any]] = aws.client("cloudformation").list_change_sets(
        StackName=contract.STACK_NAME
    )["Summaries"]
    return summaries


def _create_one_instance_annex(
    deployed: Deployed, collector: str, tmp_path: Path
) -> tuple[Any, AnnexClients, Any]:
    """`create` from what `-setup` recorded in the user config (one on-demand instance)."""
    region = deployed.aws.region
    clients = AnnexClients.from_session(region=region)
    clients.ec2.create_tags(
        Resources=[STOCK_IMAGE], Tags=[{"Key": READY_IMAGE_TAG, "Value": "tests"}]
    )
    key_file = tmp_path / "POOL"
    write_scrambled_key(key_file, POOL_KEY)
    probe = _connectivity_handler()
    request = CreateRequest(
        annex_name="after_update",
        collector=collector,
        ami_id=STOCK_IMAGE,
        owner="alice",
        signing_key_file=key_file,
        trust_domain=TRUST_DOMAIN,
        count=1,
        duration_seconds=3600,
    )
    hooks = CreateHooks(
        connectivity_probe=lambda host, port: probe({"host": host, "port": port, "timeout": 2})
    )
    settings = load_settings(deployed.config_file, region)
    return settings, clients, create_annex(request, settings=settings, clients=clients, hooks=hooks)


@cdk
@pytest.mark.reliability(
    "setup", "re-running `-setup` with a changed `-pool-cidr`, twice, each time re-run unchanged"
)
def test_rerunning_setup_with_a_changed_pool_cidr_updates_the_stack_twice_over(
    deployed, collector, tmp_path, monkeypatch, observed
):
    """Re-running `-setup` to update: each changed `-pool-cidr` becomes the security group's
    ingress in place (the group annexes run in stays), the outputs are recorded again, no
    change set is left behind, an unchanged re-run after it is a no-op, `-check-setup` is
    green, and an annex can be created from the updated setup."""
    aws = deployed.aws
    group_ids = _stack_outputs(aws, contract.STACK_NAME)[contract.OUTPUT_SECURITY_GROUP_IDS.key]
    assert _pool_ingress(aws, group_ids) == {POOL_CIDR}

    for pool_cidrs in ([NEW_POOL_CIDR], [NEW_POOL_CIDR, SECOND_NEW_POOL_CIDR]):
        updated = _rerun_setup(deployed, pool_cidrs)
        wanted = ", ".join(pool_cidrs)

        (stack,) = aws.client("cloudformation").describe_stacks(StackName=contract.STACK_NAME)[
            "Stacks"
        ]
        observed.check(
            f"-pool-cidr {wanted}: stack {stack['StackStatus']}",
            updated.changed and stack["StackStatus"] == "UPDATE_COMPLETE",
        )
        macros = read_annex_macros(deployed.config_file)
        observed.check(
            "outputs recorded again as macros",
            updated.outputs == _stack_outputs(aws, contract.STACK_NAME)
            and all(macros[o.macro] == updated.outputs[o.key] for o in contract.STACK_OUTPUTS),
        )
        ingress = _pool_ingress(aws, group_ids)
        observed.check(
            f"same security group, admitting {', '.join(sorted(ingress))}",
            updated.outputs[contract.OUTPUT_SECURITY_GROUP_IDS.key] == group_ids
            and ingress == set(pool_cidrs),
        )
        observed.equal("change sets left: {}", len(_change_sets(aws)), 0)

        again = _rerun_setup(deployed, pool_cidrs)
        observed.check(
            f"unchanged re-run: changed={again.changed}, same outputs and ingress, "
            f"{len(_change_sets(aws))} change sets left",
            not again.changed
            and again.outputs == updated.outputs
            and _pool_ingress(aws, group_ids) == set(pool_cidrs)
            and _change_sets(aws) == [],
        )

    checked = check_setup(
        session=aws.session(),
        config_file=deployed.config_file,
        collector=collector,
        connectivity_probe=_connectivity_handler(),
    )
    observed.check(
        f"-check-setup problems: {len(checked.problems)}", checked.problems == [], checked.problems
    )

    monkeypatch.setenv("PATH", os.defpath)  # tokens minted in-process, not by condor_token_create
    settings, clients, made = _create_one_instance_annex(deployed, collector, tmp_path)
    try:
        (reservation,) = clients.ec2.describe_instances(InstanceIds=made.instance_ids)[
            "Reservations"
        ]
        (instance,) = reservation["Instances"]
        observed.check(
            "an annex created afterwards runs in that security group",
            [g["GroupId"] for g in instance["SecurityGroups"]] == group_ids.split(","),
        )
    finally:
        annex_off("after_update", settings=settings, clients=clients)


@cdk
def test_a_failed_setup_update_says_why_and_changes_nothing(deployed):
    """A re-run that CloudFormation refuses (a VPC that does not exist) fails with the reason
    and the next step; the stack, its security group rules and the user config stay as they
    were, and no change set is left behind."""
    aws = deployed.aws
    before_config = deployed.config_file.read_bytes()
    before_outputs = _stack_outputs(aws, contract.STACK_NAME)
    group_ids = before_outputs[contract.OUTPUT_SECURITY_GROUP_IDS.key]
    before_ingress = _pool_ingress(aws, group_ids)
    keys = deployed.config_file.parent
    missing_vpc = "vpc-0123456789abcdef0"

    with pytest.raises(CdkFailed) as info:
        run_setup(
            region=aws.region,
            pool_cidrs=[POOL_CIDR],
            vpc_id=missing_vpc,
            config_file=deployed.config_file,
            project_dir=PROJECT_DIR,
            env=deployed.env,
            credentials_files=(keys / "publicKeyFile", keys / "privateKeyFile"),
        )

    message = str(info.value)
    assert f"parameter value {missing_vpc}" in message and "does not exist" in message
    assert "re-run `condor_annex -setup`" in message
    (stack,) = aws.client("cloudformation").describe_stacks(StackName=contract.STACK_NAME)["Stacks"]
    assert stack["StackStatus"] in ("CREATE_COMPLETE", "UPDATE_COMPLETE")
    assert _stack_outputs(aws, contract.STACK_NAME) == before_outputs
    assert _pool_ingress(aws, group_ids) == before_ingress
    assert _change_sets(aws) == []
    assert deployed.config_file.read_bytes() == before_config


@cdk
def test_setup_in_a_second_region_records_a_per_region_setup(deployed, collector, tmp_path):
    """`-setup -aws-region R2` after a setup in R1 deploys R2's own stack and records it under
    the per-region names (`US_WEST_2.ANNEX_DEFAULT_*`), leaving R1's plain macros alone; each
    region then reads its own setup and `-check-setup -aws-region R2` is green."""
    aws, first_region = deployed.aws, deployed.aws.region
    second_region = SECOND_REGION
    assert second_region != first_region
    # A copy of the user config: the module's last test destroys the first region's setup.
    config = tmp_path / "user_config"
    config.write_text(deployed.config_file.read_text())
    first = read_annex_macros(config)
    keys = deployed.config_file.parent

    west = run_setup(
        region=second_region,
        pool_cidrs=[POOL_CIDR],
        config_file=config,
        project_dir=PROJECT_DIR,
        env=deployed.env,
        credentials_files=(keys / "publicKeyFile", keys / "privateKeyFile"),
    )

    west_cfn = aws.client("cloudformation", region_name=second_region)
    (stack,) = west_cfn.describe_stacks(StackName=contract.STACK_NAME)["Stacks"]
    assert f":{second_region}:" in stack["StackId"]
    macros = read_annex_macros(config)
    prefix = region_prefix(second_region)
    for output in contract.STACK_OUTPUTS:
        assert macros[f"{prefix}.{output.macro}"] == west.outputs[output.key], output.macro
        assert macros[output.macro] == first[output.macro], output.macro
    assert macros[contract.MACRO_AWS_REGION] == first_region
    assert (
        west.outputs[contract.OUTPUT_CONFIG_BUCKET.key]
        != first[contract.OUTPUT_CONFIG_BUCKET.macro]
    )
    assert (
        load_settings(config, second_region).config_bucket
        == (west.outputs[contract.OUTPUT_CONFIG_BUCKET.key])
    )
    assert (
        load_settings(config, first_region).config_bucket
        == (first[contract.OUTPUT_CONFIG_BUCKET.macro])
    )
    checked = check_setup(
        session=aws.session(region_name=second_region),
        config_file=config,
        collector=collector,
        connectivity_probe=_connectivity_handler(),
    )
    assert checked.problems == []


@cdk
def test_destroy_removes_the_stack_the_bucket_contents_and_the_macros(deployed):
    """Last: it tears the module's deployment down."""
    s3 = deployed.aws.client("s3")
    bucket = deployed.result.outputs[contract.OUTPUT_CONFIG_BUCKET.key]
    s3.put_object(Bucket=bucket, Key=contract.config_key("old-annex"), Body=b"stale")
    steps: list[str] = []
    destroy_setup(
        session=deployed.aws.session(),
        config_file=deployed.config_file,
        stack_name=contract.STACK_NAME,
        region=deployed.aws.region,
        project_dir=PROJECT_DIR,
        # Day-to-day verbs use the standard credential chain; only -setup reads key files.
        env={**deployed.env, **deployed.aws.env()},
        progress=steps.append,
    )
    stacks = deployed.aws.client("cloudformation").list_stacks()["StackSummaries"]
    live = [
        s
        for s in stacks
        if s["StackName"] == contract.STACK_NAME and s["StackStatus"] != "DELETE_COMPLETE"
    ]
    assert live == []
    roles = [r["Arn"] for r in deployed.aws.client("iam").list_roles()["Roles"]]
    assert deployed.result.outputs[contract.OUTPUT_INSTANCE_ROLE_ARN.key] not in roles
    assert read_annex_macros(deployed.config_file) == {}
    assert deployed.config_file.read_text() == USER_LINES
    assert any("emptying bucket" in s for s in steps)


def test_setup_refuses_group_readable_key_files_before_touching_aws(tmp_path):
    access, secret = _key_files(tmp_path, mode=0o640)
    with pytest.raises(InvalidInput, match=f"chmod 600 {access}"):
        run_setup(
            region="us-east-1",
            pool_cidrs=[POOL_CIDR],
            config_file=tmp_path / "user_config",
            project_dir=PROJECT_DIR,
            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
            credentials_files=(access, secret),
        )
    assert not (tmp_path / "user_config").exists()


def test_setup_without_pool_cidrs_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="-pool-cidr"):
        run_setup(region="us-east-1", pool_cidrs=[], config_file=tmp_path / "user_config")


@pytest.mark.parametrize(
    "line,expected",
    [
        (
            "HTCondorAnnexSetup |  3/15 | 1:02:03 PM | CREATE_COMPLETE      | "
            "AWS::S3::Bucket | Config/Bucket (ConfigBucketA1B2)",
            "[3/15] CREATE_COMPLETE AWS::S3::Bucket Config/Bucket (ConfigBucketA1B2)",
        ),
        ("✨  Synthesis time: 4.2s", None),
    ],
)
def test_cdk_event_lines_become_per_resource_progress(line, expected):
    assert setup_verbs._progress_line(line) == expected


@pytest.mark.parametrize(
    "collector,expected",
    [
        ("cm.example.org", ("cm.example.org", 9618)),
        ("cm.example.org:9619", ("cm.example.org", 9619)),
        ("cm.example.org:9618?sock=collector", ("cm.example.org", 9618)),
        ("[2001:db8::1]:9620", ("2001:db8::1", 9620)),
    ],
)
def test_collector_addresses_parse_like_htcondor_writes_them(collector, expected):
    assert setup_verbs.parse_collector(collector) == expected


# These use the per-test `aws` fixture, which resets the local AWS: keep them after the tests
# that share the module's deployment.


def test_destroy_without_a_stack_only_removes_the_macros(aws, tmp_path):
    config = tmp_path / "user_config"
    config.write_text(USER_LINES)
    write_annex_macros(
        config,
        {contract.OUTPUT_CONFIG_BUCKET.macro: "gone-bucket", contract.MACRO_AWS_REGION: aws.region},
    )
    steps: list[str] = []
    destroy_setup(
        session=aws.session(),
        config_file=config,
        stack_name=contract.STACK_NAME,
        region=aws.region,
        project_dir=PROJECT_DIR,
        progress=steps.append,
    )
    assert config.read_text() == USER_LINES
    assert any("does not exist" in s for s in steps)


def test_check_setup_names_the_missing_stack(aws, tmp_path):
    config = tmp_path / "user_config"
    write_annex_macros(config, {contract.MACRO_AWS_REGION: aws.region})
    result = check_setup(session=aws.session(), config_file=config, collector="x")
    [problem] = result.problems
    assert f"does not exist in {aws.region}" in problem.what
    assert f"condor_annex -setup -aws-region {aws.region}" in problem.next_step
    with pytest.raises(SetupMissing):
        raise_for_problems(result)
