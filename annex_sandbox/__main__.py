"""`python -m annex_sandbox [--port N] [--fleet-tag-delay S]`: the local AWS as a process.

Prints one line `LOCAL_AWS_ENDPOINT=http://127.0.0.1:N`, then serves until SIGTERM or SIGINT.
Drive it with `annex_sandbox.SandboxControl(endpoint)`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any, Optional

from annex_sandbox.local_aws import DEFAULT_FLEET_TAG_DELAY, LocalAws


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m annex_sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only)")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument(
        "--fleet-tag-delay",
        type=float,
        default=DEFAULT_FLEET_TAG_DELAY,
        help="seconds before Spot Fleet instances get aws:ec2spot:fleet-request-id",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    local_aws = LocalAws(
        region=args.region, host=args.host, port=args.port, fleet_tag_delay=args.fleet_tag_delay
    ).start()
    print(f"LOCAL_AWS_ENDPOINT={local_aws.endpoint_url}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        local_aws.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
