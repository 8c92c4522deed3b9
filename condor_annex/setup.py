"""`-setup`, `-check-setup`, `-destroy-setup`: the setup stack and the user config that names it.

`run_setup` deploys the CDK app (`app.py`, carried inside the package) with the pinned CDK CLI
(the project's `node_modules`, else `npx aws-cdk@<pin>`), bootstrapping the account/region first when the CDK bootstrap stack is missing,
and writes every stack output into the user's HTCondor config as its `ANNEX_DEFAULT_*` macro.
`check_setup` compares AWS with that config and reports each problem with the command that
fixes it. `destroy_setup` refuses while any annex is alive, then empties the config bucket
(the stack has no custom resources to do it), destroys the stack and removes the macros.

Verbs never print: progress goes through a callback, results are dataclasses.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Optional

import boto3
import botocore.exceptions

from condor_annex import annex, contract
from condor_annex.annex_settings import SETUP_MACROS, Settings, regional_macros, regional_name
from condor_annex.aws import error_code, make_client
from condor_annex.collector import CONNECTIVITY_TIMEOUT_SECONDS, parse_collector
from condor_annex.errors import (
    AnnexError,
    ConnectivityFailed,
    CredentialsError,
    InvalidInput,
    SetupIncomplete,
    SetupMissing,
    translate_aws_error,
)
from condor_annex.setup_checks import (
    Problem,
    check_service_linked_roles,
    ensure_service_linked_roles,
    launch_probes,
    recorded_target_problem,
    run_launch_probes,
)
from condor_annex.target import (
    AwsTarget,
    WrongAccount,
    caller_identity,
    check_recorded,
    session_for,
    validate_region,
)
from condor_annex.tokens import check_private_file
from condor_annex.user_config import (
    check_user_config_writable,
    condor_params,
    read_annex_macros,
    remove_annex_macros,
    user_config_path,
    write_annex_macros,
)

Progress = Callable[[str], None]
ConnectivityProbe = Callable[[dict[str, Any]], dict[str, Any]]
"""`{"host", "port", "timeout"}` → `{"reachable", "host", "port", "address", "error", ...}`."""

BOOTSTRAP_STACK_NAME = "CDKToolkit"
"""The CDK's default bootstrap stack (qualifier hnb659fds)."""
# Reference compatibility: `-setup` without key files used these in ~/.condor.
REFERENCE_SECRET_KEY_FILE = "privateKeyFile"  # noqa: S105 (a file name)
CDK_TIMEOUT_SECONDS = 3600
PROJECT_DIR_VARIABLE = "CONDOR_ANNEX_PROJECT_DIR"
_OUTPUT_TAIL_LINES = 40
_GOOD_STACK_STATES = frozenset({"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"})
_USABLE_BOOTSTRAP_STATES = _GOOD_STACK_STATES | {"UPDATE_ROLLBACK_COMPLETE"}
_LIVE_INSTANCE_STATES = ("pending", "running")

# CDK CLI `--progress events` lines: "<stack> | 3/15 | 1:02:03 PM | CREATE_COMPLETE | AWS::S3::Bucket | Config/Bucket (ConfigBucket1234)"
_EVENT_LINE = re.compile(
    r"^\s*(?P<stack>\S+)\s*\|\s*(?P<done>\d+)/(?P<total>\d+)\s*\|\s*(?P<time>[^|]+)\|"
    r"\s*(?P<status>[A-Z_]+)\s*\|\s*(?P<type>\S+)\s*\|\s*(?P<rest>.*)$"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


SETUP_APP_DIR = Path(__file__).resolve().parent / "setup_app"
"""Where the wheel carries the setup app (copied there by the build hook in setup.py)."""
SETUP_EXTRA_MODULES = ("aws_cdk", "constructs", "cdk_nag")
SETUP_EXTRA_INSTALL = 'pip install "condor-annex[setup]"'


def default_project_dir() -> Path:
    """Where `app.py`, `cdk.json` and the CDK CLI pin live.

    `CONDOR_ANNEX_PROJECT_DIR` when set; else the source checkout this package runs from (a
    development install); else the copy inside the installed package.
    """
    if os.environ.get(PROJECT_DIR_VARIABLE):
        return Path(os.environ[PROJECT_DIR_VARIABLE])
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "app.py").is_file() and (checkout / "cdk.json").is_file():
        return checkout
    return SETUP_APP_DIR


