"""`condor_annex off -annex-name NAME`: drain an annex, then end it through AWS.

1. Ask the pool to shut the annex's daemons down (`condor_off -peaceful` by default: running
   jobs finish; `-graceful` / `-fast` as condor_off means them). Best effort.
2. Drain: when the pool can be watched, wait until no master of the annex is left in the
   collector (a master that exits invalidates its ad; the image's shutdown script then powers
   the instance off) or until `drain_timeout` has passed, whichever comes first. Before waiting,
   the annex's lease is moved to the drain deadline when that is earlier, so the lease function
   still ends everything on time if this command is interrupted. `drain_timeout = 0` terminates
   at once.
3. End everything the annex owns with `annex.end` (fleets with their instances, instances,
   launch template, tarball, schedule, lease record). Ownership is the annex model's one rule
   (client token AND annex tag); a resource matching only one of them is reported, never
   touched. Running it twice is harmless.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Optional

from botocore.exceptions import BotoCoreError, ClientError

from condor_annex import annex, contract
from condor_annex.annex_settings import NEEDED_FOR_STATUS, AnnexClients, Settings, require_setup
from condor_annex.errors import AnnexError, AwsThrottled, InvalidInput, translate_aws_error

PoolShutdown = Callable[[str], int]
"""Ask the pool to turn the annex's daemons off (peacefully by default); returns how many."""
PoolRemaining = Callable[[str], int]
"""How many of the annex's daemons (masters) the collector still lists."""

DEFAULT_DRAIN_TIMEOUT_SECONDS = 30 * 60
DRAIN_POLL_SECONDS = 15.0


@dataclass
class DrainClock:
    """Time as the drain sees it (tests and the CLI replace it)."""

    now: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    sleep: Callable[[float], None] = time.sleep


@dataclass
class OffResult:
    annex_name: str
    peaceful_requests: Optional[int] = None
    terminated_instances: list[str] = field(default_factory=list)
    cancelled_fleets: list[str] = field(default_factory=list)
    cancelled_by_kind: dict[str, list[str]] = field(default_factory=dict)
    """The same fleets by kind (`Spot Fleet`, `EC2 Fleet`)."""
    deleted_launch_template: bool = False
    deleted_tarball: bool = False
    deleted_lease_record: bool = False
    deleted_schedule: bool = False
    drained: Optional[bool] = None
    """True: every daemon left the pool before termination; False: the drain timed out;
    None: no drain (timeout 0, or the pool could not be asked or watched)."""
    drain_seconds: float = 0.0
    lease_moved_to: Optional[datetime] = None
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(
            self.terminated_instances
            or self.cancelled_fleets
            or self.deleted_launch_template
            or self.deleted_tarball
            or self.deleted_lease_record
            or self.deleted_schedule
        )


def annex_off(
    annex_name: str,
    *,
    settings: Settings,
    clients: AnnexClients,
    pool_shutdown: Optional[PoolShutdown] = None,
    pool_remaining: Optional[PoolRemaining] = None,
    drain_timeout: float = 0,
    clock: Optional[DrainClock] = None,
) -> OffResult:
    """Drain the annex (see the module), then terminate it and remove everything it owns."""
    try:
        contract.validate_annex_name(annex_name)
    except contract.InvalidAnnexName as exc:
        raise InvalidInput(str(exc)) from None
    if drain_timeout < 0:
        raise InvalidInput("-drain-timeout must not be negative")
    require_setup(settings, NEEDED_FOR_STATUS, clients.region)
    result = OffResult(annex_name)
    if pool_shutdown is not None:
        try:
            result.peaceful_requests = pool_shutdown(annex_name)
        except Exception as exc:  # shutdown is a courtesy; AWS termination follows
            result.notes.append(
                f"the pool was not asked to shut down ({type(exc).__name__}: {exc})"
            )
    if drain_timeout > 0:
        _drain(annex_name, result, settings, clients, pool_remaining, drain_timeout, clock)
    try:
        found = annex.find(clients.ec2, annex_name)
        present = annex.present_objects(clients.s3, settings.config_bucket, annex_name)
        ended = annex.end(
            found,
            ec2=clients.ec2,
            s3=clients.s3,
            bucket=settings.config_bucket,
            scheduler=clients.scheduler,
            present_objects=present,
        )
    except (ClientError, BotoCoreError) as exc:
        raise translate_aws_error(
            exc, action=f"turn annex {annex_name} off", region=clients.region or None
        ) from exc
    result.cancelled_fleets = ended.cancelled_fleets
    result.cancelled_by_kind = ended.cancelled_by_kind
    result.terminated_instances = ended.terminated_instances
    result.deleted_launch_template = ended.deleted_launch_template is not None
    result.deleted_tarball = contract.config_key(annex_name) in ended.deleted_objects
    result.deleted_lease_record = contract.lease_key(annex_name) in ended.deleted_objects
    result.deleted_schedule = ended.deleted_schedule
    result.notes.extend(ended.unowned)
    if ended.first_failure is not None:
        error = translate_aws_error(
            ended.first_failure,
            action=f"turn annex {annex_name} off",
            region=clients.region or None,
        )
        error.message += f" (annex {annex_name} is only partly off: {'; '.join(ended.errors)})"
        if isinstance(error, AwsThrottled):
            # The throttling advice assumes nothing was done; here part of the annex was ended.
            error.next_step = (
                f"wait a minute and run `condor_annex off -annex-name {annex_name}` again: "
                "it ends what is left"
            )
        raise error from ended.first_failure
    return result


