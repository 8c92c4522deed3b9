"""The old boot script's call sequence: the baseline every agent benchmark is compared with.

The reference `condor-annex-ec2` was a bash script: `curl` for each metadata read and one `aws ...`
CLI process per AWS call, scanning every policy of the instance profile's role:

  describe-instances → get-instance-profile → list-role-policies → get-role-policy (each inline
  policy) → list-attached-role-policies → get-policy + get-policy-version (each attached policy)
  → s3 cp config-<annex>.tar.gz → tar xzf

Spot Fleet instances first poll describe-instances until Spot Fleet's tag appears, then
describe-spot-fleet-requests for the fleet's client token.

`ProcessCaller` reproduces it faithfully, one process per call (interpreter start, SDK import,
credentials from the metadata service, one call). `InProcessCaller` makes the same calls from
threads for the scale benchmark, where a thousand processes per second would measure the
benchmark machine's CPU instead of the AWS call budget.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

from condor_annex import contract
from condor_annex.agent.discovery import buckets_in_policy

CALL_SCRIPT = Path(__file__).with_name("old_tool_call.py")


class Caller(Protocol):
    def aws(
        self, service: str, operation: str, params: dict[str, Any], download: Optional[Path] = None
    ) -> dict[str, Any]: ...

    def metadata(self, path: str) -> str: ...

    def untar(self, archive: Path, target: Path) -> None: ...


class OldToolFailed(Exception):
    """A step of the baseline failed (as the old script would have: it did not retry)."""


@dataclass
class ProcessCaller:
    """One OS process per step: `curl` for metadata, a Python+boto3 process per AWS call, `tar`.

    `env` holds AWS_ENDPOINT_URL, AWS_EC2_METADATA_SERVICE_ENDPOINT and the region, and no
    static credentials: every process resolves the instance's credentials itself, like the CLI.
    """

    env: dict[str, str]
    imds_endpoint: str
    python: str = sys.executable
    processes: int = 0
    _token: Optional[str] = None

    def _run(self, argv: list[str]) -> str:
        self.processes += 1
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OldToolFailed(f"{' '.join(argv[:4])}: {done.stderr.strip()[-300:]}")
        return done.stdout

    def aws(
        self, service: str, operation: str, params: dict[str, Any], download: Optional[Path] = None
    ) -> dict[str, Any]:
        argv = [self.python, str(CALL_SCRIPT), service, operation, json.dumps(params)]
        if download is not None:
            argv.append(str(download))
        result: dict[str, Any] = json.loads(self._run(argv))
        return result

    def metadata(self, path: str) -> str:
        base = self.imds_endpoint.rstrip("/")
        if self._token is None:
            self._token = self._run(
                ["curl", "-sf", "-X", "PUT", f"{base}/latest/api/token",
                 "-H", "X-aws-ec2-metadata-token-ttl-seconds: 21600"]
            ).strip()  # fmt: skip
        return self._run(
            [
                "curl",
                "-sf",
                "-H",
                f"X-aws-ec2-metadata-token: {self._token}",
                f"{base}/latest/{path}",
            ]
        )

    def untar(self, archive: Path, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        self._run(["tar", "-C", str(target), "-xzf", str(archive)])


@dataclass
class InProcessCaller:
    """The same calls from one thread: a fresh client per call on the instance's own session.

    `session_factory()` returns a boto3 Session whose credentials come from the instance's
    metadata endpoint; `metadata` reads that endpoint with the agent's IMDSv2 client.
    """

    session: Any
    endpoint_url: str
    imds: Any
    client_config: Any = None

    def aws(
        self, service: str, operation: str, params: dict[str, Any], download: Optional[Path] = None
    ) -> dict[str, Any]:
        client = self.session.client(
            service, endpoint_url=self.endpoint_url, config=self.client_config
        )
        response: dict[str, Any] = getattr(client, operation)(**params)
        if download is not None:
            download.write_bytes(response["Body"].read())
        return response

    def metadata(self, path: str) -> str:
        text: str = self.imds.get(path)
        return text

    def untar(self, archive: Path, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")


@dataclass
class OldBoot:
    annex_name: str
    bucket: str
    seconds: float
    aws_calls: list[str] = field(default_factory=list)


def _tag(instance: dict[str, Any], key: str) -> Optional[str]:
    for tag in instance.get("Tags") or []:
        if tag.get("Key") == key:
            return str(tag.get("Value"))
    return None


def old_tool_boot(
    caller: Caller,
    root: Path,
    *,
    spot_poll_seconds: float = 1.0,
    spot_poll_cap: float = 60.0,
    spot_timeout: float = 600.0,
    sleep: Callable[[float], None] = time.sleep,
) -> OldBoot:
    """Run the old script's sequence for one instance; raises OldToolFailed on any error."""
    started = time.perf_counter()
    calls: list[str] = []

    def aws(service: str, operation: str, params: dict[str, Any], **kw: Any) -> dict[str, Any]:
        calls.append(f"{service}:{operation}")
        try:
            return caller.aws(service, operation, params, **kw)
        except OldToolFailed:
            raise
        except Exception as error:  # the CLI exits non-zero; the script goes on blind
            raise OldToolFailed(f"{service} {operation}: {error}") from error

    instance_id = caller.metadata("meta-data/instance-id").strip()
    caller.metadata("dynamic/instance-identity/document")  # the region, as the script read it
    described = aws("ec2", "describe_instances", {"InstanceIds": [instance_id]})
    instance = described["Reservations"][0]["Instances"][0]
    token = instance.get("ClientToken") or ""
    name = contract.annex_name_from_client_token(token)
    if name is None:
        give_up = time.monotonic() + spot_timeout
        fleet = _tag(instance, contract.SPOT_FLEET_REQUEST_ID_TAG)
        delay = spot_poll_seconds
        while fleet is None:
            if time.monotonic() > give_up:
                raise OldToolFailed("no fleet tag")
            # The reference backs off exponentially between polls (docs/RULES.md, "Annex identity").
            sleep(delay)
            delay = min(delay * 2, spot_poll_cap)
            described = aws("ec2", "describe_instances", {"InstanceIds": [instance_id]})
            fleet = _tag(
                described["Reservations"][0]["Instances"][0], contract.SPOT_FLEET_REQUEST_ID_TAG
            )
        fleets = aws("ec2", "describe_spot_fleet_requests", {"SpotFleetRequestIds": [fleet]})
        fleet_token = fleets["SpotFleetRequestConfigs"][0]["SpotFleetRequestConfig"].get(
            "ClientToken", ""
        )
        name = contract.annex_name_from_client_token(fleet_token)
        if name is None:
            raise OldToolFailed(f"fleet {fleet} has no annex client token")

    info = json.loads(caller.metadata("meta-data/iam/info"))
    profile_name = str(info["InstanceProfileArn"]).rsplit("/", 1)[-1]
    profile = aws("iam", "get_instance_profile", {"InstanceProfileName": profile_name})
    buckets: list[str] = []
    seen: list[str] = []
    for role in profile["InstanceProfile"]["Roles"]:
        role_name = role["RoleName"]
        inline = aws("iam", "list_role_policies", {"RoleName": role_name})
        for policy_name in inline["PolicyNames"]:
            document = aws(
                "iam", "get_role_policy", {"RoleName": role_name, "PolicyName": policy_name}
            )["PolicyDocument"]
            buckets += buckets_in_policy(document)
            seen.append(f"{policy_name}={str(document)[:200]}")
        attached = aws("iam", "list_attached_role_policies", {"RoleName": role_name})
        for policy in attached["AttachedPolicies"]:
            arn = policy["PolicyArn"]
            meta = aws("iam", "get_policy", {"PolicyArn": arn})["Policy"]
            version = aws(
                "iam",
                "get_policy_version",
                {"PolicyArn": arn, "VersionId": meta["DefaultVersionId"]},
            )["PolicyVersion"]
            buckets += buckets_in_policy(version["Document"])
    if not buckets:
        raise OldToolFailed(f"no bucket in the role's policies: {seen}")
    bucket = buckets[0]
    archive = root / contract.config_key(name)
    root.mkdir(parents=True, exist_ok=True)
    aws(
        "s3",
        "get_object",
        {"Bucket": bucket, "Key": contract.config_key(name)},
        download=archive,
    )
    caller.untar(archive, root / "etc" / "condor" / "config.d")
    return OldBoot(name, bucket, time.perf_counter() - started, calls)
