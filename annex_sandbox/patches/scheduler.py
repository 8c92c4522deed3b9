"""EventBridge Scheduler fidelity fix: UpdateSchedule replaces the whole schedule definition."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def scheduler_update_replaces_every_field() -> None:
    """UpdateSchedule sets every field, with the same defaults as CreateSchedule.

    "UpdateSchedule" (EventBridge Scheduler API Reference,
    https://docs.aws.amazon.com/scheduler/latest/APIReference/API_UpdateSchedule.html): "all
    properties of the schedule are replaced ... if you don't specify an optional parameter, it
    is set to its default" — `State` defaults to ENABLED, `ActionAfterCompletion` to NONE.
    moto stores a missing State as None (the schedule then reads as neither enabled nor
    disabled and never fires) and ignores ActionAfterCompletion.
    """
    from moto.scheduler.models import Schedule
    from moto.scheduler.responses import EventBridgeSchedulerResponse

    original_update: Callable[..., None] = Schedule.update

    def update(self: Schedule, *args: Any, **kwargs: Any) -> None:
        original_update(self, *args, **kwargs)
        self.state = self.state or "ENABLED"

    Schedule.update = update  # type: ignore[method-assign]

    original_response: Callable[[Any], str] = EventBridgeSchedulerResponse.update_schedule

    def update_schedule(self: Any) -> str:
        answer = original_response(self)
        name = self.uri.split("?")[0].split("/")[-1]
        schedule = self.scheduler_backend.get_schedule(self._get_param("GroupName"), name)
        schedule.action_after_completion = self._get_param("ActionAfterCompletion") or "NONE"
        return answer if isinstance(answer, str) else json.dumps(answer)

    EventBridgeSchedulerResponse.update_schedule = update_schedule  # type: ignore[method-assign]
