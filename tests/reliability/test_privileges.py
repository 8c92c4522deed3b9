"""Least privilege: the setup's operator policy and instance role, against what the CLI and agent do.

The judge is the local AWS's IAM engine (annex_sandbox/authz: `@cloud-copilot/iam-simulate` over
the Service Authorization Reference): the CLI runs its real flows with credentials of an IAM user
holding exactly the deployed operator policy, and the engine decides every request with the
resource ARNs and condition keys AWS uses, including what AWS does on the caller's behalf (the
Spot Fleet role's launch, iam:PassRole). Every "allows" case asserts the calls it expects were
made and allowed (count > 0) and nothing was refused; a mutation case shows a removed grant is
caught. `policy_eval` (the same engine, without a request) judges only requests no flow makes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from annex_sandbox.principals import create_user, delete_user
from condor_annex import contract, images
from condor_annex.annex_settings import USER_DEFAULT_MACROS, AnnexClients
from condor_annex.errors import CredentialsError, InvalidInput
from condor_annex.setup import raise_for_problems
from condor_annex.user_config import write_annex_macros
from tests.integration.annex_env import AnnexEnv
from tests.reliability.conftest import cli, od_args
from tests.reliability.policy_eval import ALLOW, Request, evaluate

AREA = "privileges"
pytestmark = pytest.mark.xdist_group("reliability-privileges")
mark = pytest.mark.reliability


# --- The deployed documents ---------------------------------------------------------------------


def operator_documents(env: AnnexEnv) -> list[dict[str, Any]]:
    """The operator policy, then the operator launch policy (split by verb to fit IAM's size)."""
    iam = env.local.client("iam")
    documents = []
    for arn in (env.settings.operator_policy_arn, env.settings.operator_launch_policy_arn):
        version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]
        documents.append(_document(document["Document"]))
    return documents


