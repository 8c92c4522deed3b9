"""Fidelity fix: EventBridge Scheduler one-time schedules fire.

moto stores schedules but never runs them. On AWS a one-time schedule (`at(yyyy-mm-ddThh:mm:ss)`
in its `ScheduleExpressionTimezone`) invokes its target once at that time, passing the target's
`Input`, and with `ActionAfterCompletion=DELETE` the schedule deletes itself afterwards
("Schedule types on EventBridge Scheduler", "Configuring ActionAfterCompletion"). This clock scans
the emulator's schedules and does the same for Lambda targets, asynchronously as Scheduler does.

Scheduler invokes the target as the schedule's role (the target's `RoleArn`): it assumes the role
as `scheduler.amazonaws.com` (the role's trust policy must let it, with the confused-deputy keys
Scheduler sends: `aws:SourceAccount`, and `aws:SourceArn` the schedule group's ARN — "Confused
deputy prevention in EventBridge Scheduler"), and a role without `lambda:InvokeFunction` on the
function makes the invocation fail after the schedule fires ("Set up the execution role",
EventBridge Scheduler User Guide). `authorize` (the IAM engine) decides both; a refused firing is logged and kept in `refusals`, and the function does not run
(Scheduler's retries would be refused alike; no dead-letter queue is emulated).
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Optional
from zoneinfo import ZoneInfo

log = logging.getLogger(__name__)

TargetAuthorizer = Callable[[str, str, dict[str, Any]], Optional[str]]
"""`(region, schedule ARN, target)` → why the target may not be invoked, or None."""

_AT_EXPRESSION = re.compile(r"^at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)$")


def one_time_fire_time(expression: str, timezone_name: Optional[str]) -> Optional[datetime]:
    """When an `at(...)` schedule fires, as an aware UTC datetime; None for other expressions."""
    match = _AT_EXPRESSION.match(expression.strip())
    if match is None:
        return None
    local = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    zone = ZoneInfo(timezone_name or "UTC")
    return local.replace(tzinfo=zone).astimezone(timezone.utc)


class ScheduleClock:
    """A background thread that fires due one-time schedules in the in-process moto backends."""

    def __init__(
        self,
        *,
        interval: float = 0.5,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        authorize: Optional[TargetAuthorizer] = None,
    ) -> None:
        """`authorize(region, schedule ARN, target)` answers why Scheduler may not invoke the
        target with its role, or None when it may (None for `authorize` itself: every
        invocation is allowed)."""
        self._interval = interval
        self._now = now
        self._authorize = authorize
        self.refusals: list[tuple[str, str, str]] = []
        """(schedule ARN, target ARN, why) of every firing whose invocation was refused."""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._fired: set[str] = set()
        self.firings: list[tuple[str, str]] = []
        """(schedule ARN, target ARN) of every firing, for tests."""

    def start(self) -> ScheduleClock:
        self._thread = threading.Thread(target=self._run, name="schedule-clock", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def reset(self) -> None:
        self._fired.clear()
        self.firings.clear()
        self.refusals.clear()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.tick()
            except Exception:  # the clock must survive a bad schedule
                log.exception("schedule clock tick failed")

    def tick(self) -> int:
        """Fire every due schedule once; return how many fired."""
        from moto.scheduler.models import scheduler_backends

        fired = 0
        now = self._now()
        for account_id, regions in list(scheduler_backends.items()):
            for region, backend in list(regions.items()):
                for group in list(backend.schedule_groups.values()):
                    for schedule in list(group.schedules.values()):
                        if self._due(schedule, now):
                            self._fire(account_id, region, group, schedule)
                            fired += 1
        return fired

    def _due(self, schedule: Any, now: datetime) -> bool:
        if schedule.state != "ENABLED" or schedule.arn in self._fired:
            return False
        when = one_time_fire_time(
            schedule.schedule_expression, schedule.schedule_expression_timezone
        )
        return when is not None and when <= now

    def _fire(self, account_id: str, region: str, group: Any, schedule: Any) -> None:
        self._fired.add(schedule.arn)
        target = schedule.target
        self.firings.append((schedule.arn, target["Arn"]))
        if schedule.action_after_completion == "DELETE":
            group.delete_schedule(schedule.name)
            self._fired.discard(schedule.arn)
        refused = (
            self._authorize(region, schedule.arn, target) if self._authorize is not None else None
        )
        if refused is not None:
            log.warning(
                "schedule %s: invoking %s refused: %s", schedule.arn, target["Arn"], refused
            )
            self.refusals.append((schedule.arn, target["Arn"], refused))
            return
        threading.Thread(
            target=self._invoke_target,
            args=(account_id, region, target),
            name=f"schedule-target-{schedule.name}",
            daemon=True,
        ).start()

    @staticmethod
    def _invoke_target(account_id: str, region: str, target: dict[str, Any]) -> None:
        from moto.awslambda.models import lambda_backends

        arn: str = target["Arn"]
        if ":lambda:" not in arn:
            log.warning("schedule target %s is not a Lambda function; not emulated", arn)
            return
        function_name = arn.split(":function:", 1)[1].split(":", 1)[0]
        backend = lambda_backends[account_id][region]
        try:
            backend.invoke(
                function_name,
                None,
                target.get("Input") or "{}",
                {"x-amz-invocation-type": "Event"},
                {},
            )
        except Exception:
            log.exception("schedule target %s failed", arn)