def _project(project_dir: Optional[Path]) -> Path:
    project = Path(project_dir) if project_dir is not None else default_project_dir()
    if not (project / "app.py").is_file() or not (project / "cdk.json").is_file():
        raise SetupIncomplete(
            f"the setup app (app.py, cdk.json) is not in {project}",
            next_step=f"reinstall condor-annex ({SETUP_EXTRA_INSTALL}) or set "
            f"{PROJECT_DIR_VARIABLE} to a condor_annex checkout",
        )
    missing = [m for m in SETUP_EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise SetupIncomplete(
            f"-setup needs the AWS CDK libraries, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed for {sys.executable}",
            next_step=f"run `{SETUP_EXTRA_INSTALL}`",
        )
    return project


# --- Results ------------------------------------------------------------------------------------


@dataclass
class SetupResult:
    stack_name: str
    region: str
    outputs: dict[str, str]
    config_file: Path
    changed: bool


@dataclass
class CheckResult:
    ok: bool
    problems: list[Problem] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    """What passed, in order (for a verbose display)."""


# --- Running the CDK CLI ------------------------------------------------------------------------


def pinned_cdk_version(project_dir: Path) -> str:
    """The CDK CLI version `package.json` pins (the version the stacks are tested with)."""
    try:
        package = json.loads((project_dir / "package.json").read_text(encoding="utf-8"))
        return str(package["devDependencies"]["aws-cdk"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SetupIncomplete(
            f"cannot read the pinned CDK CLI version from {project_dir / 'package.json'} ({exc})",
            next_step=f"reinstall condor-annex ({SETUP_EXTRA_INSTALL})",
        ) from None


def cdk_command(project_dir: Path) -> list[str]:
    """The pinned CDK CLI: the project's `node_modules/.bin/cdk` when `npm ci` installed it,
    else `npx` running exactly the pinned version (fetched once into npm's cache)."""
    if shutil.which("node") is None:
        raise SetupIncomplete(
            "-setup runs the AWS CDK CLI, which needs Node.js, and `node` is not on PATH",
            next_step="install Node.js 20 or newer (https://nodejs.org/) and re-run",
        )
    local = project_dir / "node_modules" / ".bin" / "cdk"
    if local.exists():
        return [str(local)]
    npx = shutil.which("npx")
    if npx is None:
        raise SetupIncomplete(
            "-setup runs the AWS CDK CLI through `npx`, which is not on PATH",
            next_step="install Node.js 20 or newer with npm (https://nodejs.org/) and re-run",
        )
    return [npx, "--yes", f"aws-cdk@{pinned_cdk_version(project_dir)}"]


def _progress_line(line: str) -> Optional[str]:
    """A short per-resource line for an event line of the CDK CLI, else None."""
    match = _EVENT_LINE.match(line)
    if match is None:
        return None
    rest = match.group("rest").strip()
    return (
        f"[{match.group('done')}/{match.group('total')}] {match.group('status')} "
        f"{match.group('type')} {rest}"
    ).rstrip()


def _run_cdk(
    args: Sequence[str],
    *,
    project_dir: Path,
    env: Mapping[str, str],
    progress: Progress,
    action: str,
    cwd: Optional[Path] = None,
) -> list[str]:
    """Run the CDK CLI, streaming its resource events to `progress`; all output lines back."""
    command = [*cdk_command(project_dir), *args]
    lines: list[str] = []
    try:
        process = subprocess.Popen(
            command,
            cwd=cwd or project_dir,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
    except FileNotFoundError:
        raise SetupIncomplete(
            f"cannot {action}: the CDK CLI ({command[0]}) could not be started",
            next_step="install Node.js 20 or newer (https://nodejs.org/) and re-run",
        ) from None
    assert process.stdout is not None
    for raw in process.stdout:
        line = _ANSI.sub("", raw.rstrip("\n"))
        lines.append(line)
        event = _progress_line(line)
        if event is not None:
            progress(event)
        elif line.startswith(("✅", "❌", " ⏳", "⏳", "✨")) or "bootstrapping" in line.lower():
            progress(line.strip())
    code = process.wait(timeout=CDK_TIMEOUT_SECONDS)
    if code != 0:
        raise _cdk_failure(action, code, lines)
    return lines


class CdkFailed(AnnexError):
    """The CDK CLI failed; `output` holds the end of what it printed (for a verbose display)."""

    def __init__(self, message: str, *, next_step: str, output: Sequence[str]) -> None:
        super().__init__(message, next_step=next_step)
        self.output = list(output)


def _cdk_failure(action: str, code: int, lines: list[str]) -> AnnexError:
    tail = lines[-_OUTPUT_TAIL_LINES:]
    synth_errors = [line.strip() for line in lines if line.startswith("ERROR")]
    if synth_errors:
        reason = f"synthesis failed with {len(synth_errors)} error(s), first: {synth_errors[0]}"
    else:
        reason = next(
            (
                line.strip()
                for line in reversed(tail)
                if "❌" in line or "Error" in line or "failed" in line
            ),
            tail[-1].strip() if tail else "no output",
        )
    if re.search(
        r"ExpiredToken|security token included in the request is expired", "\n".join(tail)
    ):
        return CredentialsError(
            f"cannot {action}: the AWS credentials have expired ({reason})",
            next_step="refresh them and re-run `condor_annex -setup`",
        )
    return CdkFailed(
        f"cannot {action}: the CDK CLI exited with {code}: {reason}",
        next_step="fix the cause above and re-run `condor_annex -setup` (it resumes safely)",
        output=tail,
    )


def _read_key_file(path: Path, what: str) -> str:
    check_private_file(path, what=what)
    value = path.read_text(encoding="utf-8").strip()
    if not value or any(c.isspace() for c in value):
        raise InvalidInput(f"the {what} {path} must hold exactly one key")
    return value


def _cdk_env(base: Mapping[str, str], target: AwsTarget) -> dict[str, str]:
    """The CDK CLI's environment: `target`'s credentials (or profile) and region, nothing else's."""
    env = target.cdk_environment(base)
    env.setdefault("CDK_DISABLE_VERSION_CHECK", "1")
    env.setdefault("CI", "true")  # no interactive prompts, plain progress output
    env["NO_COLOR"] = "1"
    return env


def _key_file_credentials(
    credentials_files: Optional[tuple[Path, Optional[Path]]],
) -> Optional[tuple[str, str]]:
    if credentials_files is None:
        return None
    access_file, secret_file = credentials_files
    if secret_file is None:
        secret_file = access_file.parent / REFERENCE_SECRET_KEY_FILE
    return (
        _read_key_file(access_file, "access key file"),
        _read_key_file(secret_file, "secret key file"),
    )


def _session_for(
    region: str,
    env: Mapping[str, str],
    keys: Optional[tuple[str, str]],
    profile: Optional[str],
) -> tuple[Any, Optional[str]]:
    """The one session of this verb and the profile it uses (None: explicit credentials).

    Key files win, then `-aws-profile`, then the environment's credentials or profile.
    """
    if keys is not None:
        session = boto3.Session(
            aws_access_key_id=keys[0], aws_secret_access_key=keys[1], region_name=region
        )
        return session, None
    if profile:
        return session_for(region, profile), profile
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        session = boto3.Session(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=env.get("AWS_SESSION_TOKEN"),
            region_name=region,
        )
        return session, None
    env_profile = env.get("AWS_PROFILE") or None
    return session_for(region, env_profile), env_profile


def _resolve(
    session: Any, profile: Optional[str], region: str, env: Mapping[str, str], action: str
) -> AwsTarget:
    endpoint = env.get("AWS_ENDPOINT_URL_STS") or env.get("AWS_ENDPOINT_URL")
    identity = caller_identity(session, action=action, endpoint_url=endpoint)
    return AwsTarget(
        session=session,
        account_id=identity["Account"],
        region=region,
        profile=profile,
        arn=identity.get("Arn", ""),
    )


def _client(session: Any, service: str, env: Mapping[str, str], region: str) -> Any:
    # The CDK process honours AWS_ENDPOINT_URL from `env`; so must our own calls.
    overrides: dict[str, Any] = {"region_name": region}
    client = make_client(session, service, **overrides)
    endpoint = env.get(f"AWS_ENDPOINT_URL_{service.upper()}") or env.get("AWS_ENDPOINT_URL")
    if endpoint and endpoint != client.meta.endpoint_url:
        client = session.client(
            service, endpoint_url=endpoint, config=client.meta.config, region_name=region
        )
    return client


def _stack(cfn: Any, stack_name: str) -> Optional[dict[str, Any]]:
    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) == "ValidationError":
            return None
        raise
    return stacks[0] if stacks else None


def _default_vpc(ec2: Any, region: str) -> str:
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise InvalidInput(
            f"{region} has no default VPC for the annex security group",
            next_step="pass -vpc-id vpc-... (a VPC whose subnets give instances internet access)",
        )
    return str(vpcs[0]["VpcId"])


def run_setup(
    *,
    region: str,
    pool_cidrs: Sequence[str],
    stack_name: str = contract.STACK_NAME,
    vpc_id: Optional[str] = None,
    allow_ssh_from: Sequence[str] = (),
    config_file: Optional[Path] = None,
    project_dir: Optional[Path] = None,
    env: Optional[Mapping[str, str]] = None,
    progress: Progress = lambda s: None,
    credentials_files: Optional[tuple[Path, Optional[Path]]] = None,
    profile: Optional[str] = None,
) -> SetupResult:
    """Deploy (or update) the setup stack, then record its outputs in the user config file."""
    if not region:
        raise InvalidInput("no AWS region given", next_step="pass -aws-region REGION")
    if not pool_cidrs:
        raise InvalidInput(
            "no pool address ranges given: the security group would admit nobody to port 9618",
            next_step="pass -pool-cidr CIDR (the collector's and submit hosts' public ranges)",
        )
    validate_region(region)
    project = _project(project_dir)
    base_env = dict(os.environ if env is None else env)
    keys = _key_file_credentials(credentials_files)
    config_path = Path(config_file) if config_file is not None else user_config_path(base_env)
    # The user config must be readable and writable before minutes of deploying, not after.
    check_user_config_writable(config_path)
    recorded = read_annex_macros(config_path)
    session, profile = _session_for(region, base_env, keys, profile)
    action = "deploy the condor_annex setup"
    target = _resolve(session, profile, region, base_env, action)
    # A re-run may update this region's setup, never swap it for another account's.
    check_recorded(
        target,
        account_id=regional_macros(recorded, region).get(contract.MACRO_AWS_ACCOUNT_ID, ""),
        region="",
        config_file=str(config_path),
        action=action,
    )
    cdk_env = _cdk_env(base_env, target)
    progress(f"deploying into {target.describe()}")
    account = target.account_id

    try:
        cfn = _client(session, "cloudformation", cdk_env, region)
        if vpc_id is None:
            vpc_id = _default_vpc(_client(session, "ec2", cdk_env, region), region)
            progress(f"using the default VPC {vpc_id}")
        bootstrap = _stack(cfn, BOOTSTRAP_STACK_NAME)
        needs_bootstrap = (
            bootstrap is None or str(bootstrap["StackStatus"]) not in _USABLE_BOOTSTRAP_STATES
        )
    except botocore.exceptions.BotoCoreError as exc:
        raise translate_aws_error(exc, action=action, region=region) from exc
    except botocore.exceptions.ClientError as exc:
        raise translate_aws_error(exc, action=action, region=region) from exc

    context = [
        "-c",
        f"stackName={stack_name}",
        "-c",
        f"poolCidrs={','.join(pool_cidrs)}",
        "-c",
        f"vpcId={vpc_id}",
    ]
    if allow_ssh_from:
        context += ["-c", "allowSsh=true", "-c", f"sshCidrs={','.join(allow_ssh_from)}"]
    app = ["--app", f"{sys.executable} app.py"]

    with tempfile.TemporaryDirectory(prefix="condor-annex-cdk-") as scratch:
        common = [*app, "--output", str(Path(scratch) / "cdk.out"), "--no-color", *context]
        if needs_bootstrap:
            progress(f"bootstrapping the CDK in aws://{account}/{region} (once per account/region)")
            # Outside the project (no cdk.json): bootstrapping needs no synth of our app.
            _run_cdk(
                ["bootstrap", "--no-color", f"aws://{account}/{region}"],
                cwd=Path(scratch),
                project_dir=project,
                env=cdk_env,
                progress=progress,
                action=f"bootstrap the CDK in {region}",
            )
        outputs_file = Path(scratch) / "outputs.json"
        progress(f"deploying stack {stack_name} in {region}")
        lines = _run_cdk(
            [
                "deploy",
                *common,
                "--all",
                "--require-approval",
                "never",
                # Given every time: `cdk deploy` would keep the VPC of the previous deploy.
                "--parameters",
                f"{contract.STACK_VPC_PARAMETER}={vpc_id}",
                "--progress",
                "events",
                "--outputs-file",
                str(outputs_file),
            ],
            project_dir=project,
            env=cdk_env,
            progress=progress,
            action=action,
        )
        stack_changed = not any("(no changes)" in line for line in lines)
        try:
            all_outputs: dict[str, dict[str, str]] = json.loads(outputs_file.read_text())
        except (OSError, ValueError) as exc:
            raise SetupIncomplete(
                f"the deploy finished but wrote no outputs ({exc})",
                next_step="run `condor_annex -check-setup`",
            ) from exc
    outputs = {str(k): str(v) for k, v in all_outputs.get(stack_name, {}).items()}
    missing = [o.key for o in contract.STACK_OUTPUTS if o.key not in outputs]
    if missing:
        raise SetupIncomplete(
            f"stack {stack_name} lacks the outputs {', '.join(missing)}",
            next_step="update the setup code and re-run `condor_annex -setup`",
        )
    try:
        deployed = _stack(cfn, stack_name)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise translate_aws_error(exc, action=action, region=region) from exc
    # The CDK CLI ran with this target's credentials; the stack it made must be in its account.
    stack_account = str((deployed or {}).get("StackId", "")).split(":")[4:5]
    if deployed is None or stack_account != [account]:
        raise SetupIncomplete(
            f"the CDK CLI reported success but stack {stack_name} is not in {target.describe()}",
            next_step="check the AWS profile and credentials the CDK CLI sees, then re-run "
            "`condor_annex -setup`",
        )
    written, macros_changed = record_setup(
        config_path, region, stack_name, outputs, account_id=account
    )
    progress(f"wrote {written} ANNEX_DEFAULT_* macros to {config_path}")
    # After the deploy, not before: the CDK CLI deploys through the bootstrap's roles, so these
    # credentials may lack iam:CreateServiceLinkedRole; the stack is then still set up and
    # recorded, and the error names the one command an administrator has to run.
    try:
        created, role_problems = ensure_service_linked_roles(
            _client(session, "iam", cdk_env, region), progress
        )
    except botocore.exceptions.BotoCoreError as exc:
        raise translate_aws_error(exc, action=action, region=region) from exc
    if role_problems:
        first = role_problems[0]
        more = f" (and {len(role_problems) - 1} more)" if len(role_problems) > 1 else ""
        raise SetupIncomplete(
            f"stack {stack_name} is deployed and recorded, but {first.what}{more}",
            next_step=first.next_step,
        )
    changed = stack_changed or macros_changed or bool(created)
    return SetupResult(
        stack_name=stack_name,
        region=region,
        outputs=outputs,
        config_file=config_path,
        changed=changed,
    )


def record_setup(
    config_path: Path,
    region: str,
    stack_name: str,
    outputs: Mapping[str, str],
    *,
    account_id: str = "",
) -> tuple[int, bool]:
    """Write a region's setup into the user config: (macros written, whether any changed).

    The first region recorded gets the plain names plus `ANNEX_DEFAULT_AWS_REGION`; a setup in
    another region is recorded under the old tool's per-region names (`us_west_2.ANNEX_...`)
    and leaves the first untouched (`-aws-region` selects it; see annex_settings).
    """
    macros = {o.macro: outputs[o.key] for o in contract.STACK_OUTPUTS}
    macros[contract.MACRO_AWS_REGION] = region
    macros[contract.MACRO_STACK_NAME] = stack_name
    if account_id:
        macros[contract.MACRO_AWS_ACCOUNT_ID] = account_id
    before = read_annex_macros(config_path)
    recorded = before.get(contract.MACRO_AWS_REGION)
    if recorded and recorded != region:
        macros = {
            regional_name(name, region): value
            for name, value in macros.items()
            if name != contract.MACRO_AWS_REGION
        }
    write_annex_macros(config_path, macros)
    return len(macros), any(before.get(k) != v for k, v in macros.items())


# --- -check-setup -------------------------------------------------------------------------------


def _arn_name(arn: str) -> str:
    """The last path element of an ARN (`...:instance-profile/path/name` → `name`)."""
    return arn.rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def invoke_connectivity_lambda(lambda_client: Any, function_arn: str) -> ConnectivityProbe:
    """A probe that runs the setup's connectivity function in AWS."""

    def probe(event: dict[str, Any]) -> dict[str, Any]:
        response = lambda_client.invoke(
            FunctionName=function_arn,
            InvocationType="RequestResponse",
            Payload=json.dumps(event).encode(),
        )
        payload = response["Payload"].read()
        if response.get("FunctionError"):
            return {"reachable": False, "error": f"the function failed: {payload[:200]!r}"}
        result: dict[str, Any] = json.loads(payload)
        return result

    return probe


def check_connectivity(probe: ConnectivityProbe, collector: str) -> Optional[Problem]:
    """None when AWS reaches the collector; else the problem and what to open."""
    host, port = parse_collector(collector)
    result = probe({"host": host, "port": port, "timeout": CONNECTIVITY_TIMEOUT_SECONDS})
    if result.get("reachable"):
        return None
    return Problem(
        f"AWS cannot reach the collector {host}:{port} ({result.get('error') or 'no answer'})",
        f"open TCP {port} on the collector to AWS (and check the -pool-cidr ranges given "
        "to `condor_annex -setup`)",
    )


def check_setup(
    *,
    session: Any,
    config_file: Path,
    collector: Optional[str] = None,
    connectivity_probe: Optional[ConnectivityProbe] = None,
) -> CheckResult:
    """Every way the setup can be broken or drifted, each with the command that fixes it."""
    result = CheckResult(ok=True)

    def problem(what: str, next_step: str) -> None:
        result.problems.append(Problem(what, next_step))

    macros = read_annex_macros(config_file)
    if not macros:
        problem(
            f"{config_file} holds no ANNEX_DEFAULT_* macros",
            "run `condor_annex -setup -aws-region REGION -pool-cidr CIDR`",
        )
        result.ok = False
        return result
    recorded_macros = macros
    region = session.region_name or macros.get(contract.MACRO_AWS_REGION)
    macros = regional_macros(macros, region)
    stack_name = macros.get(contract.MACRO_STACK_NAME) or contract.STACK_NAME
    flag = f" -aws-region {region}" if region else ""
    rerun = f"re-run `condor_annex -setup{flag}` (it rewrites the macros in place)"

    def client(service: str) -> Any:
        return make_client(session, service, region_name=region)

    # Whose setup: another account's credentials would only see "no stack" and drifts.
    identity = caller_identity(session, action="check the setup")
    target = AwsTarget(
        session=session,
        account_id=identity["Account"],
        region=region or "",
        arn=identity.get("Arn", ""),
    )
    mismatch = recorded_target_problem(target, recorded_macros, str(config_file))
    if mismatch is not None:
        result.problems.append(mismatch)
        result.ok = False
        return result
    result.checked.append(f"the credentials reach {target.describe()}, as recorded")

    try:
        stack = _stack(client("cloudformation"), stack_name)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise translate_aws_error(exc, action="check the setup", region=region) from exc
    if stack is None:
        problem(
            f"stack {stack_name} does not exist in {region}", f"run `condor_annex -setup{flag}`"
        )
        result.ok = False
        return result
    status = str(stack["StackStatus"])
    if status not in _GOOD_STACK_STATES:
        problem(
            f"stack {stack_name} is {status}",
            f"see its events in the CloudFormation console, then {rerun}",
        )
    else:
        result.checked.append(f"stack {stack_name} is {status}")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    for output in contract.STACK_OUTPUTS:
        actual = outputs.get(output.key)
        recorded = macros.get(output.macro)
        if actual is None:
            problem(f"stack {stack_name} has no output {output.key}", rerun)
        elif recorded != actual:
            problem(
                f"{config_file}: {output.macro} is {recorded!r} but the stack says {actual!r}",
                rerun,
            )
    if not any(p.what.startswith(str(config_file)) for p in result.problems):
        result.checked.append(f"{config_file} matches the stack outputs")

    def exists(what: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except botocore.exceptions.ClientError as exc:
            code = error_code(exc)
            if code in ("ResourceNotFoundException", "NoSuchEntity", "404", "NoSuchBucket"):
                problem(f"{what} does not exist", rerun)
                return
            raise translate_aws_error(exc, action=f"check {what}", region=region) from exc
        result.checked.append(f"{what} exists")

    awslambda = client("lambda")
    for output in (
        contract.OUTPUT_LEASE_FUNCTION_ARN,
        contract.OUTPUT_SWEEP_FUNCTION_ARN,
        contract.OUTPUT_CONNECTIVITY_FUNCTION_ARN,
    ):
        arn = outputs.get(output.key)
        if arn:
            exists(f"function {_arn_name(arn)}", partial(awslambda.get_function, FunctionName=arn))
    bucket = outputs.get(contract.OUTPUT_CONFIG_BUCKET.key)
    if bucket:
        s3 = client("s3")
        exists(f"bucket {bucket}", lambda: s3.head_bucket(Bucket=bucket))
    profile = outputs.get(contract.OUTPUT_INSTANCE_PROFILE_ARN.key)
    iam = client("iam")
    if profile:
        exists(
            f"instance profile {_arn_name(profile)}",
            lambda: iam.get_instance_profile(InstanceProfileName=_arn_name(profile)),
        )
    try:
        present, missing_roles = check_service_linked_roles(iam)
        result.checked += present
        result.problems += missing_roles
        probed, refused = _probe_launch_path(
            client, Settings.from_macros(recorded_macros, region), rerun
        )
        result.checked += probed
        result.problems += refused
    except botocore.exceptions.BotoCoreError as exc:
        raise translate_aws_error(exc, action="check the setup", region=region) from exc

    if collector is None:
        collector = condor_params(["COLLECTOR_HOST"]).get("COLLECTOR_HOST")
    connectivity_arn = outputs.get(contract.OUTPUT_CONNECTIVITY_FUNCTION_ARN.key)
    if collector is None:
        problem(
            "no collector to test connectivity against (no COLLECTOR_HOST in the HTCondor config)",
            "run on a machine of the pool, or pass the collector address",
        )
    elif connectivity_probe is None and not connectivity_arn:
        pass  # reported above as a missing output
    else:
        probe = connectivity_probe or invoke_connectivity_lambda(awslambda, str(connectivity_arn))
        try:
            failure = check_connectivity(probe, collector)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            failure = Problem(
                f"the connectivity check could not run ({translate_aws_error(exc, action='invoke it')})",
                rerun,
            )
        if failure is not None:
            result.problems.append(failure)
        else:
            result.checked.append(f"AWS reaches the collector {collector}")
    result.ok = not result.problems
    return result


def _probe_launch_path(
    client: Callable[[str], Any], settings: Settings, rerun: str
) -> tuple[list[str], list[Problem]]:
    """The operator's launch path as dry runs with what `create` would launch with."""
    from condor_annex.create_request import DEFAULT_INSTANCE_TYPE
    from condor_annex.images import architecture_of, default_image
    from condor_annex.launch_spec import vpc_subnets

    if not settings.instance_profile_arn or not settings.security_group_ids:
        return [], []  # reported above as missing outputs; nothing to launch with
    ec2 = client("ec2")
    instance_type = settings.defaults.instance_type or DEFAULT_INSTANCE_TYPE
    try:
        subnets = vpc_subnets(ec2, settings)
        image = settings.defaults.ami_id or default_image(
            client("ssm"), architecture_of(ec2, instance_type)
        )
    except botocore.exceptions.ClientError as exc:
        return [], [
            Problem(
                f"the launch path could not be dry-run: {translate_aws_error(exc, action='list the setup VPC subnets')}",
                rerun,
            )
        ]
    except AnnexError as exc:
        return [f"the launch path was not dry-run: {exc}"], []
    if not subnets:
        return [], [Problem(f"the setup's VPC {settings.vpc_id} has no subnets", rerun)]
    probes = launch_probes(
        ec2,
        client("scheduler"),
        settings,
        image_id=image,
        instance_type=instance_type,
        subnet_id=subnets[0],
    )
    return run_launch_probes(probes, policy_arn=settings.operator_policy_arn, sts=client("sts"))


def raise_for_problems(result: CheckResult) -> None:
    """Turn a failed check into the error the CLI exits with (the first problem leads)."""
    if result.ok:
        return
    first = result.problems[0]
    cls: type[AnnexError] = SetupIncomplete
    if (
        "does not exist in" in first.what
        or "holds no ANNEX_DEFAULT_" in first.what
        or first.what.startswith("no setup is recorded for")
    ):
        cls = SetupMissing
    elif "was made in account" in first.what:
        cls = WrongAccount
    elif "launch path is refused" in first.what:
        cls = CredentialsError  # exit 4: these credentials may not do what create does
    elif first.what.startswith("AWS cannot reach"):
        cls = ConnectivityFailed
    more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
    raise cls(first.what + more, next_step=first.next_step)


# --- -destroy-setup -----------------------------------------------------------------------------


def live_annex_instances(ec2: Any) -> dict[str, list[str]]:
    """Annex name → ids of its pending or running instances and its live fleet requests.

    Instances that carry an annex's tag but are not owned by it (the annex model's rule) are
    listed under `NAME (not owned)`: they still use the setup's profile and security groups.
    """
    live: dict[str, list[str]] = {}
    for name, found in annex.find_all(ec2, states=_LIVE_INSTANCE_STATES).items():
        ids = [*found.instance_ids, *(str(i["InstanceId"]) for i in found.awaiting_fleet_tag)]
        ids += found.fleet_ids()
        if name and ids:
            live[name] = ids
        for stray in found.unowned:
            label = f"{stray.tag_says or stray.client_token_says} (not owned)"
            live.setdefault(label, []).append(stray.resource_id)
    return live


def lease_records(s3: Any, bucket: str) -> list[str]:
    """Annex names with a lease record in the config bucket."""
    names: list[str] = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=contract.LEASE_KEY_PREFIX):
        for obj in page.get("Contents", []):
            key = str(obj["Key"])[len(contract.LEASE_KEY_PREFIX) :]
            names.append(key.removesuffix(".json"))
    return names


def empty_bucket(s3: Any, bucket: str) -> int:
    """Delete every object version and delete marker in `bucket`; the number deleted."""
    deleted = 0
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket):
        batch = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        ]
        for start in range(0, len(batch), 1000):
            chunk = batch[start : start + 1000]
            s3.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
            deleted += len(chunk)
    return deleted


def _annex_list(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def destroy_setup(
    *,
    session: Any,
    config_file: Path,
    stack_name: str,
    region: str,
    project_dir: Optional[Path] = None,
    env: Optional[Mapping[str, str]] = None,
    progress: Progress = lambda s: None,
    profile: Optional[str] = None,
) -> None:
    """Remove the setup stack and its macros; refuses while any annex is running or leased.

    Everything (the checks, emptying the bucket, the CDK CLI) acts as `session`, whose profile
    or credentials the CDK CLI gets, and only when that is the account the setup was recorded
    in: the environment's credentials never reach another account's stack.
    """
    project = _project(project_dir)
    action = "destroy the condor_annex setup"
    recorded_macros = read_annex_macros(config_file)
    recorded_region = recorded_macros.get(contract.MACRO_AWS_REGION)
    per_region = bool(recorded_region) and recorded_region != region
    macros = regional_macros(recorded_macros, region)
    base_env = dict(os.environ if env is None else env)
    validate_region(region)
    target = _resolve(session, profile, region, base_env, action)
    check_recorded(
        target,
        account_id=macros.get(contract.MACRO_AWS_ACCOUNT_ID, ""),
        region="",
        config_file=str(config_file),
        action=action,
    )
    progress(f"acting in {target.describe()}")
    stack: Optional[dict[str, Any]] = None
    vpc_id: Optional[str] = macros.get(contract.OUTPUT_VPC_ID.macro)

    def client(service: str) -> Any:
        return make_client(session, service, region_name=region)

    try:
        stack = _stack(client("cloudformation"), stack_name)
        outputs = {o["OutputKey"]: o["OutputValue"] for o in (stack or {}).get("Outputs", [])}
        bucket = outputs.get(contract.OUTPUT_CONFIG_BUCKET.key) or macros.get(
            contract.OUTPUT_CONFIG_BUCKET.macro
        )
        vpc_id = outputs.get(contract.OUTPUT_VPC_ID.key) or vpc_id
        live = live_annex_instances(client("ec2"))
        if live:
            raise AnnexError(
                f"annexes are still running: {_annex_list(live)} "
                f"({sum(len(v) for v in live.values())} instances)",
                next_step="end each with `condor_annex off -annex-name NAME`, then retry",
            )
        s3 = client("s3")
        if bucket and stack is not None:
            leased = lease_records(s3, bucket)
            if leased:
                raise AnnexError(
                    f"annexes still hold leases: {_annex_list(leased)}",
                    next_step="end each with `condor_annex off -annex-name NAME`, then retry",
                )
            progress(f"emptying bucket {bucket}")
            count = empty_bucket(s3, bucket)
            progress(f"deleted {count} objects from {bucket}")
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) != "NoSuchBucket":
            raise translate_aws_error(exc, action=action, region=region) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise translate_aws_error(exc, action=action, region=region) from exc

    if stack is not None:
        cdk_env = _cdk_env(base_env, target)
        context = ["-c", f"stackName={stack_name}"]
        if vpc_id:
            context += ["-c", f"vpcId={vpc_id}"]
        with tempfile.TemporaryDirectory(prefix="condor-annex-cdk-") as scratch:
            progress(f"destroying stack {stack_name} in {target.describe()}")
            _run_cdk(
                [
                    "destroy",
                    "--app",
                    f"{sys.executable} app.py",
                    "--output",
                    str(Path(scratch) / "cdk.out"),
                    "--no-color",
                    *context,
                    "--all",
                    "--force",
                ],
                project_dir=project,
                env=cdk_env,
                progress=progress,
                action=action,
            )
    else:
        progress(
            f"stack {stack_name} does not exist in {target.describe()}; removing the macros only"
        )
    if per_region:
        names = [regional_name(name, region) for name in SETUP_MACROS]
    else:
        names = [*SETUP_MACROS, contract.MACRO_AWS_REGION]
    remove_annex_macros(config_file, names)
    progress(f"removed the ANNEX_DEFAULT_* macros from {config_file}")
