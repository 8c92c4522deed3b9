"""Two accounts, two profiles: no verb ever touches the account it was not pointed at.

Account A (123456789012) is the environment's: `AWS_ACCESS_KEY_ID` names it, as on a submit
machine where someone exported keys. Account B (222222222222) is reached through the profile
`b` in this module's own AWS credentials file (assumed-role credentials of B, issued by the
local AWS's STS). Both accounts hold the real setup stack (the session's synthesized template).

Each verb is run with the real CLI `main` and its own clients (no client injection), and the
local AWS's call log shows which access key made every request: a verb pointed at B must not
send one request with A's key, and a verb refused for pointing at the wrong account must send
no request that changes anything.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from annex_sandbox.local_aws import FAKE_ACCESS_KEY_ID, LocalAws
from condor_annex import contract
from condor_annex.cli.main import CliContext, main
from condor_annex.target import WrongAccount
from condor_annex.user_config import write_annex_macros
from tests.fixtures.cdk import deploy_setup
from tests.integration.annex_env import TRUST_DOMAIN, AnnexEnv
from tests.reliability.conftest import Run, claim_refused, clean

AREA = "accounts"
ACCOUNT_B = "222222222222"
pytestmark = pytest.mark.xdist_group("reliability-accounts")
mark = pytest.mark.reliability
_READ_ONLY = ("Describe", "List", "Get", "Head")


class _AccountB:
    """What `deploy_setup` needs of a local AWS, acting as account B."""

    def __init__(self, local: LocalAws, session: boto3.Session) -> None:
        self.local, self.session = local, session
        self.account_id, self.region = ACCOUNT_B, local.region

    def client(self, service: str) -> Any:
        return self.session.client(service, endpoint_url=self.local.endpoint_url)


@dataclass
class TwoAccounts:
    env: AnnexEnv
    config_a: Path
    config_b: Path
    key_b: str
    session_b: boto3.Session

    def run(self, *argv: str, config: Path) -> Run:
        out, err = io.StringIO(), io.StringIO()
        ctx = CliContext(
            stdout=out,
            stderr=err,
            create_hooks=self.env.hooks(progress=None),
            pool_view=lambda: set(),
            pool_shutdown=lambda name: 0,
            pool_remaining=lambda name: 0,
        )
        args = [
            *argv, "-config-file", str(config), "-collector", self.env.collector.address,
            "-pool-signing-key-file", str(self.env.signing_key_file),
            "-trust-domain", TRUST_DOMAIN, "-yes",
        ]  # fmt: skip
        return Run(main(args, ctx), out.getvalue(), err.getvalue())

    def keys_used(self) -> set[str]:
        return {str(c.access_key_id) for c in self.env.local.calls() if c.access_key_id}

    def changes(self) -> list[str]:
        return [
            f"{c.service}:{c.operation}"
            for c in self.env.local.calls()
            if not c.operation.startswith(_READ_ONLY)
        ]

    def live_instances(self, session: Any) -> list[str]:
        ec2 = session.client("ec2", endpoint_url=self.env.local.endpoint_url)
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
        )
        return [i["InstanceId"] for p in pages for r in p["Reservations"] for i in r["Instances"]]


@pytest.fixture(scope="module")
def two(
    shared_annex_env: AnnexEnv, synthesized_setup: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwoAccounts]:
    env = shared_annex_env
    home = tmp_path_factory.mktemp("accounts")
    creds = env.local.client("sts").assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT_B}:role/AnnexAdmin", RoleSessionName="account-b"
    )["Credentials"]
    # The local AWS's IAM engine models the one account it serves; account B's administrator
    # is allowed everything there, as AdministratorAccess would.
    env.local.add_root_access_key(creds["AccessKeyId"])
    credentials_file = home / "credentials"
    credentials_file.write_text(
        "[b]\n"
        f"aws_access_key_id = {creds['AccessKeyId']}\n"
        f"aws_secret_access_key = {creds['SecretAccessKey']}\n"
        f"aws_session_token = {creds['SessionToken']}\n"
    )
    (home / "config").write_text(f"[profile b]\nregion = {env.local.region}\n")
    session_b = boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=env.local.region,
    )
    outputs_b = deploy_setup(synthesized_setup, _AccountB(env.local, session_b))

    def config(name: str, outputs: dict[str, str], account: str) -> Path:
        path = home / name
        macros = {contract.MACRO_BY_OUTPUT_KEY[k]: v for k, v in outputs.items()}
        macros[contract.MACRO_AWS_REGION] = env.local.region
        macros[contract.MACRO_AWS_ACCOUNT_ID] = account
        write_annex_macros(path, macros)
        return path

    outputs_a = {o.key: env.settings.value(o) for o in contract.STACK_OUTPUTS}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials_file))
        mp.setenv("AWS_CONFIG_FILE", str(home / "config"))
        yield TwoAccounts(
            env,
            config("user_config_a", outputs_a, env.local.account_id),
            config("user_config_b", outputs_b, ACCOUNT_B),
            creds["AccessKeyId"],
            session_b,
        )


def _od(two: TwoAccounts, name: str) -> list[str]:
    return ["-annex-name", name, "-count", "1", "-aws-on-demand-ami-id", two.env.ami_id]


@mark(AREA, "create, status and off with `-aws-profile b`: every request made as account B")
def test_profile_b_verbs_touch_only_account_b(two: TwoAccounts, observed: Any) -> None:
    a_before = two.live_instances(boto3.Session(region_name=two.env.local.region))
    two.env.local.clear_calls()
    created = two.run(*_od(two, "inb"), "-aws-profile", "b", config=two.config_b)
    in_b = two.live_instances(two.session_b)
    status = two.run("status", "-aws-profile", "b", config=two.config_b)
    off = two.run("off", "-annex-name", "inb", "-aws-profile", "b", config=two.config_b)
    keys = two.keys_used()
    a_after = two.live_instances(boto3.Session(region_name=two.env.local.region))
    observed.equal("create exit {}", created.code, 0)
    observed.equal("{} instance launched in account B", len(in_b), 1)
    observed.equal("status exit {}", status.code, 0)
    observed.equal("off exit {}", off.code, 0)
    observed.equal("instances in B after off: {}", two.live_instances(two.session_b), [])
    observed.check(
        "no request made with account A's key", FAKE_ACCESS_KEY_ID not in keys, sorted(keys)
    )
    observed.check("account A's instances unchanged", a_after == a_before, (a_before, a_after))


@mark(AREA, "`off` with B's user config but the environment's credentials (account A)")
def test_off_with_the_wrong_accounts_credentials_is_refused(
    two: TwoAccounts, observed: Any
) -> None:
    assert two.run(*_od(two, "keepb"), "-aws-profile", "b", config=two.config_b).code == 0
    try:
        two.env.local.clear_calls()
        off = two.run("off", "-annex-name", "keepb", config=two.config_b)
        changes = two.changes()
        claim_refused(observed, off, WrongAccount.exit_code, "account", ACCOUNT_B, "-aws-profile")
        observed.equal("AWS changes: {}", len(changes), 0)
        observed.equal(
            "B's annex still runs: {} instance", len(two.live_instances(two.session_b)), 1
        )
    finally:
        two.run("off", "-annex-name", "keepb", "-aws-profile", "b", config=two.config_b)


@mark(AREA, "`-destroy-setup -aws-profile b` with A's user config (the reported defect)")
def test_destroy_setup_of_a_with_profile_b_is_refused(two: TwoAccounts, observed: Any) -> None:
    two.env.local.clear_calls()
    run = two.run("-destroy-setup", "-aws-profile", "b", config=two.config_a)
    changes = two.changes()
    cfn_a = two.env.local.client("cloudformation")
    status_a = cfn_a.describe_stacks(StackName=contract.STACK_NAME)["Stacks"][0]["StackStatus"]
    claim_refused(observed, run, WrongAccount.exit_code, ACCOUNT_B, "-aws-profile")
    observed.equal("AWS changes: {}", len(changes), 0)
    observed.equal("account A's setup stack is {}", status_a, "CREATE_COMPLETE")
    observed.check(
        "A's user config keeps its macros",
        contract.OUTPUT_CONFIG_BUCKET.macro in two.config_a.read_text(),
        clean(two.config_a.read_text()[:80]),
    )


@mark(AREA, "`-setup -aws-profile b` with A's user config: refused before any deploy")
def test_setup_with_profile_of_another_account_is_refused(two: TwoAccounts, observed: Any) -> None:
    before = two.config_a.read_text()
    two.env.local.clear_calls()
    run = two.run(
        "-setup", "-aws-profile", "b", "-pool-cidr", "198.51.100.0/24", config=two.config_a
    )
    changes = two.changes()
    claim_refused(observed, run, WrongAccount.exit_code, ACCOUNT_B, two.env.local.account_id)
    observed.equal("AWS changes: {}", len(changes), 0)
    observed.check("A's user config unchanged", two.config_a.read_text() == before)
