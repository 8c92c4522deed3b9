"""Boot many emulated instances at once: one forked process per instance.

`python -m bench.launcher` reads jobs (JSON lines) on stdin and forks one child per job as soon as
it reads it; each child gets the job's environment (its own metadata endpoint, no static
credentials) and runs either the real boot agent (`condor_annex.agent.main.run`) or the old tool's
call sequence. One result line (JSON) per child goes to stdout when it exits.

Why fork: a thousand `condor-annex-ec2` processes started from scratch would spend most of the
run importing Python and boto3 on two CPUs (that start-up cost is measured per boot in the
`agent` benchmark). This launcher imports once and forks, so each instance still is its own
process with its own environment, credentials, retry state and AWS clients, and the run
measures the AWS call budget. The parsed SDK service models are shared (copy-on-write) with
the children through the session hook the agent offers; nothing else about the agent changes.

Job: {"id": str, "kind": "agent" | "old", "env": {...}, "root": str}
Result: {"id": str, "rc": int, "start": float, "end": float, "cpu": float}
(wall-clock seconds; `cpu` is the child's user + system CPU time).

`--max-in-flight N` keeps at most N instances booting at a time (the rest wait their turn, as
instances of one large launch come up over a while on EC2); 0 means all at once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import botocore.session

from bench.old_tool import InProcessCaller, OldToolFailed, old_tool_boot
from condor_annex.agent.imds import ImdsClient
from condor_annex.agent.main import Options, run
from condor_annex.agent.root import Root

_WARM = botocore.session.get_session()
WARM_LOADER = _WARM.get_component("data_loader")
for _service in ("ec2", "iam", "s3", "sts"):
    # Creating a client loads everything a client needs (models, rules, retry config).
    _WARM.create_client(
        _service,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",  # noqa: S106 - never used: warms the model cache only
    )


def share_models(session: Any) -> None:
    """Session hook: use the launcher's already-parsed service models.

    The agent hands over a botocore session; the old sequence here makes boto3 sessions.
    """
    getattr(session, "_session", session).register_component("data_loader", WARM_LOADER)


def _run_agent(job: dict[str, Any]) -> int:
    root = Path(job["root"])
    options = Options(
        root=Root(root),
        firewall=False,
        poweroff_command=None,
        fleet_tag_timeout=float(job.get("fleet_tag_timeout", 600)),
        imds_timeout=60.0,
    )
    return run(options, session_hook=share_models)


def _run_old(job: dict[str, Any]) -> int:
    root = Path(job["root"])
    env = job["env"]
    imds = ImdsClient(endpoint=env["AWS_EC2_METADATA_SERVICE_ENDPOINT"])

    class FreshSessions:
        """Every call resolves credentials from the metadata service anew, like a CLI process."""

        def client(self, service: str, **kw: Any) -> Any:
            session = boto3.Session(region_name=env["AWS_DEFAULT_REGION"])
            share_models(session)
            return session.client(service, **kw)

    caller = InProcessCaller(FreshSessions(), env["AWS_ENDPOINT_URL"], imds)
    result: dict[str, Any]
    try:
        boot = old_tool_boot(caller, root, spot_poll_seconds=float(job.get("spot_poll", 5)))
        result = {"ok": True, "calls": boot.aws_calls, "annex": boot.annex_name}
        rc = 0
    except OldToolFailed as error:
        result = {"ok": False, "error": str(error)[-500:]}
        rc = 1
    (root / "old-tool-result.json").write_text(json.dumps(result))
    return rc


def _child(job: dict[str, Any]) -> None:
    """Runs in the forked child: become the instance, boot, exit with the agent's code."""
    rc = 70
    try:
        root = Path(job["root"])
        root.mkdir(parents=True, exist_ok=True)
        log = os.open(root / "boot.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 2)
        os.environ.clear()
        os.environ.update(job["env"])
        rc = _run_agent(job) if job["kind"] == "agent" else _run_old(job)
    except BaseException as error:  # report, never let the child return into the launcher
        print(f"launcher child error: {error!r}", file=sys.stderr, flush=True)
    finally:
        sys.stderr.flush()
        os._exit(rc)


def main(argv: list[str]) -> int:
    max_in_flight = 0
    if len(argv) == 2 and argv[0] == "--max-in-flight":
        max_in_flight = int(argv[1])
    running: dict[int, tuple[str, float]] = {}

    def reap(block: bool) -> None:
        """Report finished children; with `block`, wait for at least one."""
        while running:
            pid, status, usage = os.wait4(-1, 0 if block else os.WNOHANG)
            if pid == 0:
                return
            job_id, start = running.pop(pid)
            line = {
                "id": job_id,
                "rc": os.waitstatus_to_exitcode(status),
                "start": start,
                "end": time.time(),
                "cpu": usage.ru_utime + usage.ru_stime,
            }
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
            block = False

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        while max_in_flight and len(running) >= max_in_flight:
            reap(block=True)
        start = time.time()
        pid = os.fork()
        if pid == 0:
            _child(job)
        running[pid] = (job["id"], start)
        reap(block=False)
    while running:
        reap(block=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
