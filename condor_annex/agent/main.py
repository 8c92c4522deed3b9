"""`condor-annex-ec2`: configure an annex instance at boot, before HTCondor starts.

Steps, in the order of docs/RULES.md, each logged as one `step=... result=... ms=...` line:
metadata session → annex name → config bucket → download → verify → unpack → instance macros →
firewall. Any permanent failure logs why, powers the instance off (so no straggler keeps
billing) and exits with the failure class's code (see `exits.Exit` and docs/AGENT.md).

    condor-annex-ec2 [--root DIR] [--dry-run] [--no-firewall] [--fleet-tag-timeout S] ...
    condor-annex-ec2 check-image [--root DIR]
    condor-annex-ec2 firewall [--root DIR] [--dry-run]
    condor-annex-ec2 refresh [--root DIR] [--reconfig-command CMD]   (agent/refresh.py)
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from botocore.exceptions import BotoCoreError, ClientError

from condor_annex import contract
from condor_annex.agent import discovery, firewall
from condor_annex.agent.exits import Exit
from condor_annex.agent.files import CONFIG_FILE_MODE, write_atomic
from condor_annex.agent.imds import ImdsClient, ImdsNotFound, ImdsUnavailable
from condor_annex.agent.log import StepFailed, StepRecord, emit, step
from condor_annex.agent.root import Root
from condor_annex.agent.service_models import MODELS_DIR
from condor_annex.agent.tarball_unpack import Limits, TarballRefused, install, verify
from condor_annex.aws import error_code

POWEROFF_ENV = "CONDOR_ANNEX_POWEROFF_COMMAND"
DEFAULT_POWEROFF_COMMAND = "shutdown -h now"
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,32}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


@dataclass(frozen=True)
class Options:
    root: Root = Root()  # noqa: RUF009 - frozen dataclass, immutable default
    dry_run: bool = False
    firewall: bool = True
    fleet_tag_timeout: float = discovery.FLEET_TAG_TIMEOUT_SECONDS
    poweroff_command: Optional[str] = DEFAULT_POWEROFF_COMMAND
    """None: log the power-off instead of running it (`--no-poweroff`)."""
    imds_timeout: float = 120.0
    limits: Limits = Limits()  # noqa: RUF009 - frozen dataclass


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    annex: Optional[str] = None
    bucket: Optional[str] = None
    files: tuple[str, ...] = ()


@contextmanager
def agent_step(name: str) -> Iterator[StepRecord]:
    """A logged step that maps every failure it knows onto an exit code."""
    with step(name) as record:
        try:
            yield record
        except ImdsUnavailable as error:
            raise StepFailed(Exit.IMDS_UNAVAILABLE, f"metadata service: {error}") from error
        except ImdsNotFound as error:
            raise StepFailed(Exit.IMDS_UNAVAILABLE, f"metadata path missing: {error}") from error
        except TarballRefused as error:
            raise StepFailed(Exit.TARBALL_REFUSED, error.reason, member=error.member) from error
        except firewall.FirewallError as error:
            raise StepFailed(Exit.FIREWALL_FAILED, str(error)) from error
        except OSError as error:
            raise StepFailed(Exit.WRITE_FAILED, f"{type(error).__name__}: {error}") from error


def instance_macros(instance_id: str, public_ip: Optional[str]) -> str:
    """`00-annex-instance.config`: the facts the image configuration builds on.

    The instance ID is a ClassAd string literal because STARTD_ATTRS/MASTER_ATTRS put the macro's
    value into the ads as an expression; the public IP stays bare for TCP_FORWARDING_HOST.
    """
    lines = [
        "# Written by condor-annex-ec2 at every boot; do not edit.",
        f'{contract.MACRO_INSTANCE_ID} = "{instance_id}"',
    ]
    if public_ip:
        lines.append(f"{contract.MACRO_PUBLIC_IP} = {public_ip}")
    return "\n".join(lines) + "\n"


def _download(s3: Any, bucket: str, key: str, cap: int) -> tuple[bytes, str]:
    """The tarball's bytes and its ETag (which `refresh` later asks S3 about)."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        code = error_code(error)
        if code in ("NoSuchKey", "404", "NotFound"):
            raise StepFailed(Exit.TARBALL_MISSING, f"s3://{bucket}/{key} does not exist") from error
        if code == "AccessDenied":
            # Without s3:ListBucket (the role deliberately lacks it), S3 answers AccessDenied
            # rather than NoSuchKey for a missing object the role could otherwise read.
            raise StepFailed(
                Exit.TARBALL_MISSING, f"s3://{bucket}/{key}: AccessDenied (missing or unreadable)"
            ) from error
        raise discovery.aws_failure(error, "GetObject") from error
    except discovery.AWS_ERRORS as error:
        raise discovery.aws_failure(error, "GetObject") from error
    body = response["Body"]
    try:
        data: bytes = body.read(cap + 1)
    except BotoCoreError as error:
        raise discovery.aws_failure(error, "GetObject") from error
    finally:
        body.close()
    if len(data) > cap:
        raise TarballRefused(f"compressed size exceeds {cap} bytes")
    return data, str(response.get("ETag", ""))


