"""The Lambda functions: newest Python runtime, bundled with the contract, least privilege."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

from aws_cdk import aws_lambda as lambda_

from condor_annex import contract
from stacks.lambda_code import RUNTIME
from tests.stacks.policies import by_sid, logical_ids, only, rendered, statements_of

REPO = Path(__file__).resolve().parents[2]


def python_runtimes() -> dict[tuple[int, ...], str]:
    versions = {}
    for name in dir(lambda_.Runtime):
        match = re.fullmatch(r"PYTHON_(\d+)_(\d+)", name)
        if match:
            versions[tuple(int(g) for g in match.groups())] = name
    return versions


def test_functions_use_the_newest_python_runtime_of_the_library():
    versions = python_runtimes()
    newest = versions[max(versions)]
    assert RUNTIME.name == getattr(lambda_.Runtime, newest).name


def test_runtime_is_not_deprecated():
    versions = python_runtimes()
    name = versions[max(versions)]
    doc = inspect.getdoc(inspect.getattr_static(lambda_.Runtime, name)) or ""
    assert ":stability: deprecated" not in doc and "(deprecated)" not in doc


def test_every_function_runs_the_newest_runtime(synthesized_setup):
    template = synthesized_setup.template
    functions = logical_ids(template, "AWS::Lambda::Function")
    assert len(functions) == 3
    for function in functions:
        assert template["Resources"][function]["Properties"]["Runtime"] == RUNTIME.name


def test_lease_and_sweep_entry_points(synthesized_setup):
    template = synthesized_setup.template
    handlers = {
        f: template["Resources"][f]["Properties"]["Handler"]
        for f in logical_ids(template, "AWS::Lambda::Function")
    }
    assert handlers[only(template, "AWS::Lambda::Function", "LeaseEnforcementLease")] == (
        "handler.handler"
    )
    assert handlers[only(template, "AWS::Lambda::Function", "LeaseEnforcementSweep")] == (
        "handler.sweep_handler"
    )
    assert handlers[only(template, "AWS::Lambda::Function", "ConnectivityCheck")] == (
        "handler.handler"
    )


def test_sweep_function_knows_the_config_bucket(synthesized_setup):
    template = synthesized_setup.template
    sweep = template["Resources"][only(template, "AWS::Lambda::Function", "LeaseEnforcementSweep")]
    bucket = only(template, "AWS::S3::Bucket", "ConfigBucket")
    assert sweep["Properties"]["Environment"]["Variables"] == {
        contract.LAMBDA_ENV_CONFIG_BUCKET: {"Ref": bucket}
    }


def test_sweep_runs_every_fifteen_minutes(synthesized_setup):
    template = synthesized_setup.template
    (rule,) = logical_ids(template, "AWS::Events::Rule")
    props = template["Resources"][rule]["Properties"]
    assert props["ScheduleExpression"] == "rate(15 minutes)"
    sweep = only(template, "AWS::Lambda::Function", "LeaseEnforcementSweep")
    assert props["Targets"][0]["Arn"] == {"Fn::GetAtt": [sweep, "Arn"]}


def test_code_bundle_carries_the_contract_unchanged(synthesized_setup):
    manifest = synthesized_setup.assets_manifest["files"]
    bundles = [a for a in manifest.values() if a["source"]["packaging"] == "zip"]
    assert len(bundles) == 2  # lease + sweep share one bundle; connectivity has its own
    contract_source = (REPO / "condor_annex" / "contract.py").read_bytes()
    for asset in bundles:
        root = synthesized_setup.outdir / asset["source"]["path"]
        assert (root / "handler.py").is_file()
        assert (root / "condor_annex" / "contract.py").read_bytes() == contract_source


def test_lease_bundle_imports_in_a_clean_interpreter(synthesized_setup, tmp_path):
    import subprocess
    import sys

    manifest = synthesized_setup.assets_manifest["files"]
    lease_asset = next(
        a for a in manifest.values() if a["displayName"].startswith("LeaseEnforcement/Lease")
    )
    root = synthesized_setup.outdir / lease_asset["source"]["path"]
    code = "import handler, json; print(json.dumps([handler.handler.__name__, handler.sweep_handler.__name__]))"
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(root)!r}); {code}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert json.loads(out) == ["handler", "sweep_handler"]


def test_lease_role_terminates_and_cancels_only_annex_tagged_resources(synthesized_setup):
    template = synthesized_setup.template
    role = only(template, "AWS::IAM::Role", "LeaseEnforcementLeaseRole")
    tagged = {"Null": {f"aws:ResourceTag/{contract.TAG_ANNEX_NAME}": "false"}}
    terminate = by_sid(template, role, "TerminateAnnexInstances")
    assert terminate.actions == ["ec2:TerminateInstances"]
    assert terminate.body["Condition"] == tagged
    cancel = by_sid(template, role, "CancelAnnexFleets")
    assert cancel.actions == ["ec2:CancelSpotFleetRequests"]
    assert cancel.body["Condition"] == tagged
    assert [rendered(r) for r in cancel.resources] == [
        "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:spot-fleet-request/*"
    ]


def test_lease_role_touches_only_tarballs_lease_records_and_annex_schedules(synthesized_setup):
    template = synthesized_setup.template
    role = only(template, "AWS::IAM::Role", "LeaseEnforcementLeaseRole")
    bucket = "${" + only(template, "AWS::S3::Bucket", "ConfigBucket") + ".Arn}"
    objects = by_sid(template, role, "ReadAndDeleteAnnexObjects")
    assert sorted(objects.actions) == ["s3:DeleteObject", "s3:GetObject"]
    assert [rendered(r) for r in objects.resources] == [
        f"{bucket}/{contract.CONFIG_KEY_PATTERN}",
        f"{bucket}/{contract.LEASE_KEY_PREFIX}*",
    ]
    schedules = by_sid(template, role, "DeleteLeaseSchedules")
    assert schedules.actions == ["scheduler:DeleteSchedule"]
    assert [rendered(r) for r in schedules.resources] == [
        "arn:${AWS::Partition}:scheduler:${AWS::Region}:${AWS::AccountId}:schedule/default/"
        f"{contract.SCHEDULE_NAME_PREFIX}*"
    ]


def test_connectivity_role_only_writes_its_own_logs(synthesized_setup):
    template = synthesized_setup.template
    role = only(template, "AWS::IAM::Role", "ConnectivityCheckRole")
    (statement,) = statements_of(template, role)
    assert statement.actions == ["logs:CreateLogStream", "logs:PutLogEvents"]
    log_group = only(template, "AWS::Logs::LogGroup", "ConnectivityCheckLogs")
    assert [rendered(r) for r in statement.resources] == ["${" + log_group + ".Arn}:*"]


def test_scheduler_role_may_only_invoke_the_lease_function(synthesized_setup):
    template = synthesized_setup.template
    role = only(template, "AWS::IAM::Role", "LeaseEnforcementSchedulerRole")
    props = template["Resources"][role]["Properties"]
    (trust,) = props["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    (statement,) = statements_of(template, role)
    lease = only(template, "AWS::Lambda::Function", "LeaseEnforcementLease")
    assert statement.actions == ["lambda:InvokeFunction"]
    assert statement.resources == [{"Fn::GetAtt": [lease, "Arn"]}]


def test_lease_role_deletes_only_annex_tagged_launch_templates(synthesized_setup):
    template = synthesized_setup.template
    for function in ("LeaseEnforcementLeaseRole", "LeaseEnforcementSweepRole"):
        role = only(template, "AWS::IAM::Role", function)
        delete = by_sid(template, role, "DeleteAnnexLaunchTemplates")
        assert delete.actions == ["ec2:DeleteLaunchTemplate"]
        assert delete.body["Condition"] == {
            "Null": {f"aws:ResourceTag/{contract.TAG_ANNEX_NAME}": "false"}
        }
        assert [rendered(r) for r in delete.resources] == [
            "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:launch-template/*"
        ]
        find = by_sid(template, role, "FindAnnexResources")
        assert "ec2:DescribeLaunchTemplates" in find.actions
        assert find.resources == ["*"]
