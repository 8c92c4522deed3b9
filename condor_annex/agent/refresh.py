"""`condor-annex-ec2 refresh`: install the annex's fresh token when `extend` rewrote its tarball.

Run by `condor-annex-refresh.timer` every `contract.AGENT_REFRESH_INTERVAL_MINUTES` minutes. The
boot remembered which object it installed and its ETag (`contract.AGENT_STATE_FILE`); refresh
asks S3 for that object only if it changed (GetObject If-None-Match: an unchanged tarball costs
one 304 and no download), verifies a changed one exactly like the boot does, rewrites only when
a member's content differs from what is installed, and then runs `condor_reconfig` so the daemons
read the new token before the old one expires. It needs nothing the boot did not: the instance
role's s3:GetObject on `config-*.tar.gz`.

Refresh never powers the instance off: a running instance with a working token must not die of a
transient S3 error. It logs why and exits non-zero, and the next timer run tries again.

    condor-annex-ec2 refresh [--root DIR] [--reconfig-command CMD]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from condor_annex import contract
from condor_annex.agent.exits import Exit
from condor_annex.agent.files import CONFIG_FILE_MODE, write_atomic
from condor_annex.agent.log import StepFailed, emit
from condor_annex.agent.root import Root
from condor_annex.agent.tarball_unpack import Limits, Member, TarballRefused, install, verify

DEFAULT_RECONFIG_COMMAND = "condor_reconfig"
_NOT_MODIFIED = ("304", "NotModified", "Not Modified")


@dataclass(frozen=True)
class Installed:
    """What the boot (or the last refresh) installed: enough to ask S3 whether it changed."""

    bucket: str
    key: str
    etag: str
    region: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Installed:
        data = json.loads(text)
        return cls(str(data["bucket"]), str(data["key"]), str(data["etag"]), str(data["region"]))


def state_path(root: Root) -> Path:
    return root.path(contract.AGENT_STATE_FILE)


def remember(root: Root, installed: Installed) -> None:
    """Record what is installed now (0644: bucket, key and ETag are no secrets)."""
    write_atomic(state_path(root), installed.to_json().encode(), CONFIG_FILE_MODE, root.privileged)


def changed_members(members: Sequence[Member], target: Path) -> list[str]:
    """The files whose installed content differs from the tarball's (missing ones included)."""
    changed = []
    for member in members:
        if member.is_dir:
            continue
        path = target / member.name
        try:
            same = not path.is_symlink() and path.read_bytes() == member.content
        except OSError:
            same = False
        if not same:
            changed.append(member.name)
    return changed


@dataclass(frozen=True)
class RefreshOutcome:
    result: str
    """unchanged (304) | same-content | installed"""
    files: tuple[str, ...] = ()


def refresh(
    root: Root,
    s3: Any,
    reconfig_command: Optional[str],
    limits: Limits = Limits(),  # noqa: B008 - frozen dataclass
) -> RefreshOutcome:
    """One refresh pass; StepFailed (never a power-off) when it cannot complete."""
    from botocore.exceptions import BotoCoreError, ClientError

    from condor_annex.aws import error_code

    try:
        installed = Installed.from_json(state_path(root).read_text())
    except (OSError, ValueError, KeyError) as error:
        raise StepFailed(
            Exit.TARBALL_MISSING, f"no record of a booted tarball ({type(error).__name__})"
        ) from error
    try:
        response = s3.get_object(
            Bucket=installed.bucket, Key=installed.key, IfNoneMatch=installed.etag
        )
        data: bytes = response["Body"].read(limits.compressed_bytes + 1)
    except ClientError as error:
        if error_code(error) in _NOT_MODIFIED:
            return RefreshOutcome("unchanged")
        raise StepFailed(Exit.AWS_ERROR, f"GetObject: {error_code(error)}") from error
    except BotoCoreError as error:
        raise StepFailed(Exit.AWS_ERROR, f"GetObject: {type(error).__name__}") from error
    etag = str(response.get("ETag", ""))
    try:
        tarball = verify(data, limits)
    except TarballRefused as error:
        raise StepFailed(Exit.TARBALL_REFUSED, error.reason, member=error.member) from error
    target = tarball.target(root)
    changed = changed_members(tarball.members, target)
    try:
        if changed:
            install(tarball.members, target, root.privileged)
        remember(root, Installed(installed.bucket, installed.key, etag, installed.region))
    except OSError as error:
        raise StepFailed(Exit.WRITE_FAILED, f"{type(error).__name__}: {error}") from error
    if not changed:
        return RefreshOutcome("same-content")
    if reconfig_command:
        _reconfig(reconfig_command)
    return RefreshOutcome("installed", tuple(changed))


def _reconfig(command: str) -> None:
    try:
        done = subprocess.run(
            shlex.split(command), capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise StepFailed(Exit.INTERNAL_ERROR, f"{command}: {error}") from error
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no message"]
        raise StepFailed(Exit.INTERNAL_ERROR, f"{command} exited {done.returncode}: {last[0]}")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="condor-annex-ec2 refresh",
        description="Install the annex's fresh token (after `condor_annex -duration`, extend) "
        "and reconfigure HTCondor; does nothing when the tarball did not change.",
    )
    parser.add_argument("--root", type=Path, default=Path("/"))
    parser.add_argument(
        "--reconfig-command",
        default=DEFAULT_RECONFIG_COMMAND,
        metavar="CMD",
        help=f"run after a change is installed (default `{DEFAULT_RECONFIG_COMMAND}`; '' for none)",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) and int(Exit.USAGE)
    root = Root(args.root)
    from condor_annex.agent.service_models import MODELS_DIR
    from condor_annex.aws import make_client, make_client_session

    try:
        region = Installed.from_json(state_path(root).read_text()).region
    except (OSError, ValueError, KeyError):
        region = ""
    try:
        # Like the boot: a botocore session and the agent's trimmed models (GetObject is in them).
        session = make_client_session(region=region or None, model_dirs=[MODELS_DIR])
        s3 = make_client(session, "s3")
        outcome = refresh(root, s3, args.reconfig_command or None)
    except StepFailed as failure:
        emit("refresh", "error", exit_code=int(failure.exit_code), reason=failure.reason)
        return int(failure.exit_code)
    emit("refresh", outcome.result, files=",".join(outcome.files) or "none")
    return int(Exit.OK)
