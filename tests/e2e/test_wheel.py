"""The product as people install it: the wheel built from this repository, in fresh virtual
environments outside the checkout, running README's "Using it with a real AWS account" commands
exactly (from an empty directory, against the local AWS), and the boot agent from the same wheel
on a Python with only boto3.

The local AWS's IAM engine decides every request: `-setup` and `-destroy-setup` run as an
administrator IAM user, every other command as an operator IAM user holding only the setup's
operator policies, as the README tells an account's administrator to arrange.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from annex_sandbox import principals
from annex_sandbox.demo import PretendCollector, write_pool_signing_key
from annex_sandbox.imds import ImdsServer, instance_from_ec2
from annex_sandbox.local_aws import LocalAws
from condor_annex import contract

# Two pip installs, a CDK synth with cdk-nag (twice: deploy and destroy) and a boot: minutes on
# a loaded machine, so past the suite's default per-test timeout.
pytestmark = [pytest.mark.cdk, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
README_SECTION = "## Using it with a real AWS account"
PIP_INSTALL = 'pip install "condor-annex[setup]"'
AGENT_DISTRIBUTIONS = {
    "condor-annex",
    "boto3",
    "botocore",
    "s3transfer",
    "jmespath",
    "python-dateutil",
    "six",
    "urllib3",
    "pip",
    "setuptools",
}
"""What a bare Python plus `pip install condor-annex` may hold: the wheel, boto3 and its deps."""
ADMINISTRATOR_COMMANDS = {"-setup", "-destroy-setup"}
"""What an account's administrator runs; the operator runs everything else."""


def readme_commands() -> list[list[str]]:
    """The shell lines of README's real-account section, split like the shell would."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(README_SECTION) :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README's real-account section has no ```sh block"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line]


def _run(command: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, **kw)


def _source_tree(destination: Path) -> Path:
    """The repository's files (tracked and new, as git sees them) without build leftovers."""
    listed = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel-build")
    source = _source_tree(work / "src")
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(work), "."],
        cwd=source,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (found,) = work.glob("condor_annex-*.whl")
    return found