def _drain(
    annex_name: str,
    result: OffResult,
    settings: Settings,
    clients: AnnexClients,
    pool_remaining: Optional[PoolRemaining],
    drain_timeout: float,
    clock: Optional[DrainClock],
) -> None:
    """Wait (at most `drain_timeout` s) for the annex's daemons to leave the pool."""
    if not result.peaceful_requests or pool_remaining is None:
        why = (
            "no daemon of the annex is in the pool"
            if result.peaceful_requests == 0
            else "the pool could not be asked or watched"
        )
        result.notes.append(f"not drained ({why}): terminating now")
        return
    clock = clock or DrainClock()
    start = clock.now()
    deadline = start + timedelta(seconds=drain_timeout)
    result.lease_moved_to = _end_lease_by(annex_name, deadline, settings, clients, result)
    remaining: Optional[int] = None
    while True:
        try:
            remaining = pool_remaining(annex_name)
        except Exception as exc:  # a collector hiccup: keep waiting until the deadline
            remaining = None
            result.notes.append(f"the pool could not be watched once ({type(exc).__name__})")
        now = clock.now()
        if remaining == 0 or now >= deadline:
            break
        clock.sleep(min(DRAIN_POLL_SECONDS, (deadline - now).total_seconds()))
    result.drain_seconds = (clock.now() - start).total_seconds()
    result.drained = remaining == 0
    if not result.drained:
        result.notes.append(
            f"{remaining if remaining is not None else 'some'} daemon(s) still in the pool "
            f"after the {drain_timeout:.0f} s drain timeout: terminating their instances"
        )


def _end_lease_by(
    annex_name: str,
    deadline: datetime,
    settings: Settings,
    clients: AnnexClients,
    result: OffResult,
) -> Optional[datetime]:
    """Move the lease to `deadline` when it ends later, so it ends the annex if we do not."""
    from condor_annex import lease

    deadline = deadline.replace(microsecond=0) + timedelta(seconds=1)
    try:
        record = lease.read_lease_record(clients.s3, settings.config_bucket, annex_name)
        if record is None or record.expiry <= deadline:
            return None
        moved = record.with_expiry(deadline)
        lease.put_lease_record(clients.s3, moved)
        if lease.get_schedule(clients.scheduler, annex_name) is not None:
            lease.update_schedule(
                clients.scheduler,
                moved,
                lease_function_arn=settings.lease_function_arn,
                scheduler_role_arn=settings.scheduler_role_arn,
            )
    except (ClientError, BotoCoreError) as exc:
        result.notes.append(f"the lease was not moved to the drain deadline ({exc})")
        return None
    return deadline


def _annex_constraint(annex_name: str) -> str:
    # `=?=`: ClassAd `==` ignores case on strings, so `==` would also match annex "A" for "a".
    return f'{contract.ANNEX_NAME_ATTRIBUTE} =?= "{annex_name}"'


SHUTDOWN_MODES = ("peaceful", "graceful", "fast")


def htcondor_pool_shutdown(
    collector: str,
    mode: str = "peaceful",
    runner: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
) -> PoolShutdown:
    """Ask each master of the annex to shut down, through the pool's collector: `peaceful`
    (jobs finish), `graceful` (jobs are vacated within their retirement time) or `fast`.

    `condor_off -<mode> -master -pool COLLECTOR -constraint ...` rather than the bindings'
    `send_command`: an annex node has no pool signing key, so it cannot verify a token a client
    presents; the command gets in only with the remote-administration capability the master
    registered with the collector, which condor_off fetches for a pool administrator (measured
    with the real daemons: tests/pool/test_pool_off.py).
    """
    if mode not in SHUTDOWN_MODES:
        raise ValueError(f"shutdown mode must be one of {SHUTDOWN_MODES}, not {mode!r}")

    def shutdown(annex_name: str) -> int:
        import htcondor2

        constraint = _annex_constraint(annex_name)
        masters = htcondor2.Collector(collector).query(
            htcondor2.AdType.Master, constraint=constraint, projection=["Name"]
        )
        if not masters:
            return 0
        tool = shutil.which("condor_off")
        if tool is None:
            raise AnnexError("condor_off is not on PATH", next_step="install the HTCondor tools")
        command = [tool, f"-{mode}", "-master", "-pool", collector, "-constraint", constraint]
        result = runner(command, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            reason = (result.stderr or result.stdout or "no message").strip().splitlines()[-1]
            raise AnnexError(f"condor_off exited {result.returncode}: {reason}")
        return len(masters)

    return shutdown


def htcondor_pool_remaining(collector: str) -> PoolRemaining:
    """How many masters of the annex the collector still lists."""

    def remaining(annex_name: str) -> int:
        import htcondor2

        coll = htcondor2.Collector(collector)
        ads = coll.query(
            htcondor2.AdType.Master,
            constraint=_annex_constraint(annex_name),
            projection=["Name"],
        )
        return len(ads)

    return remaining
