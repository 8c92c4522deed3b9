"""`condor-annex-spot-watcher`: drain the startd when EC2 announces a Spot interruption.

EC2 posts `spot/instance-action` two minutes before it stops or terminates a Spot instance, and
`events/recommendations/rebalance` when the instance is at elevated risk. Both are polled every
5 seconds (AWS's recommendation). A rebalance recommendation stops new matches (START = False);
an interruption notice also asks the startd to shut down gracefully, which vacates running jobs
within their retirement time so the schedd can rerun them elsewhere before the instance goes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from condor_annex.agent.files import CONFIG_FILE_MODE, write_atomic
from condor_annex.agent.imds import ImdsClient, ImdsUnavailable
from condor_annex.agent.log import emit
from condor_annex.agent.root import Root

INSTANCE_ACTION = "meta-data/spot/instance-action"
REBALANCE = "meta-data/events/recommendations/rebalance"
POLL_SECONDS = 5.0
DRAIN_CONFIG_FILE = "99-annex-spot-drain.config"
"""Sorts last in config.d so its START wins over the image's and the annex's."""
DEFAULT_RECONFIG_COMMAND = "condor_reconfig"
DEFAULT_VACATE_COMMAND = "condor_off -graceful -startd"


@dataclass
class SpotWatcher:
    imds: ImdsClient
    root: Root
    reconfig_command: str = DEFAULT_RECONFIG_COMMAND
    vacate_command: str = DEFAULT_VACATE_COMMAND
    interval: float = POLL_SECONDS
    sleep: Callable[[float], None] = time.sleep
    matches_stopped: bool = False
    vacated: bool = False
    polls: int = field(default=0)

    def _run(self, name: str, command: str) -> bool:
        try:
            completed = subprocess.run(
                shlex.split(command), capture_output=True, text=True, check=False
            )
        except OSError as error:
            emit(name, "error", command=command, reason=str(error))
            return False
        result = "ok" if completed.returncode == 0 else "error"
        emit(name, result, command=command, rc=completed.returncode)
        return completed.returncode == 0

    def stop_new_matches(self, why: str) -> None:
        """START = False in a config file that sorts last, then reconfig."""
        if self.matches_stopped:
            return
        path = self.root.config_dir / DRAIN_CONFIG_FILE
        content = f"# Written by condor-annex-spot-watcher: {why}\nSTART = False\n"
        write_atomic(path, content.encode(), CONFIG_FILE_MODE, self.root.privileged)
        emit("stop-matches", "ok", why=why, path=path)
        self._run("reconfig", self.reconfig_command)
        self.matches_stopped = True

    def vacate(self, notice: str) -> None:
        self.stop_new_matches("spot interruption notice")
        if not self.vacated:
            self._run("vacate", self.vacate_command)
            self.vacated = True
            emit("interruption", "ok", notice=notice)

    def poll_once(self) -> bool:
        """One look at both notices; True once the interruption has been handled."""
        self.polls += 1
        action = self.imds.get_optional(INSTANCE_ACTION)
        if action is not None:
            self.vacate(_summary(action))
            return True
        if self.imds.get_optional(REBALANCE) is not None and not self.matches_stopped:
            emit("rebalance", "ok", detail="rebalance recommendation")
            self.stop_new_matches("spot rebalance recommendation")
        return False

    def watch(self, max_polls: Optional[int] = None) -> int:
        while max_polls is None or self.polls < max_polls:
            try:
                if self.poll_once():
                    return 0
            except ImdsUnavailable as error:
                # Keep watching: a blip in the metadata service must not end the watch.
                emit("poll", "error", reason=str(error))
            self.sleep(self.interval)
        return 0


def _summary(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:100]
    return f"{data.get('action', '?')} at {data.get('time', '?')}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="condor-annex-spot-watcher",
        description="Drain HTCondor when EC2 announces a Spot interruption or rebalance.",
    )
    parser.add_argument("--root", type=Path, default=Path("/"))
    parser.add_argument("--interval", type=float, default=POLL_SECONDS, metavar="SECONDS")
    parser.add_argument("--max-polls", type=int, default=None, help="stop after N polls")
    parser.add_argument("--reconfig-command", default=DEFAULT_RECONFIG_COMMAND, metavar="CMD")
    parser.add_argument("--vacate-command", default=DEFAULT_VACATE_COMMAND, metavar="CMD")
    args = parser.parse_args(argv)
    watcher = SpotWatcher(
        ImdsClient(deadline_seconds=max(args.interval * 2, 5.0)),
        Root(args.root),
        reconfig_command=args.reconfig_command,
        vacate_command=args.vacate_command,
        interval=args.interval,
    )
    emit("watch", "started", interval=args.interval)
    return watcher.watch(args.max_polls)


if __name__ == "__main__":
    sys.exit(main())
