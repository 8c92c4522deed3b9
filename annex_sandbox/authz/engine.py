"""The node worker running `@cloud-copilot/iam-simulate`: one process, JSON lines, many requests.

Starting node costs ~0.3 s, so the worker lives as long as the local AWS and answers every
authorization over one pipe (a lock serializes requests; the worker answers in order).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("worker.cjs")
ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "node_modules"
ENGINE_PACKAGE = NODE_MODULES / "@cloud-copilot" / "iam-simulate"

ALLOWED = "Allowed"
IMPLICITLY_DENIED = "ImplicitlyDenied"
EXPLICITLY_DENIED = "ExplicitlyDenied"
ENGINE_ERROR = "Error"


class EngineUnavailable(RuntimeError):
    """node or the engine package is missing (run `make node_modules/.installed`)."""


class PolicyEngine:
    """`decide(simulations)` → one `{"decision": ..., "error"?: ...}` per simulation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._next_id = 0

    def _start(self) -> subprocess.Popen[str]:
        node = shutil.which("node")
        if node is None or not ENGINE_PACKAGE.exists():
            raise EngineUnavailable(
                "the local AWS's IAM engine needs node and @cloud-copilot/iam-simulate: "
                "run `make node_modules/.installed`"
            )
        return subprocess.Popen(
            [node, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=ROOT,
        )

    def warm(self) -> None:
        """Start the worker now, so the first decision does not pay node's start-up."""
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._process = self._start()

    def decide(self, simulations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not simulations:
            return []
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._process = self._start()
            process = self._process
            assert process.stdin is not None and process.stdout is not None
            self._next_id += 1
            process.stdin.write(json.dumps({"id": self._next_id, "simulations": simulations}))
            process.stdin.write("\n")
            process.stdin.flush()
            line = process.stdout.readline()
        if not line:
            raise EngineUnavailable("the IAM engine worker exited")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"IAM engine: {answer['error']}")
        results: list[dict[str, Any]] = answer["results"]
        return results

    def close(self) -> None:
        with self._lock:
            if self._process is not None:
                if self._process.stdin is not None:
                    self._process.stdin.close()
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
                if self._process.stdout is not None:
                    self._process.stdout.close()
                self._process = None