def instance_role_documents(env: AnnexEnv) -> dict[str, dict[str, Any]]:
    iam = env.local.client("iam")
    role = env.settings.instance_role_arn.rsplit("/", 1)[-1]
    names = iam.list_role_policies(RoleName=role)["PolicyNames"]
    attached = iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
    assert attached == [], "the instance role has only inline policies"
    return {
        n: _document(iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"])
        for n in names
    }


def _document(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)


# --- The operator's real requests, decided by the local AWS's IAM engine ------------------------

_users = iter(range(1, 10_000))


@contextmanager
def operator_credentials(
    env: AnnexEnv, documents: list[dict[str, Any]] | None = None
) -> Iterator[tuple[AnnexClients, str]]:
    """(clients, user ARN) of a fresh IAM user holding the deployed operator policies (or
    `documents`); the local AWS's IAM engine decides every request those clients make."""
    iam = env.local.client("iam")
    user = f"annex-operator-{next(_users)}"
    policies = [
        iam.create_policy(PolicyName=f"{user}-policy-{number}", PolicyDocument=json.dumps(doc))[
            "Policy"
        ]["Arn"]
        for number, doc in enumerate(documents or operator_documents(env))
    ]
    keys = create_user(iam, user, managed_policy_arns=policies)
    env.local.enforce_iam(True)
    try:
        yield _clients_for(keys.access_key_id, keys.secret_access_key, env), keys.arn
    finally:
        delete_user(iam, user)
        for policy in policies:
            iam.delete_policy(PolicyArn=policy)


def decisions(env: AnnexEnv, principal: str) -> tuple[Counter[str], list[str]]:
    """(allowed operations with counts, refusals) the engine decided for `principal`."""
    allowed: Counter[str] = Counter()
    refused: list[str] = []
    for operation, caller, _, ok, why in list(env.local.state.authorizer.decisions):
        if caller != principal:
            continue
        if ok:
            allowed[operation] += 1
        else:
            refused += [f"{operation}: {w}" for w in why]
    return allowed, refused


def claim_outcomes(observed: Any, source: str, outcomes: dict[str, str], expected: Any) -> None:
    """One asserted claim per outcome: `expected` maps each key to the answer (or the set of
    answers) it must get; a bare string or set applies to every key."""
    for what, outcome in outcomes.items():
        want = expected.get(what) if isinstance(expected, dict) else expected
        allowed = want if isinstance(want, (set, frozenset)) else {want}
        observed.check(f"{source}: {what}: {outcome}", outcome in allowed, f"expected {want}")


def _run_as_operator(
    env: AnnexEnv, observed: Any, what: str, expected: set[str], *argv: str, **hooks: Any
) -> Any:
    """Run the CLI with operator credentials; every expected operation was made and allowed."""
    with operator_credentials(env) as (clients, arn):
        run = cli(env, *argv, clients=clients, **hooks)
    allowed, refused = decisions(env, arn)
    observed.check(
        f"engine: {what} made {sum(allowed.values())} allowed requests ({len(allowed)} operations)",
        sum(allowed.values()) > 0,
    )
    observed.check(f"refused: {', '.join(refused) or 'none'}", refused == [], refused)
    observed.check(f"exit {run.code}", run.code == 0, run.err)
    missing = {op for op in expected if allowed[op] == 0}
    observed.check(f"made {', '.join(sorted(expected))}", not missing, f"never made: {missing}")
    return run


@mark(AREA, "operator credentials, IAM engine: an on-demand create")
def test_operator_policy_allows_on_demand_create(env: AnnexEnv, observed: Any) -> None:
    expected = {"ec2:RunInstances", "s3:PutObject", "scheduler:CreateSchedule"}
    try:
        _run_as_operator(env, observed, "create", expected, *od_args(env, "op-create"))
    finally:
        cli(env, "off", "-annex-name", "op-create")


@mark(AREA, "operator credentials, IAM engine: `status`")
def test_operator_policy_allows_status(env: AnnexEnv, observed: Any) -> None:
    assert cli(env, *od_args(env, "op-status")).code == 0
    try:
        run = _run_as_operator(
            env, observed, "status", {"ec2:DescribeInstances"}, "status", "--json"
        )
    finally:
        cli(env, "off", "-annex-name", "op-status")
    assert run.out.count('"instance_id"') == 1


@mark(AREA, "operator credentials, IAM engine: `off`")
def test_operator_policy_allows_off(env: AnnexEnv, observed: Any) -> None:
    assert cli(env, *od_args(env, "op-off")).code == 0
    expected = {"ec2:TerminateInstances", "s3:DeleteObject", "scheduler:DeleteSchedule"}
    _run_as_operator(env, observed, "off", expected, "off", "-annex-name", "op-off")


@mark(AREA, "operator credentials, IAM engine: the default image from AWS's public SSM parameter")
def test_operator_looks_up_the_default_image(env: AnnexEnv, observed: Any) -> None:
    """`images.default_image` reads `/aws/service/ami-amazon-linux-latest/...`, a public
    parameter whose ARN has no account (`arn:aws:ssm:<region>::parameter/aws/service/...`,
    Systems Manager User Guide, "Working with public parameters"): the engine judges it as a
    `parameter` against the policy's Resource. Allowed with the deployed policies; refused
    ("next:" step named) without the ReadDefaultImageParameter grant."""
    default = env.local.client("ssm").get_parameter(Name=images.DEFAULT_IMAGE_PARAMETERS["x86_64"])[
        "Parameter"
    ]["Value"]
    with operator_credentials(env) as (clients, arn):
        found = images.default_image(clients.ssm, "x86_64")
        allowed, refused = decisions(env, arn)
    mutants = [_without_action(d, "ssm:GetParameter") for d in operator_documents(env)]
    with operator_credentials(env, mutants) as (clients, arn):
        with pytest.raises(InvalidInput) as raised:
            images.default_image(clients.ssm, "x86_64")
        mutant_refused = decisions(env, arn)[1]
    observed.equal("with the deployed policies: {}", found, default)
    observed.check(
        f"engine allowed ssm:GetParameter ({allowed['ssm:GetParameter']}x), refused {refused}",
        allowed["ssm:GetParameter"] == 1 and refused == [],
    )
    observed.check(
        f"without the grant: {raised.value}",
        "AccessDenied" in str(raised.value) and bool(raised.value.next_step),
    )
    observed.check(
        f"the engine refused it (not an error): {mutant_refused}",
        len(mutant_refused) == 1
        and "ssm:GetParameter on arn:aws:ssm:" in mutant_refused[0]
        and "::parameter/aws/service/ami-amazon-linux-latest/" in mutant_refused[0]
        and mutant_refused[0].endswith("(ImplicitlyDenied)"),
    )


@mark(AREA, "operator credentials, IAM engine: a Spot Fleet create (fleet role launches too)")
def test_operator_policy_allows_spot_fleet_create(env: AnnexEnv, observed: Any) -> None:
    argv = ["-annex-name", "op-spot", "-slots", "2", "-aws-ami-id", env.ami_id,
            "-aws-spot-instance-types", "m5.large"]  # fmt: skip
    expected = {"ec2:CreateLaunchTemplate", "ec2:RequestSpotFleet", "s3:PutObject"}
    try:
        _run_as_operator(env, observed, "Spot Fleet create", expected, *argv)
    finally:
        cli(env, "off", "-annex-name", "op-spot")


@mark(AREA, "mutation: the operator policy without its terminate grant fails `off`")
def test_a_removed_grant_is_caught(env: AnnexEnv, observed: Any) -> None:
    """The "allows" tests can fail: drop one statement and the engine refuses the flow."""
    assert cli(env, *od_args(env, "op-mutant")).code == 0
    documents = operator_documents(env)
    mutants = [
        {**d, "Statement": [s for s in d["Statement"] if s.get("Sid") != "EndAnnexInstances"]}
        for d in documents
    ]
    removed = sum(len(d["Statement"]) - len(m["Statement"]) for d, m in zip(documents, mutants))
    assert removed == 1
    try:
        with operator_credentials(env, mutants) as (clients, arn):
            run = cli(env, "off", "-annex-name", "op-mutant", clients=clients)
        _, refused = decisions(env, arn)
    finally:
        cli(env, "off", "-annex-name", "op-mutant")
    observed.check(f"exit {run.code}", run.code != 0)
    observed.check(
        f"refused: {', '.join(refused)}",
        any(r.startswith("ec2:TerminateInstances") for r in refused),
        refused,
    )


@mark(AREA, "mutation: an operator without ec2:RunInstances cannot request a Spot Fleet")
def test_spot_fleet_needs_the_requesters_own_run_instances(env: AnnexEnv, observed: Any) -> None:
    """EC2 User Guide, "Spot Fleet permissions": the user's policy must include ec2:RunInstances
    ("Required to launch instances in a Spot Fleet"), though the fleet role does the launching.
    With RunInstances taken out of the operator policies (the fleet role keeps its own), the
    Spot Fleet create is refused on the operator's own RunInstances, and rolls back."""
    mutants = [_without_action(d, "ec2:RunInstances") for d in operator_documents(env)]
    assert "ec2:RunInstances" not in json.dumps(mutants)
    argv = ["-annex-name", "op-spot-norun", "-slots", "1", "-aws-ami-id", env.ami_id,
            "-aws-spot-instance-types", "m5.large"]  # fmt: skip
    checked = len(env.local.state.authorizer.checks)
    try:
        with operator_credentials(env, mutants) as (clients, arn):
            run = cli(env, *argv, clients=clients)
        _, refused = decisions(env, arn)
        own_launch = [
            (action, resource, ok)
            for principal, action, resource, ok in env.local.state.authorizer.checks[checked:]
            if principal == arn and action == "ec2:RunInstances"
        ]
    finally:
        cli(env, "off", "-annex-name", "op-spot-norun")
    observed.check(f"exit {run.code}", run.code != 0, run.err)
    observed.check(
        f"refused: {', '.join(refused)}",
        any(r.startswith("ec2:RequestSpotFleet: ec2:RunInstances on ") for r in refused),
        refused,
    )
    observed.check(
        f"the operator's own RunInstances checks: {own_launch}",
        bool(own_launch) and not any(ok for _, _, ok in own_launch),
    )
    observed.check("nothing left running", env.live_instances("op-spot-norun") == [])


def _code(call: Any) -> str:
    try:
        call()
        return "allowed"
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])


