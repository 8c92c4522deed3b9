"""The pool's collector address, as HTCondor writes it, and this machine's view of it."""

from __future__ import annotations

import socket
from typing import Any, Optional

from condor_annex.errors import InvalidInput

DEFAULT_COLLECTOR_PORT = 9618
CONNECTIVITY_TIMEOUT_SECONDS = 5.0


def parse_collector(collector: str) -> tuple[str, int]:
    """`HOST[:PORT]`, `[IPv6]:PORT` or a sinful string `<host:port?sock=...>` → (host, port).

    The port defaults to 9618; the `?sock=` suffix names a shared-port endpoint behind the same
    TCP port, so only the TCP part matters for reachability.
    """
    text = collector.strip().strip("<>").split("?", 1)[0]
    if not text:
        raise InvalidInput(
            "no collector is known",
            next_step="pass -collector HOST[:PORT] or set COLLECTOR_HOST in the HTCondor config",
        )
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    try:
        port = int(port_text) if port_text else DEFAULT_COLLECTOR_PORT
    except ValueError:
        raise InvalidInput(f"collector port {port_text!r} is not a number") from None
    if not host or not 0 < port < 65536:
        raise InvalidInput(f"collector {collector!r} is not HOST[:PORT]")
    return host, port


def local_tcp_probe(host: str, port: int) -> dict[str, Any]:
    """This machine's view of the collector, in the connectivity Lambda's result shape."""
    address: Optional[str] = None
    try:
        with socket.create_connection((host, port), timeout=CONNECTIVITY_TIMEOUT_SECONDS) as sock:
            address = str(sock.getpeername()[0])
        return {"reachable": True, "host": host, "port": port, "address": address, "error": None}
    except OSError as exc:
        return {
            "reachable": False,
            "host": host,
            "port": port,
            "address": address,
            "error": str(exc.strerror or exc),
        }
