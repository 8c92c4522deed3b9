"""Missing, partial, hand-edited or vanished setup: exit 3 with the command that repairs it."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest

from condor_annex import contract
from condor_annex.errors import CredentialsError, SetupMissing
from condor_annex.user_config import read_annex_macros
from tests.integration.annex_env import TRUST_DOMAIN, AnnexEnv
from tests.reliability.conftest import (
    assert_clear_error,
    check_refused,
    claim_left,
    claim_refused,
    cli,
    left_behind,
)

AREA = "setup"
SETUP = SetupMissing.exit_code
pytestmark = pytest.mark.xdist_group("reliability-setup")
mark = pytest.mark.reliability


def _args(env: AnnexEnv, config: Path, name: str, *extra: str) -> list[str]:
    return [
        "-annex-name", name, "-count", "1", "-aws-on-demand-ami-id", env.ami_id,
        "-config-file", str(config), "-collector", env.collector.address,
        "-pool-signing-key-file", str(env.signing_key_file), "-trust-domain", TRUST_DOMAIN,
        "-yes", *extra,
    ]  # fmt: skip


def _config(tmp_path: Path, env: AnnexEnv, text: str) -> Path:
    path = tmp_path / "user_config"
    path.write_text(text)
    return path


def _macros(env: AnnexEnv, **override: str) -> str:
    macros = read_annex_macros(env.config_file)
    macros.update(override)
    return "".join(f"{k} = {v}\n" for k, v in macros.items())


@mark(AREA, "no user config file at all (setup never ran)")
def test_no_user_config_says_run_setup(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    argv = _args(env, tmp_path / "absent", "nosetup")
    check_refused(env, observed, argv, SETUP, "condor_annex -setup", defaults=False)


@mark(AREA, "user config without any ANNEX_DEFAULT_* macro")
def test_config_without_macros_says_run_setup(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    config = _config(tmp_path, env, "# mine\nSOMETHING = else\n")
    check_refused(env, observed, _args(env, config, "nomacro"), SETUP, "-setup", defaults=False)


@mark(AREA, "user config lacks the bucket macro (partial setup)")
def test_partial_config_names_the_missing_macro(
    env: AnnexEnv, observed: Any, tmp_path: Path
) -> None:
    text = "".join(
        line
        for line in _macros(env).splitlines(keepends=True)
        if not line.startswith(contract.OUTPUT_CONFIG_BUCKET.macro)
    )
    config = _config(tmp_path, env, text)
    argv = _args(env, config, "partial")
    check_refused(env, observed, argv, SETUP, contract.OUTPUT_CONFIG_BUCKET.macro, defaults=False)


@mark(AREA, "Spot Fleet create with the Spot Fleet role macro missing")
def test_spot_create_without_fleet_role_macro(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    text = "".join(
        line
        for line in _macros(env).splitlines(keepends=True)
        if not line.startswith(contract.OUTPUT_SPOT_FLEET_ROLE_ARN.macro)
    )
    config = _config(tmp_path, env, text)
    argv = [
        "-annex-name", "nofleetrole", "-slots", "2", "-aws-ami-id", env.ami_id,
        "-aws-spot-instance-types", "m5.large", "-config-file", str(config),
        "-collector", env.collector.address, "-pool-signing-key-file", str(env.signing_key_file),
        "-trust-domain", TRUST_DOMAIN, "-yes",
    ]  # fmt: skip
    check_refused(
        env, observed, argv, SETUP, contract.OUTPUT_SPOT_FLEET_ROLE_ARN.macro, defaults=False
    )


@mark(AREA, "user config edited by hand: garbage lines around valid macros")
def test_garbage_lines_are_ignored_and_create_works(
    env: AnnexEnv, observed: Any, tmp_path: Path
) -> None:
    garbage = (
        "\x00\x01 binary junk\n=== no name ===\nANNEX_DEFAULT_\n[section]\n"
        "this line has no equals sign\n  ANNEX_DEFAULT_BOGUS_THING = 1\n" + "x" * 10000 + "\n"
    )
    config = _config(tmp_path, env, garbage + _macros(env) + "trailing \\\n")
    before = env.leftovers()
    run = cli(env, *_args(env, config, "garbage"), defaults=False)
    made = left_behind(env, before)
    off = cli(env, "off", "-annex-name", "garbage", "-config-file", str(config), "-yes",
              defaults=False)  # fmt: skip
    left = left_behind(env, before)
    observed.equal("exit {}", run.code, 0)
    observed.equal("{} instance made from the valid macros", len(made["instances"]), 1)
    observed.equal("`off` exit {}", off.code, 0)
    claim_left(observed, left)


@mark(AREA, "user config edited by hand: bucket macro duplicated, last one wrong")
def test_duplicated_macro_last_definition_wins_like_htcondor(
    env: AnnexEnv, observed: Any, tmp_path: Path
) -> None:
    bogus = "annex-config-deleted-by-someone"
    text = _macros(env) + f"{contract.OUTPUT_CONFIG_BUCKET.macro} = {bogus}\n"
    config = _config(tmp_path, env, text)
    # The operator's policies grant only the setup's bucket, and S3 answers a caller without
    # permission on a bucket AccessDenied whether or not it exists.
    check_refused(
        env, observed, _args(env, config, "dup"), CredentialsError.exit_code, bogus,
        "-check-setup", defaults=False,
    )  # fmt: skip


@mark(AREA, "user config edited by hand: bucket macro duplicated, first one wrong")
def test_duplicated_macro_first_wrong_still_works(
    env: AnnexEnv, observed: Any, tmp_path: Path
) -> None:
    bogus = f"{contract.OUTPUT_CONFIG_BUCKET.macro} = annex-config-old\n"
    config = _config(tmp_path, env, bogus + _macros(env))
    before = env.leftovers()
    run = cli(env, *_args(env, config, "dupok"), defaults=False)
    off = cli(env, "off", "-annex-name", "dupok", "-config-file", str(config), "-yes",
              defaults=False)  # fmt: skip
    left = left_behind(env, before)
    observed.equal("exit {} (the last definition was used)", run.code, 0)
    observed.equal("`off` exit {}", off.code, 0)
    claim_left(observed, left)


@mark(AREA, "security group macro names a group that was deleted")
def test_deleted_security_group_rolls_back(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    text = _macros(env, **{contract.OUTPUT_SECURITY_GROUP_IDS.macro: "sg-0123456789abcdef0"})
    config = _config(tmp_path, env, text)
    # The operator's launch policy allows only the setup's group: EC2 refuses the launch.
    check_refused(
        env, observed, _args(env, config, "nosg"), CredentialsError.exit_code, "launch",
        "-check-setup",
        defaults=False,
    )  # fmt: skip


@mark(AREA, "connectivity Lambda deleted behind our back (real Invoke)")
def test_connectivity_function_deleted(env: AnnexEnv, observed: Any) -> None:
    awslambda = env.admin.lambda_
    arn = env.settings.connectivity_function_arn
    saved = awslambda.get_function(FunctionName=arn)
    awslambda.delete_function(FunctionName=arn)
    try:
        check_refused(
            env, observed,
            ["-annex-name", "nolambda", "-count", "1", "-aws-on-demand-ami-id", env.ami_id],
            SETUP, "connectivity", "-check-setup", connectivity_probe=None,
        )  # fmt: skip
    finally:
        _recreate_function(env, saved)


def _recreate_function(env: AnnexEnv, saved: dict[str, Any]) -> None:
    """Put a deleted function back from its code asset in the CDK bootstrap bucket."""
    config = saved["Configuration"]
    s3 = env.admin.s3
    code = b""
    for bucket in (b["Name"] for b in s3.list_buckets()["Buckets"]):
        if not bucket.startswith("cdk-"):
            continue
        for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
            if digest == config["CodeSha256"]:
                code = body
    assert code, "the function's code asset is not in the bootstrap bucket"
    env.admin.lambda_.create_function(
        FunctionName=config["FunctionName"],
        Runtime=config["Runtime"],
        Role=config["Role"],
        Handler=config["Handler"],
        Code={"ZipFile": code},
        Environment=config.get("Environment", {"Variables": {}}),
        Timeout=config.get("Timeout", 30),
    )


@mark(AREA, "-check-setup after the lease function was deleted behind our back")
def test_check_setup_reports_deleted_lease_function(env: AnnexEnv, observed: Any) -> None:
    awslambda = env.admin.lambda_
    arn = env.settings.lease_function_arn
    saved = awslambda.get_function(FunctionName=arn)
    awslambda.delete_function(FunctionName=arn)
    try:
        run = cli(env, "-check-setup", "-config-file", str(env.config_file),
                  "-collector", env.collector.address, defaults=False)  # fmt: skip
        claim_refused(observed, run, SETUP, "does not exist", "-setup", arn.rsplit(":", 1)[-1])
    finally:
        _recreate_function(env, saved)


@mark(AREA, "setup stack deleted behind our back: create, then -check-setup")
def test_deleted_stack_is_reported_by_create_and_check_setup(env: AnnexEnv, observed: Any) -> None:
    # Last in this module: it removes the module's setup.
    s3 = env.admin.s3
    bucket = env.settings.config_bucket
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=item["Key"])
    cfn = env.local.client("cloudformation")
    cfn.delete_stack(StackName=env.settings.stack_name)
    cfn.get_waiter("stack_delete_complete").wait(
        StackName=env.settings.stack_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    bucket_gone = bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    # The operator policies went with the stack: the operator is refused everything, and only
    # the account's administrator (here the root) can see that the setup is gone.
    as_operator = cli(env, "-annex-name", "orphan", "-count", "1",
                      "-aws-on-demand-ami-id", env.ami_id)  # fmt: skip
    observed.equal("operator's create exit {}", as_operator.code, CredentialsError.exit_code)
    observed.holds(
        as_operator.first_line,
        lambda: assert_clear_error(as_operator, CredentialsError.exit_code, "operator policies"),
    )
    with pytest.MonkeyPatch.context() as administrator:
        for name, value in env.local.env().items():
            administrator.setenv(name, value)
        create = cli(env, "-annex-name", "orphan", "-count", "1",
                     "-aws-on-demand-ami-id", env.ami_id, clients=env.admin)  # fmt: skip
        check = cli(env, "-check-setup", "-config-file", str(env.config_file),
                    "-collector", env.collector.address, defaults=False,
                    clients=env.admin)  # fmt: skip
    instances = env.live_instances()
    observed.equal("create exit {}", create.code, SETUP)
    observed.holds(create.first_line, lambda: assert_clear_error(create, SETUP, "-setup"))
    observed.equal("-check-setup exit {}", check.code, SETUP)
    observed.holds(
        check.first_line,
        lambda: assert_clear_error(check, SETUP, "does not exist", "condor_annex -setup"),
    )
    observed.check("the bucket was deleted with the stack", bucket_gone)
    observed.equal("{} instances left", len(instances), 0)