@mark(AREA, "operator credentials, IAM engine: launches the operator must not make")
def test_operator_cannot_launch_outside_the_guard_rails(env: AnnexEnv, observed: Any) -> None:
    iam = env.local.client("iam")
    admin_profile = iam.create_instance_profile(InstanceProfileName="Admin")["InstanceProfile"]
    annex_tags = [
        {"ResourceType": kind, "Tags": [{"Key": contract.TAG_ANNEX_NAME, "Value": "x"}]}
        for kind in ("instance", "volume")
    ]
    launch = {
        "ImageId": env.ami_id,
        "MinCount": 1,
        "MaxCount": 1,
        "IamInstanceProfile": {"Arn": env.settings.instance_profile_arn},
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
        "SecurityGroupIds": list(env.settings.security_group_ids),
        "TagSpecifications": annex_tags,
        "DryRun": True,
    }
    elsewhere = _another_vpc(env)
    try:
        with operator_credentials(env) as (clients, arn):
            ec2 = clients.ec2
            outcomes = {
                "guarded launch (dry run)": _code(lambda: ec2.run_instances(**launch)),
                "without the annex tag": _code(
                    lambda: ec2.run_instances(**{**launch, "TagSpecifications": []})
                ),
                "with another instance profile": _code(
                    lambda: ec2.run_instances(
                        **{**launch, "IamInstanceProfile": {"Arn": admin_profile["Arn"]}}
                    )
                ),
                "without IMDSv2": _code(
                    lambda: ec2.run_instances(
                        **{**launch, "MetadataOptions": {"HttpTokens": "optional"}}
                    )
                ),
                "into another security group": _code(
                    lambda: ec2.run_instances(
                        **{**launch, "SecurityGroupIds": [elsewhere["default_group"]]}
                    )
                ),
                "into a subnet of another VPC": _code(
                    lambda: ec2.run_instances(**{**launch, "SubnetId": elsewhere["subnet"]})
                ),
            }
        refusals = decisions(env, arn)[1]
    finally:
        iam.delete_instance_profile(InstanceProfileName="Admin")
        _remove_vpc(env, elsewhere)
    claim_outcomes(
        observed,
        "engine",
        outcomes,
        {k: "DryRunOperation" if k == "guarded launch (dry run)" else "UnauthorizedOperation"
         for k in outcomes},
    )  # fmt: skip
    del refusals


