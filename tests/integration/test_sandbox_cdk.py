"""The CDK CLI deploys into the local AWS with the default synthesizer and change sets.

One bootstrap and one synth for the module; the stack is deployed once, redeployed (a no-op) and
destroyed, in that order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from annex_sandbox import LocalAws

pytestmark = pytest.mark.cdk

REPO = Path(__file__).resolve().parents[2]
STACK = "SandboxCdkProbe"
APP = f"""
import aws_cdk as cdk
from aws_cdk import aws_s3_assets as assets, aws_sqs as sqs, aws_ssm as ssm

app = cdk.App()
stack = cdk.Stack(app, "{STACK}")
queue = sqs.Queue(stack, "Queue")
param = ssm.StringParameter(stack, "Param", string_value="hello")
asset = assets.Asset(stack, "Asset", path="asset.txt")
cdk.CfnOutput(stack, "QueueUrl", value=queue.queue_url)
cdk.CfnOutput(stack, "ParamName", value=param.parameter_name)
cdk.CfnOutput(stack, "AssetBucket", value=asset.s3_bucket_name)
cdk.CfnOutput(stack, "AssetKey", value=asset.s3_object_key)
app.synth()
"""


def _cdk_command() -> list[str]:
    local = REPO / "node_modules" / ".bin" / "cdk"
    if local.exists():
        return [str(local)]
    if shutil.which("npx"):
        return ["npx", "--no-install", "cdk"]
    pytest.skip("the CDK CLI is not installed (npm ci)")


@pytest.fixture(scope="module")
def cdk(local_aws: LocalAws, tmp_path_factory: pytest.TempPathFactory):
    """Run `cdk ARGS` against the local AWS in a directory holding a tiny synthesized app."""
    local_aws.reset()
    workdir = tmp_path_factory.mktemp("cdk-app")
    (workdir / "app.py").write_text(APP)
    (workdir / "asset.txt").write_text("a file asset\n")
    env = {
        **os.environ,
        **local_aws.env(),  # AWS_ENDPOINT_URL=http://127.0.0.1:PORT: the URL moto used to misread
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        "CDK_DISABLE_VERSION_CHECK": "1",
        "CI": "true",
    }
    base = [*_cdk_command(), "--no-notices", "--no-color"]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*base, *args],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"cdk {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    run("synth", "--app", f"{sys.executable} app.py", "--output", "cdk.out", "--quiet")
    run("bootstrap", f"aws://{local_aws.account_id}/{local_aws.region}")
    return run


@pytest.fixture(scope="module")
def deployed(cdk, local_aws: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    outputs_file = tmp_path_factory.mktemp("cdk-outputs") / "outputs.json"
    cdk(
        "deploy",
        "--app",
        "cdk.out",
        "--require-approval",
        "never",
        "--outputs-file",
        str(outputs_file),
    )
    return dict(json.loads(outputs_file.read_text())[STACK])


def test_cdk_bootstrap_writes_the_version_parameter(cdk, local_aws):
    """The default synthesizer's templates check `/cdk-bootstrap/hnb659fds/version`
    ("Bootstrapping your environment", https://docs.aws.amazon.com/cdk/v2/guide/bootstrapping-env.html)."""
    ssm = local_aws.client("ssm")

    assert (
        int(ssm.get_parameter(Name="/cdk-bootstrap/hnb659fds/version")["Parameter"]["Value"]) >= 6
    )


def test_cdk_deploy_with_change_sets_reports_every_output(deployed):
    assert set(deployed) == {"QueueUrl", "ParamName", "AssetBucket", "AssetKey"}
    assert deployed["ParamName"].startswith("CFN-Param")


def test_cdk_deploy_publishes_the_file_asset(deployed, local_aws):
    body = local_aws.client("s3").get_object(
        Bucket=deployed["AssetBucket"], Key=deployed["AssetKey"]
    )["Body"]

    assert body.read() == b"a file asset\n"


def test_cdk_redeploy_of_an_unchanged_app_is_a_no_op(deployed, cdk, local_aws):
    local_aws.clear_calls()

    output = cdk("deploy", "--app", "cdk.out", "--require-approval", "never")

    assert "(no changes)" in output
    assert local_aws.calls("cloudformation", "ExecuteChangeSet") == []


def test_cdk_destroy_removes_the_stack(deployed, cdk, local_aws):
    cdk("destroy", "--app", "cdk.out", "--force", STACK)

    stacks = local_aws.client("cloudformation").list_stacks()["StackSummaries"]
    assert {s["StackStatus"] for s in stacks if s["StackName"] == STACK} == {"DELETE_COMPLETE"}
    ssm = local_aws.client("ssm")
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=deployed["ParamName"])
