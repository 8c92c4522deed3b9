"""`npx cdk bootstrap/deploy/destroy` of the setup app into the local AWS, as an admin runs it.

One test walks the whole life cycle (each CDK CLI run costs ~15-25 s here): bootstrap, deploy
the app (synthesizing `app.py` with the default synthesizer, publishing the Lambda code assets
to the bootstrap bucket), read every output back, check each function was built from the published code asset and runs,
deploy again (a no-op), destroy.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from condor_annex import contract
from tests.fixtures.cdk import default_vpc_id

REPO = Path(__file__).resolve().parents[2]


def cdk(aws: Any, workdir: Path, app: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **aws.env(),
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        "CDK_DISABLE_VERSION_CHECK": "1",
    }
    result = subprocess.run(
        [
            "npx",
            "--no-install",
            "cdk",
            *args,
            "--app",
            app,
            "--output",
            str(workdir / "cdk.out"),
            "--no-notices",
            "--no-version-reporting",
            "--ci",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"cdk {args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.cdk
@pytest.mark.timeout(900)
def test_cdk_deploy_reads_outputs_redeploys_as_no_op_and_destroys(aws, tmp_path):
    vpc_id = default_vpc_id(aws)
    app = f"{sys.executable} app.py"
    context = ["-c", f"vpcId={vpc_id}", "-c", 'poolCidrs=["192.0.2.0/24"]']
    cfn = aws.client("cloudformation")

    cdk(aws, tmp_path, app, "bootstrap", f"aws://{aws.account_id}/{aws.region}")
    outputs_file = tmp_path / "outputs.json"
    cdk(
        aws, tmp_path, app, "deploy", *context,
        "--require-approval", "never", "--outputs-file", str(outputs_file),
    )  # fmt: skip

    outputs = json.loads(outputs_file.read_text())[contract.STACK_NAME]
    assert sorted(outputs) == sorted(o.key for o in contract.STACK_OUTPUTS)
    (stack,) = cfn.describe_stacks(StackName=contract.STACK_NAME)["Stacks"]
    assert {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]} == outputs
    assert outputs[contract.OUTPUT_VPC_ID.key] == vpc_id
    first_update = stack.get("LastUpdatedTime")

    # CloudFormation built each function from the code asset `cdk deploy` published.
    template = cfn.get_template(StackName=contract.STACK_NAME)["TemplateBody"]
    template = json.loads(template) if isinstance(template, str) else template
    s3, lambda_ = aws.client("s3"), aws.client("lambda")
    functions = {
        logical_id: resource["Properties"]["Code"]["S3Key"]
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Lambda::Function"
    }
    assert len(functions) == 3
    bucket = f"cdk-hnb659fds-assets-{aws.account_id}-{aws.region}"
    physical_ids = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for page in cfn.get_paginator("list_stack_resources").paginate(
            StackName=contract.STACK_NAME
        )
        for r in page["StackResourceSummaries"]
    }
    for logical_id, key in functions.items():
        published = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        config = lambda_.get_function(FunctionName=physical_ids[logical_id])["Configuration"]
        assert config["CodeSha256"] == base64.b64encode(hashlib.sha256(published).digest()).decode()
        with zipfile.ZipFile(io.BytesIO(published)) as bundle:
            assert {"handler.py", "condor_annex/contract.py"} <= set(bundle.namelist())

    # The deployed connectivity function runs (the local AWS executes Python handlers).
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        answer = lambda_.invoke(
            FunctionName=outputs[contract.OUTPUT_CONNECTIVITY_FUNCTION_ARN.key],
            Payload=json.dumps(
                {"host": "127.0.0.1", "port": listener.getsockname()[1], "timeout": 2}
            ),
        )
    report = json.loads(answer["Payload"].read())
    assert "FunctionError" not in answer, report
    assert report["reachable"] is True

    # Deploy the same assembly again: nothing changes.
    again = cdk(aws, tmp_path, str(tmp_path / "cdk.out"), "deploy", "--require-approval", "never")
    assert "(no changes)" in again.stdout + again.stderr
    (stack,) = cfn.describe_stacks(StackName=contract.STACK_NAME)["Stacks"]
    assert stack.get("LastUpdatedTime") == first_update

    cdk(aws, tmp_path, str(tmp_path / "cdk.out"), "destroy", "--force")
    statuses = {s["StackName"]: s["StackStatus"] for s in cfn.list_stacks()["StackSummaries"]}
    assert statuses[contract.STACK_NAME] == "DELETE_COMPLETE"
    roles = [r["Arn"] for r in aws.client("iam").list_roles()["Roles"]]
    assert outputs[contract.OUTPUT_INSTANCE_ROLE_ARN.key] not in roles