def _another_vpc(env: AnnexEnv) -> dict[str, str]:
    """A VPC that is not the setup's, with a subnet, and the default VPC's default group (a
    security group that is not the setup's)."""
    ec2 = env.admin.ec2
    vpc = ec2.create_vpc(CidrBlock="10.99.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.99.1.0/24")["Subnet"]["SubnetId"]
    groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["default"]}])[
        "SecurityGroups"
    ]
    default_group = next(
        g["GroupId"] for g in groups if g["GroupId"] not in env.settings.security_group_ids
    )
    return {"vpc": vpc, "subnet": subnet, "default_group": default_group}


def _remove_vpc(env: AnnexEnv, made: dict[str, str]) -> None:
    env.admin.ec2.delete_subnet(SubnetId=made["subnet"])
    env.admin.ec2.delete_vpc(VpcId=made["vpc"])


@mark(AREA, "operator credentials, IAM engine: Spot Fleets from templates outside the guard rails")
def test_spot_fleet_cannot_launch_outside_the_guard_rails(env: AnnexEnv, observed: Any) -> None:
    """Nothing authorizes what a launch template holds when it is created (EC2 User Guide,
    "Control the use of launch templates"): an annex-tagged template may name another security
    group, profile or IMDSv1, and the Spot Fleet role's launch from it must be refused. (The
    local AWS refuses the request itself; AWS accepts it and records the failed launches in the
    fleet's history: either way no instance starts.)"""
    iam = env.local.client("iam")
    admin_profile = iam.create_instance_profile(InstanceProfileName="FleetAdmin")
    elsewhere = _another_vpc(env)
    annex_tag = [{"Key": contract.TAG_ANNEX_NAME, "Value": "guard"}]
    data = {
        "ImageId": env.ami_id,
        "IamInstanceProfile": {"Arn": env.settings.instance_profile_arn},
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
        "SecurityGroupIds": list(env.settings.security_group_ids),
        "TagSpecifications": [
            {"ResourceType": kind, "Tags": annex_tag} for kind in ("instance", "volume")
        ],
    }
    variants = {
        "guarded template": data,
        "template with another security group": {
            **data,
            "SecurityGroupIds": [elsewhere["default_group"]],
        },
        "template with another instance profile": {
            **data,
            "IamInstanceProfile": {"Arn": admin_profile["InstanceProfile"]["Arn"]},
        },
        "template without IMDSv2": {**data, "MetadataOptions": {"HttpTokens": "optional"}},
    }
    templates: dict[str, str] = {}
    fleets: list[str] = []
    try:
        for number, (what, template_data) in enumerate(variants.items()):
            templates[what] = env.admin.ec2.create_launch_template(
                LaunchTemplateName=f"guard-rail-{number}",
                LaunchTemplateData=template_data,
                TagSpecifications=[{"ResourceType": "launch-template", "Tags": annex_tag}],
            )["LaunchTemplate"]["LaunchTemplateId"]

        def request(template_id: str, subnet: str | None = None) -> str:
            # Not a dry run: EC2 decides the fleet role's launch only when the fleet launches.
            override: dict[str, Any] = {"InstanceType": "m5.large"}
            if subnet:
                override["SubnetId"] = subnet
            config = {
                "IamFleetRole": env.settings.spot_fleet_role_arn,
                "TargetCapacity": 1,
                "LaunchTemplateConfigs": [
                    {
                        "LaunchTemplateSpecification": {
                            "LaunchTemplateId": template_id,
                            "Version": "1",
                        },
                        "Overrides": [override],
                    }
                ],
                "TagSpecifications": [{"ResourceType": "spot-fleet-request", "Tags": annex_tag}],
            }
            try:
                answer = clients.ec2.request_spot_fleet(SpotFleetRequestConfig=config)
            except ClientError as exc:
                return str(exc.response["Error"]["Code"])
            fleets.append(answer["SpotFleetRequestId"])
            return "launched"

        with operator_credentials(env) as (clients, arn):
            outcomes = {what: request(t) for what, t in templates.items()}
            outcomes["guarded template into a subnet of another VPC"] = request(
                templates["guarded template"], elsewhere["subnet"]
            )
        refusals = decisions(env, arn)[1]
    finally:
        if fleets:
            env.admin.ec2.cancel_spot_fleet_requests(
                SpotFleetRequestIds=fleets, TerminateInstances=True
            )
        for template_id in templates.values():
            env.admin.ec2.delete_launch_template(LaunchTemplateId=template_id)
        iam.delete_instance_profile(InstanceProfileName="FleetAdmin")
        _remove_vpc(env, elsewhere)
    claim_outcomes(
        observed,
        "engine",
        outcomes,
        {k: "launched" if k == "guarded template" else "UnauthorizedOperation" for k in outcomes},
    )
    del refusals


