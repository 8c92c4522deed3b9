"""SIGINT, SIGTERM and SIGHUP, the same way for every verb (closing the terminal and `timeout`
send the last two; they used to kill a create without its rollback).

`install` (called by the CLI once) turns each signal into `Interrupted`, a KeyboardInterrupt, so
every `except KeyboardInterrupt`/`BaseException` path — create's rollback above all — runs for
all three. While a rollback runs (`shielded`), a second signal is acknowledged and does not
stop it; a third raises `ForcedExit` in the middle of it, and the create reports exactly which
undo steps were not done. After a verb has finished its work (`finished`), signals are
acknowledged only, so a completed create is never reported as an error.

Library code never prints: the acknowledgement goes through the callback `install` was given.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class Interrupted(KeyboardInterrupt):
    """A signal asked the command to stop."""

    def __init__(self, signal_name: str = "SIGINT") -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


class ForcedExit(Interrupted):
    """A third signal during a rollback: stop now, whatever is left."""


@dataclass
class _State:
    installed: bool = False
    shield_depth: int = 0
    during_shield: int = 0
    finished: bool = False
    acknowledge: Optional[Callable[[str], None]] = None


_STATE = _State()


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # pragma: no cover - only the three installed signals arrive
        return str(signum)


def _handler(signum: int, frame: Any) -> None:
    name = _name(signum)
    say = _STATE.acknowledge or (lambda text: None)
    if _STATE.finished:
        say(f"{name} received after the work was done; finishing")
        return
    if _STATE.shield_depth:
        _STATE.during_shield += 1
        if _STATE.during_shield == 1:
            say(
                f"{name} received: still rolling back; send it once more to abandon the "
                "rollback (it then says what is left behind)"
            )
            return
        raise ForcedExit(name)
    raise Interrupted(name)


def install(acknowledge: Callable[[str], None]) -> None:
    """Route SIGINT, SIGTERM and SIGHUP to `Interrupted` for this process (main thread only)."""
    _STATE.acknowledge = acknowledge
    _STATE.finished = False
    _STATE.during_shield = 0
    for name in SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, _handler)
    _STATE.installed = True


def uninstall() -> None:
    for name in SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(
                signum, signal.default_int_handler if name == "SIGINT" else signal.SIG_DFL
            )
    _STATE.installed = False
    _STATE.acknowledge = None


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Run a rollback: the next signal is acknowledged, the one after that forces the exit."""
    _STATE.shield_depth += 1
    _STATE.during_shield = 0
    try:
        yield
    finally:
        _STATE.shield_depth -= 1


def finished() -> None:
    """The verb's work is done; what remains (printing the result) is not interrupted."""
    _STATE.finished = True