def _venv(path: Path, requirement: str) -> Path:
    made = _run([sys.executable, "-m", "venv", str(path)])
    assert made.returncode == 0, made.stderr
    installed = _run(
        [
            str(path / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ]
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    return path / "bin"


@pytest.fixture
def emulators(local_aws: LocalAws) -> Iterator[tuple[LocalAws, ImdsServer, PretendCollector]]:
    local_aws.reset()
    local_aws.clear_throttles()
    # On even where a developer switched the engine off: the operator's policies are under test.
    local_aws.enforce_iam(True)
    imds = ImdsServer().start()
    collector = PretendCollector().start()
    try:
        yield local_aws, imds, collector
    finally:
        collector.stop()
        imds.stop()


def test_the_readme_commands_work_from_the_wheel_and_the_agent_needs_only_boto3(
    wheel, emulators, tmp_path
):
    local, imds, collector = emulators
    commands = readme_commands()
    assert commands[0] == shlex.split(PIP_INSTALL), "README must start with the install"
    cli = _venv(tmp_path / "cli-venv", f"{wheel}[setup]")
    agent = _venv(tmp_path / "agent-venv", str(wheel))

    # The agent's environment: the wheel and boto3, nothing of the development tree.
    frozen = _run([str(agent / "python"), "-m", "pip", "list", "--format", "json"])
    names = {d["name"].lower() for d in json.loads(frozen.stdout)}
    assert names <= AGENT_DISTRIBUTIONS, names - AGENT_DISTRIBUTIONS
    probe = _run(
        [str(agent / "python"), "-c", "import annex_sandbox"], cwd=tmp_path, env={"PATH": ""}
    )
    assert probe.returncode != 0, "the development package leaked into the wheel"

    # README's commands, from an empty directory, with this test's stand-ins for the
    # collector, the image and the pool key.
    workdir = tmp_path / "empty"
    workdir.mkdir()
    key = tmp_path / "POOL"
    write_pool_signing_key(key)
    ami = sorted(
        i["ImageId"] for i in local.client("ec2").describe_images(Owners=["amazon"])["Images"]
    )[0]
    stand_ins = {
        "-collector": f"127.0.0.1:{collector.port}",
        "-aws-on-demand-ami-id": ami,
        "-pool-signing-key-file": str(key),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CONDOR_ANNEX_"))}
    env.update(local.env())
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        PATH=f"{cli}{os.pathsep}{env.get('PATH', '')}",
        JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20",
        # npx fetches the pinned CDK CLI once; the user's npm cache makes that offline.
        NPM_CONFIG_CACHE=os.environ.get("NPM_CONFIG_CACHE", str(Path.home() / ".npm")),
        NPM_CONFIG_PREFER_OFFLINE="true",
    )
    (tmp_path / "home").mkdir()
    iam = local.client("iam")
    administrator = principals.create_administrator(iam)
    operator: principals.UserKeys | None = None
    operator_arns: list[str] = []
    outputs: dict[str, str] = {}
    for command in commands[1:]:
        assert command[0] == "condor_annex", command
        args = [stand_ins.get(prev, arg) for prev, arg in zip(["", *command], command)]
        if command[1] == "-destroy-setup" and operator is not None:
            # IAM refuses to delete a policy still attached: the operator's user goes first.
            principals.delete_user(iam, operator.user_name)
            operator = None
        user = administrator if command[1] in ADMINISTRATOR_COMMANDS else operator
        assert user is not None, f"{command} runs before -setup made the operator's policies"
        done = _run(
            [str(cli / "condor_annex"), *args[1:]],
            cwd=workdir,
            env={**env, **user.sdk_environment()},
            timeout=900,
        )
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
        outputs[" ".join(command[1:2])] = done.stdout
        if command[1] == "-setup":
            stack = local.client("cloudformation").describe_stacks(StackName=contract.STACK_NAME)
            stack_outputs = {
                o["OutputKey"]: o["OutputValue"] for o in stack["Stacks"][0]["Outputs"]
            }
            operator = principals.create_operator(iam, stack_outputs)
            operator_arns.append(operator.arn)
        if "-count" in command:
            _boot_one_instance_with_the_bare_agent(local, imds, agent, tmp_path)
        assert not any(workdir.iterdir()), f"{command} wrote into the working directory"

    created = outputs["-annex-name"]
    status = outputs["status"]
    instance_ids = re.findall(r"\bi-[0-9a-f]+", created)  # not the tail of "ami-..."
    assert len(set(instance_ids)) == 3
    assert all(i in status for i in instance_ids)
    assert "Setup" in outputs["-destroy-setup"]
    stacks = local.client("cloudformation").list_stacks()["StackSummaries"]
    assert all(
        s["StackStatus"] == "DELETE_COMPLETE"
        for s in stacks
        if s["StackName"] == contract.STACK_NAME
    )
    # The engine judged the operator's commands and refused none of the flow's requests.
    decisions = local.state.authz_report()["decisions"]
    assert operator_arns and any(caller in operator_arns for _, caller, *_ in decisions)
    assert [d for d in decisions if not d[3]] == []


def _boot_one_instance_with_the_bare_agent(
    local: LocalAws, imds: ImdsServer, agent: Path, tmp_path: Path
) -> None:
    ec2 = local.client("ec2")
    reservations = ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )["Reservations"]
    instance_id = sorted(i["InstanceId"] for r in reservations for i in r["Instances"])[0]
    instance = instance_from_ec2(
        ec2, local.client("iam"), instance_id, sts_client=local.client("sts"), region=local.region
    )
    url = imds.add_instance(instance)
    root = tmp_path / "instance"
    root.mkdir()
    env = {"PATH": os.defpath, "HOME": str(tmp_path / "home")}
    env.update(
        AWS_ENDPOINT_URL=local.env()["AWS_ENDPOINT_URL"], AWS_EC2_METADATA_SERVICE_ENDPOINT=url
    )
    booted = _run(
        [str(agent / "condor-annex-ec2"), "--root", str(root), "--no-firewall", "--no-poweroff"],
        env=env,
        timeout=300,
    )
    assert booted.returncode == 0, booted.stdout[-3000:] + booted.stderr[-2000:]
    config_d = root / "etc" / "condor" / "config.d"
    assert (config_d / contract.INSTANCE_MACROS_FILE).is_file()
    assert any(
        p.name.endswith(".config") and p.name != contract.INSTANCE_MACROS_FILE
        for p in config_d.iterdir()
    )