@mark(AREA, "operator credentials, IAM engine: terminate an instance that has no annex tag")
def test_operator_cannot_terminate_untagged_instances(env: AnnexEnv, observed: Any) -> None:
    ec2 = env.admin.ec2
    other = ec2.run_instances(ImageId=env.ami_id, MinCount=1, MaxCount=1)["Instances"][0]
    with operator_credentials(env) as (clients, _):
        outcome = _code(lambda: clients.ec2.terminate_instances(InstanceIds=[other["InstanceId"]]))
    state = ec2.describe_instances(InstanceIds=[other["InstanceId"]])["Reservations"][0][
        "Instances"
    ][0]["State"]["Name"]
    ec2.terminate_instances(InstanceIds=[other["InstanceId"]])
    observed.equal("engine: {}", outcome, "UnauthorizedOperation")
    observed.equal("the instance is still {}", state, "running")


@mark(AREA, "operator policy: pass a role it must not (policy_eval, the same engine)")
def test_operator_cannot_pass_other_roles(env: AnnexEnv, observed: Any) -> None:
    documents = operator_documents(env)
    account = env.local.account_id
    outcomes = {
        "PassRole Admin to EC2": evaluate(
            documents,
            Request(
                "iam:PassRole",
                f"arn:aws:iam::{account}:role/Admin",
                {"iam:PassedToService": "ec2.amazonaws.com"},
            ),
        ),
        "PassRole the instance role to Lambda": evaluate(
            documents,
            Request(
                "iam:PassRole",
                env.settings.instance_role_arn,
                {"iam:PassedToService": "lambda.amazonaws.com"},
            ),
        ),
    }
    for what, outcome in outcomes.items():
        observed.check(f"policy_eval: {what}: {outcome}", outcome != ALLOW)