def power_off(options: Options, reason: str) -> None:
    """Switch the instance off so a failed boot never keeps billing."""
    if options.dry_run or options.poweroff_command is None:
        why = "dry-run" if options.dry_run else "--no-poweroff"
        emit("poweroff", "skipped", reason=why, would_run=options.poweroff_command)
        return
    command = shlex.split(options.poweroff_command)
    try:
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        emit("poweroff", "error", command=options.poweroff_command, reason=str(error))
        return
    result = "ok" if completed.returncode == 0 else "error"
    emit("poweroff", result, command=options.poweroff_command, rc=completed.returncode, why=reason)


def _plan(message: str) -> None:
    print(f"would {message}", flush=True)


def apply_firewall(options: Options) -> None:
    """The firewall step: idempotent rules for IPv4 and IPv6, plus the rules files for boot."""
    root = options.root
    with agent_step("firewall") as record:
        if not options.firewall:
            record.result = "skipped"
            record.note(reason="--no-firewall: metadata service stays reachable by every uid")
            return
        if options.dry_run:
            for command in firewall.planned_commands():
                _plan(f"run (unless already present): {command}")
            record.result = "planned"
            return
        results = firewall.Firewall().apply()
        for result in results:
            prefix = result.family
            record.note(**{f"{prefix}_added": result.added, f"{prefix}_present": result.present})
            if result.skipped:
                record.note(**{f"{prefix}_skipped": result.skipped})
        paths = {"ipv4": root.iptables_rules_file, "ipv6": root.ip6tables_rules_file}
        firewall.persist(paths, root.privileged)


def configure(options: Options, *, session_hook: Optional[Callable[[Any], None]] = None) -> Outcome:
    """Every step in order; raises StepFailed on the first permanent failure."""
    # Imported here so `check-image` never needs boto3's import time.
    from condor_annex.aws import make_client, make_client_session

    root = options.root
    imds = ImdsClient(deadline_seconds=options.imds_timeout)
    with agent_step("imds") as record:
        imds.token()
        document = imds.identity_document()
        instance_id = str(document.get("instanceId", ""))
        region = str(document.get("region", ""))
        if not _INSTANCE_ID.match(instance_id) or not _REGION.match(region):
            raise StepFailed(Exit.IMDS_UNAVAILABLE, "identity document lacks instance or region")
        public_ip = imds.public_ipv4()
        if public_ip is not None:
            public_ip = str(ipaddress.IPv4Address(public_ip))
        record.note(instance=instance_id, region=region, public_ip=public_ip or "none")

    # The trimmed API models: parsing EC2's full model was most of the cold start.
    session = make_client_session(region=region, model_dirs=[MODELS_DIR])
    if session_hook is not None:
        session_hook(session)

    # Each client is made just before the step that first needs it: a boot that fails early
    # never parses the models of the services it did not reach.
    ec2 = make_client(session, "ec2")
    with agent_step("annex-name") as record:
        identity = discovery.annex_name(
            ec2, imds, instance_id, record, fleet_tag_timeout=options.fleet_tag_timeout
        )
        record.note(annex=identity.name, kind=identity.kind)

    iam = make_client(session, "iam")
    with agent_step("bucket") as record:
        found = discovery.find_bucket(iam, imds, record)
        record.note(bucket=found.bucket, source=found.source, scanned=found.scanned)

    key = contract.config_key(identity.name)
    s3 = make_client(session, "s3")
    with agent_step("download") as record:
        record.note(object=f"s3://{found.bucket}/{key}")
        data, etag = _download(s3, found.bucket, key, options.limits.compressed_bytes)
        record.note(bytes=len(data))

    with agent_step("verify") as record:
        tarball = verify(data, options.limits)
        record.note(members=len(tarball.members), layout=tarball.layout.value)

    target = tarball.target(root)
    with agent_step("unpack") as record:
        record.note(target=target)
        if options.dry_run:
            for member in tarball.members:
                _plan(f"write {target / member.name} mode {member.mode:04o}")
            record.result = "planned"
            files: tuple[str, ...] = tuple(m.name for m in tarball.members if not m.is_dir)
        else:
            files = tuple(install(tarball.members, target, root.privileged))
            record.note(files=",".join(files))
            from condor_annex.agent import refresh

            refresh.remember(root, refresh.Installed(found.bucket, key, etag, region))

    macros_path = root.config_dir / contract.INSTANCE_MACROS_FILE
    with agent_step("instance-macros") as record:
        record.note(path=macros_path)
        content = instance_macros(instance_id, public_ip)
        if options.dry_run:
            _plan(f"write {macros_path} mode 0644:\n{content}")
            record.result = "planned"
        else:
            write_atomic(macros_path, content.encode(), CONFIG_FILE_MODE, root.privileged)

    apply_firewall(options)
    return Outcome(Exit.OK, identity.name, found.bucket, files)


