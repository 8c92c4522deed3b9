"""One log line per step: `step=<name> result=<ok|error|skipped|...> ms=<duration> key=value ...`.

Lines go to stderr (the journal under systemd). Callers never pass tokens or credentials.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\t\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def format_fields(**fields: Any) -> str:
    return " ".join(f"{key}={_quote(value)}" for key, value in fields.items() if value is not None)


def emit(step: str, result: str, stream: Optional[TextIO] = None, **fields: Any) -> None:
    """Write one `step=... result=...` line."""
    line = format_fields(step=step, result=result, **fields)
    print(line, file=stream or sys.stderr, flush=True)


@dataclass
class StepRecord:
    """What a step reports about itself; `fields` are appended to its log line."""

    name: str
    result: str = "ok"
    fields: dict[str, Any] = field(default_factory=dict)

    def note(self, **fields: Any) -> None:
        self.fields.update(fields)


class StepFailed(Exception):
    """A step failed permanently; `exit_code` is the agent's exit status for this failure class."""

    def __init__(self, exit_code: int, reason: str, **fields: Any) -> None:
        super().__init__(reason)
        self.exit_code = exit_code
        self.reason = reason
        self.fields = fields


@contextmanager
def step(name: str) -> Iterator[StepRecord]:
    """Time a step and log it once, with `result=error reason=...` when it raises StepFailed."""
    record = StepRecord(name)
    started = time.monotonic()
    try:
        yield record
    except StepFailed as failure:
        ms = int((time.monotonic() - started) * 1000)
        emit(
            name,
            "error",
            ms=ms,
            exit_code=failure.exit_code,
            reason=failure.reason,
            **{**record.fields, **failure.fields},
        )
        raise
    ms = int((time.monotonic() - started) * 1000)
    emit(name, record.result, ms=ms, **record.fields)