@mark(AREA, "operator credentials, IAM engine: S3 outside config-*/leases/*")
def test_operator_cannot_touch_other_objects(env: AnnexEnv, observed: Any) -> None:
    bucket = env.settings.config_bucket
    with operator_credentials(env) as (clients, _):
        outcomes = {
            "put evil.sh": _code(
                lambda: clients.s3.put_object(Bucket=bucket, Key="evil.sh", Body=b"x")
            ),
            "put config-x.tar.gz": _code(
                lambda: clients.s3.put_object(
                    Bucket=bucket, Key=contract.config_key("x"), Body=b"x"
                )
            ),
        }
    env.admin.s3.delete_object(Bucket=bucket, Key=contract.config_key("x"))
    claim_outcomes(
        observed,
        "engine",
        outcomes,
        {"put evil.sh": "AccessDenied", "put config-x.tar.gz": "allowed"},
    )


def _clients_for(
    access_key: str, secret: str, env: AnnexEnv, token: str | None = None
) -> AnnexClients:
    import boto3

    from condor_annex.aws import make_client

    session = boto3.Session(
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        region_name=env.local.region,
    )
    return AnnexClients(
        ec2=make_client(session, "ec2", max_attempts=2),
        s3=make_client(session, "s3", max_attempts=2),
        scheduler=make_client(session, "scheduler", max_attempts=2),
        lambda_=make_client(session, "lambda", max_attempts=2),
        ssm=make_client(session, "ssm", max_attempts=2),
        region=env.local.region,
    )


# --- The instance role ------------------------------------------------------------------------


@contextmanager
def instance_role_credentials(env: AnnexEnv) -> Iterator[tuple[AnnexClients, Any]]:
    """(clients, iam client) of a role holding exactly the deployed instance role's policies."""
    iam = env.local.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{env.local.account_id}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = "annex-instance-copy"
    arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    for name, document in instance_role_documents(env).items():
        iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(document))
    creds = env.local.client("sts").assume_role(RoleArn=arn, RoleSessionName="instance")[
        "Credentials"
    ]
    clients = _clients_for(
        creds["AccessKeyId"], creds["SecretAccessKey"], env, creds["SessionToken"]
    )
    import boto3

    role_iam = boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=env.local.region,
    ).client("iam")
    env.local.enforce_iam(True)
    try:
        yield clients, role_iam
    finally:
        env.local.enforce_iam(env.local.state.iam_engine_default)
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            iam.delete_role_policy(RoleName=role, PolicyName=name)
        iam.delete_role(RoleName=role)


def _try(call: Any) -> str:
    try:
        call()
        return "allowed"
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])


