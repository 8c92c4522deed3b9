"""Connectivity check: can something in this AWS account reach the pool's collector?

The CLI invokes this with `{"host": ..., "port": ..., "timeout": seconds}` before creating an
annex and compares what it reports (the address reached and the first bytes, if the peer spoke
first) with what it sees locally. HTCondor's CEDAR protocol waits for the client to speak, so an
empty banner is normal; `reachable` is the TCP handshake.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Optional

DEFAULT_PORT = 9618
DEFAULT_TIMEOUT_SECONDS = 5.0
MAX_TIMEOUT_SECONDS = 60.0
BANNER_BYTES = 256
BANNER_WAIT_SECONDS = 0.2


def check(host: str, port: int, timeout: float, read_banner: bool = True) -> dict[str, Any]:
    """Try one TCP connection to host:port within `timeout` seconds (resolution included)."""
    started = time.monotonic()
    deadline = started + timeout
    address: Optional[str] = None
    error: Optional[str] = None
    banner = ""
    reachable = False
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for family, kind, proto, _, sockaddr in infos:
            address = str(sockaddr[0])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = error or f"timed out after {timeout:g} s"
                break
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(remaining)
                try:
                    sock.connect(sockaddr)
                except socket.timeout:
                    error = f"timed out after {timeout:g} s connecting to {address}:{port}"
                    continue
                except OSError as exc:
                    error = f"{exc.strerror or exc} ({address}:{port})"
                    continue
                reachable, error = True, None
                if read_banner:
                    banner = _read_banner(sock, deadline)
                break
    except socket.gaierror as exc:
        error = f"cannot resolve {host!r}: {exc.strerror or exc}"
    return {
        "reachable": reachable,
        "host": host,
        "port": port,
        "address": address,
        "error": error,
        "banner": banner,
        "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
    }


def _read_banner(sock: socket.socket, deadline: float) -> str:
    """The first bytes the peer sends unprompted, if any arrive quickly."""
    sock.settimeout(max(0.0, min(BANNER_WAIT_SECONDS, deadline - time.monotonic())))
    try:
        data = sock.recv(BANNER_BYTES)
    except OSError:
        return ""
    return data.decode("latin-1")


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Lambda entry point: `{"host", "port"?, "timeout"?}` in, the `check` report out."""
    host = event.get("host")
    if not isinstance(host, str) or not host:
        return {
            "reachable": False,
            "host": host,
            "port": None,
            "address": None,
            "error": "the event names no host",
            "banner": "",
            "elapsed_ms": 0.0,
        }
    port = int(event.get("port", DEFAULT_PORT))
    timeout = min(float(event.get("timeout", DEFAULT_TIMEOUT_SECONDS)), MAX_TIMEOUT_SECONDS)
    return check(host, port, timeout)