def run(options: Options, *, session_hook: Optional[Callable[[Any], None]] = None) -> int:
    """Configure this instance; on failure power it off. Returns the exit code."""
    try:
        outcome = configure(options, session_hook=session_hook)
    except StepFailed as failure:
        power_off(options, failure.reason)
        return int(failure.exit_code)
    except Exception as error:  # a bug must still end in a power-off, never a straggler
        emit("agent", "error", exit_code=int(Exit.INTERNAL_ERROR), reason=repr(error))
        power_off(options, "internal error")
        return int(Exit.INTERNAL_ERROR)
    emit("agent", "ok", annex=outcome.annex, bucket=outcome.bucket, dry_run=options.dry_run)
    return int(outcome.exit_code)


# --- Command line ---------------------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="relocate every path the agent reads or writes under DIR (default /)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="condor-annex-ec2",
        description="Configure this EC2 instance as a member of its HTCondor annex.",
        epilog="Subcommands: `check-image [--root DIR]`, `firewall [--root DIR] [--dry-run]`, "
        "`refresh [--root DIR] [--reconfig-command CMD]`. "
        "Exit codes are listed in docs/AGENT.md.",
    )
    _add_common(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    parser.add_argument(
        "--no-firewall",
        action="store_true",
        help="do not fence off the metadata service (demo and unprivileged runs only)",
    )
    parser.add_argument(
        "--fleet-tag-timeout",
        type=float,
        default=discovery.FLEET_TAG_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="how long a Spot Fleet instance waits for its fleet tag (default 3000)",
    )
    parser.add_argument(
        "--imds-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to keep retrying the metadata service (default 120)",
    )
    parser.add_argument(
        "--poweroff-command",
        default=os.environ.get(POWEROFF_ENV) or DEFAULT_POWEROFF_COMMAND,
        metavar="CMD",
        help=f"run on permanent failure (default: ${POWEROFF_ENV} or `{DEFAULT_POWEROFF_COMMAND}`)",
    )
    parser.add_argument(
        "--no-poweroff", action="store_true", help="on failure, log instead of powering off"
    )
    return parser


def _firewall_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="condor-annex-ec2 firewall",
        description="(Re)apply the metadata-service firewall rules, idempotently.",
    )
    _add_common(parser)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    options = Options(root=Root(args.root), dry_run=args.dry_run)
    try:
        apply_firewall(options)
    except StepFailed as failure:
        return int(failure.exit_code)
    return int(Exit.OK)


def _check_image_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="condor-annex-ec2 check-image",
        description="Report which annex image requirements (docs/RULES.md) a root filesystem meets.",
    )
    _add_common(parser)
    args = parser.parse_args(argv)
    from condor_annex.agent import image_check  # only this subcommand needs it

    results = image_check.check(Root(args.root))
    print(image_check.report(results))
    return int(Exit.OK if image_check.all_musts_met(results) else Exit.CHECK_FAILED)


def _sdk_environment() -> None:
    # The SDK's own metadata credential fetch: a few attempts with a sane timeout at early boot.
    os.environ.setdefault("AWS_METADATA_SERVICE_NUM_ATTEMPTS", "5")
    os.environ.setdefault("AWS_METADATA_SERVICE_TIMEOUT", "2")
    # Annex instances require IMDSv2: when a token request times out the SDK must retry it,
    # never fall back to a v1 request the instance refuses (seen at 1,000 concurrent boots).
    os.environ.setdefault("AWS_EC2_METADATA_V1_DISABLED", "true")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "check-image":
        return _check_image_main(args_list[1:])
    if args_list and args_list[0] == "firewall":
        return _firewall_main(args_list[1:])
    if args_list and args_list[0] == "refresh":
        from condor_annex.agent import refresh

        _sdk_environment()
        return refresh.main(args_list[1:])
    try:
        args = _parser().parse_args(args_list)
    except SystemExit as exit_:
        return int(exit_.code or 0) and int(Exit.USAGE)
    _sdk_environment()
    options = Options(
        root=Root(args.root),
        dry_run=args.dry_run,
        firewall=not args.no_firewall,
        fleet_tag_timeout=args.fleet_tag_timeout,
        poweroff_command=None if args.no_poweroff else args.poweroff_command,
        imds_timeout=args.imds_timeout,
    )
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
