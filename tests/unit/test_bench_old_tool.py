"""The baseline reproduces the old script's call sequence (canned answers, no emulator)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, Optional

from bench.old_tool import old_tool_boot
from condor_annex import contract

GUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
BUCKET = "annex-config"


def _tarball() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as archive:
        data = b"START = True\n"
        info = tarfile.TarInfo(contract.TARBALL_CONFIG_FILE)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return raw.getvalue()


class CannedCaller:
    """Answers like EC2/IAM/S3 for one instance whose role has one inline and one attached policy."""

    def __init__(self, client_token: str, tags: Optional[list[dict[str, str]]] = None) -> None:
        self.client_token = client_token
        self.tags = tags or []
        self.calls: list[str] = []

    def metadata(self, path: str) -> str:
        if path.endswith("iam/info"):
            return json.dumps({"InstanceProfileArn": "arn:aws:iam::1:instance-profile/p/annex"})
        return "i-0123456789abcdef0"

    def untar(self, archive: Path, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")

    def aws(
        self, service: str, operation: str, params: dict[str, Any], download: Optional[Path] = None
    ) -> dict[str, Any]:
        self.calls.append(f"{service}:{operation}")
        read = {"Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                               "Resource": contract.config_object_arn_pattern(BUCKET)}]}  # fmt: skip
        answers: dict[str, Any] = {
            "describe_instances": {"Reservations": [{"Instances": [{"ClientToken": self.client_token, "Tags": self.tags}]}]},
            "describe_spot_fleet_requests": {"SpotFleetRequestConfigs": [
                {"SpotFleetRequestConfig": {"ClientToken": f"fleet_annex_{GUID}"}}]},
            "get_instance_profile": {"InstanceProfile": {"Roles": [{"RoleName": "annex"}]}},
            "list_role_policies": {"PolicyNames": ["Describe"]},
            "get_role_policy": {"PolicyDocument": read},
            "list_attached_role_policies": {"AttachedPolicies": [{"PolicyArn": "arn:aws:iam::1:policy/x"}]},
            "get_policy": {"Policy": {"DefaultVersionId": "v1"}},
            "get_policy_version": {"PolicyVersion": {"Document": {"Statement": []}}},
        }  # fmt: skip
        if operation == "get_object":
            assert download is not None
            download.write_bytes(_tarball())
            return {}
        return dict(answers[operation])


def test_on_demand_baseline_makes_the_old_scripts_eight_calls(tmp_path: Path) -> None:
    caller = CannedCaller(f"my_annex_{GUID}")
    boot = old_tool_boot(caller, tmp_path)
    assert caller.calls == [
        "ec2:describe_instances",
        "iam:get_instance_profile",
        "iam:list_role_policies",
        "iam:get_role_policy",
        "iam:list_attached_role_policies",
        "iam:get_policy",
        "iam:get_policy_version",
        "s3:get_object",
    ]
    assert (boot.annex_name, boot.bucket) == ("my_annex", BUCKET)
    assert (tmp_path / "etc/condor/config.d" / contract.TARBALL_CONFIG_FILE).exists()


def test_spot_baseline_reads_the_fleets_client_token(tmp_path: Path) -> None:
    tags = [{"Key": contract.SPOT_FLEET_REQUEST_ID_TAG, "Value": "sfr-1"}]
    caller = CannedCaller("generated-fleet-token", tags)
    boot = old_tool_boot(caller, tmp_path)
    assert caller.calls[:2] == ["ec2:describe_instances", "ec2:describe_spot_fleet_requests"]
    assert boot.annex_name == "fleet_annex"