@mark(AREA, "instance role credentials, IAM engine: S3 reads and writes")
def test_instance_role_reads_only_config_tarballs(env: AnnexEnv, observed: Any) -> None:
    bucket = env.settings.config_bucket
    s3 = env.admin.s3
    for key in (contract.config_key("mine"), contract.lease_key("mine"), "other.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    try:
        with instance_role_credentials(env) as (clients, _):
            role_s3 = clients.s3
            outcomes = {
                "get config-mine.tar.gz": _try(
                    lambda: role_s3.get_object(Bucket=bucket, Key=contract.config_key("mine"))
                ),
                "get leases/mine.json": _try(
                    lambda: role_s3.get_object(Bucket=bucket, Key=contract.lease_key("mine"))
                ),
                "get other.txt": _try(lambda: role_s3.get_object(Bucket=bucket, Key="other.txt")),
                "list bucket": _try(lambda: role_s3.list_objects_v2(Bucket=bucket)),
                "put config-x.tar.gz": _try(
                    lambda: role_s3.put_object(
                        Bucket=bucket, Key=contract.config_key("x"), Body=b"x"
                    )
                ),
                "delete config-mine.tar.gz": _try(
                    lambda: role_s3.delete_object(Bucket=bucket, Key=contract.config_key("mine"))
                ),
            }
    finally:
        for key in (contract.config_key("mine"), contract.lease_key("mine"), "other.txt"):
            s3.delete_object(Bucket=bucket, Key=key)
    claim_outcomes(
        observed,
        "engine",
        outcomes,
        {k: "allowed" if k == "get config-mine.tar.gz" else "AccessDenied" for k in outcomes},
    )


@mark(AREA, "instance role credentials, IAM engine: terminate, launch, pass roles, read IAM")
def test_instance_role_cannot_terminate_or_launch(env: AnnexEnv, observed: Any) -> None:
    ec2 = env.admin.ec2
    victim = ec2.run_instances(ImageId=env.ami_id, MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    with instance_role_credentials(env) as (clients, role_iam):
        outcomes = {
            "DescribeInstances": _try(lambda: clients.ec2.describe_instances(InstanceIds=[victim])),
            "TerminateInstances": _try(
                lambda: clients.ec2.terminate_instances(InstanceIds=[victim])
            ),
            "RunInstances": _try(
                lambda: clients.ec2.run_instances(ImageId=env.ami_id, MinCount=1, MaxCount=1)
            ),
            "CancelSpotFleetRequests": _try(
                lambda: clients.ec2.cancel_spot_fleet_requests(
                    SpotFleetRequestIds=["sfr-1"], TerminateInstances=True
                )
            ),
            "iam:ListRoles": _try(lambda: role_iam.list_roles()),
            "iam:CreateAccessKey": _try(lambda: role_iam.create_access_key()),
        }
    state = ec2.describe_instances(InstanceIds=[victim])["Reservations"][0]["Instances"][0][
        "State"
    ]["Name"]
    ec2.terminate_instances(InstanceIds=[victim])
    documents = list(instance_role_documents(env).values())
    region, account = env.local.region, env.local.account_id
    other_role = evaluate(
        documents,
        Request("iam:GetRolePolicy", f"arn:aws:iam::{account}:role/Admin"),
    )
    own_role = evaluate(documents, Request("iam:GetRolePolicy", env.settings.instance_role_arn))
    refusals = {"AccessDenied", "UnauthorizedOperation"}
    claim_outcomes(
        observed,
        "engine",
        outcomes,
        {k: "allowed" if k == "DescribeInstances" else refusals for k in outcomes},
    )
    observed.equal("victim still {}", state, "running")
    observed.equal("policy_eval: GetRolePolicy on its own role {}", own_role, ALLOW)
    observed.check(f"policy_eval: GetRolePolicy on another role {other_role}", other_role != ALLOW)
    del region


def _check_setup_as_operator(
    env: AnnexEnv, tmp_path: Path, documents: list[dict[str, Any]] | None = None
) -> tuple[Any, Counter[str], list[str]]:
    """(check result, allowed operations, refusals) of `-check-setup` run with operator
    credentials holding the deployed operator policies (or `documents`)."""
    import boto3

    from condor_annex.setup import check_setup
    from condor_annex.setup_checks import ensure_service_linked_roles

    # The account's administrator ran `-setup`, which creates the fleets' service-linked roles.
    ensure_service_linked_roles(env.local.client("iam"))
    # The operator's default image is configured (as the create tests pass -aws-ami-id): the
    # engine cannot type the account-less ARN of AWS's public image parameter (iam-simulate's
    # ARN patterns need an account), so the SSM lookup of the default image is not exercised.
    config_file = tmp_path / "user_config"
    config_file.write_text(env.config_file.read_text())
    write_annex_macros(config_file, {USER_DEFAULT_MACROS["ami_id"]: env.ami_id})
    with operator_credentials(env, documents) as (clients, arn):
        credentials = clients.ec2._request_signer._credentials
        session = boto3.Session(
            aws_access_key_id=credentials.access_key,
            aws_secret_access_key=credentials.secret_key,
            region_name=env.local.region,
        )
        result = check_setup(
            session=session,
            config_file=config_file,
            collector=env.collector.address,
            connectivity_probe=lambda event: {
                "reachable": True,
                "host": event["host"],
                "port": event["port"],
                "address": event["host"],
            },
        )
    allowed, refused = decisions(env, arn)
    return result, allowed, refused


@mark(AREA, "operator credentials, IAM engine: `-check-setup` reads what it checks")
def test_operator_policy_allows_check_setup(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    """-check-setup reads the stack, the functions, the bucket, the instance profile
    (iam:GetInstanceProfile on the setup's profile, SAR "GetInstanceProfile") and the fleets'
    service-linked roles, and dry-runs the launch path: every probe is allowed."""
    result, allowed, refused = _check_setup_as_operator(env, tmp_path)
    observed.check(f"engine: {sum(allowed.values())} allowed", sum(allowed.values()) > 0)
    observed.check(f"refused: {', '.join(refused) or 'none'}", refused == [], refused)
    observed.check(f"problems: {len(result.problems)}", result.problems == [], result.problems)
    for operation in (
        "iam:GetInstanceProfile",
        "iam:GetRole",
        "cloudformation:DescribeStacks",
        "ec2:RunInstances",
        "ec2:CreateLaunchTemplate",
        "ec2:RequestSpotFleet",
        "ec2:CreateFleet",
        "scheduler:GetSchedule",
    ):
        assert allowed[operation] > 0, operation


def _without_action(document: dict[str, Any], action: str) -> dict[str, Any]:
    """`document` with `action` taken out of every statement (emptied statements dropped)."""
    statements = []
    for statement in document["Statement"]:
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        kept = [a for a in actions if a != action]
        if kept:
            statements.append({**statement, "Action": kept})
    return {**document, "Statement": statements}


@mark(AREA, "mutation: an operator policy without RequestSpotFleet fails `-check-setup`")
def test_check_setup_names_a_missing_request_spot_fleet_grant(
    env: AnnexEnv, observed: Any, tmp_path: Path
) -> None:
    """The dry-run probe finds the gap before the first Spot Fleet annex does."""
    documents = operator_documents(env)
    mutants = [_without_action(d, "ec2:RequestSpotFleet") for d in documents]
    assert "ec2:RequestSpotFleet" in json.dumps(documents)
    assert "ec2:RequestSpotFleet" not in json.dumps(mutants)
    result, _, refused = _check_setup_as_operator(env, tmp_path, mutants)
    observed.check(
        f"problems: {[p.what for p in result.problems]}",
        len(result.problems) == 1
        and "ec2:RequestSpotFleet (UnauthorizedOperation)" in result.problems[0].what,
    )
    [problem] = result.problems
    assert env.settings.spot_fleet_role_arn in problem.what
    assert env.settings.operator_policy_arn in problem.next_step
    assert env.settings.operator_launch_policy_arn in problem.next_step
    assert any(r.startswith("ec2:RequestSpotFleet") for r in refused), refused
    with pytest.raises(CredentialsError):
        raise_for_problems(result)


@mark(AREA, "mutation: without iam:GetRole on the service-linked roles `-check-setup` says so")
def test_check_setup_says_when_it_may_not_read_the_service_linked_roles(
    env: AnnexEnv, observed: Any, tmp_path: Path
) -> None:
    documents = operator_documents(env)
    mutants = [
        {
            **d,
            "Statement": [
                s for s in d["Statement"] if s.get("Sid") != "ReadFleetServiceLinkedRoles"
            ],
        }
        for d in documents
    ]
    removed = sum(len(d["Statement"]) - len(m["Statement"]) for d, m in zip(documents, mutants))
    assert removed == 1
    result, _, refused = _check_setup_as_operator(env, tmp_path, mutants)
    observed.check(
        f"problems: {[p.what for p in result.problems]}",
        [p.what.split(":")[0] for p in result.problems]
        == [
            f"cannot tell whether the service-linked role {role.role_name} exists"
            for role in contract.SERVICE_LINKED_ROLES
        ],
    )
    for role, problem in zip(contract.SERVICE_LINKED_ROLES, result.problems):
        assert f"--aws-service-name {role.service}" in problem.next_step
    assert all(r.startswith("iam:GetRole") for r in refused), refused
