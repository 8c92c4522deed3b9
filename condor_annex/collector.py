"""The pool's collector address, as HTCondor writes it, and this machine's view of it."""

from __future__ import annotations

import re
import socket
from typing import Any, Optional

from condor_annex.errors import InvalidInput

DEFAULT_COLLECTOR_PORT = 9618
CONNECTIVITY_TIMEOUT_SECONDS = 5.0


_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)"
_PARAMS = (
    r"(?:\?[A-Za-z0-9_.-]+=[A-Za-z0-9_.:,+\[\]%-]*(?:&[A-Za-z0-9_.-]+=[A-Za-z0-9_.:,+\[\]%-]*)*)"
)
_PLAIN = re.compile(rf"(?P<host>{_HOST})(?::(?P<port>[0-9]{{1,5}}))?(?P<params>{_PARAMS})?")
_SINFUL = re.compile(rf"<(?P<host>{_HOST}):(?P<port>[0-9]{{1,5}})(?P<params>{_PARAMS})?>")


def parse_collector(collector: str) -> tuple[str, int]:
    """(host, TCP port) of a collector address in every form HTCondor accepts for one collector.

    `HOST`, `HOST:PORT`, `[IPv6]:PORT`, each optionally with shared-port parameters
    (`host:9618?sock=collector`), and sinful strings `<1.2.3.4:9618?sock=collector>`. The port
    defaults to 9618; `?sock=` names an endpoint behind the same TCP port, so only the TCP part
    matters for reachability. Anything else (several collectors, spaces, a bad port) is refused
    here, before any other check, rather than accepted now and refused later.
    """
    text = collector.strip()
    if not text:
        raise InvalidInput(
            "no collector is known",
            next_step="pass -collector HOST[:PORT] or set COLLECTOR_HOST in the HTCondor config",
        )
    match = _SINFUL.fullmatch(text) or _PLAIN.fullmatch(text)
    if match is None:
        several = "," in text or " " in text
        raise InvalidInput(
            f"-collector {collector!r} is not "
            + ("one collector" if several else "a collector address HTCondor accepts"),
            next_step="give one collector as HOST[:PORT], HOST:PORT?sock=NAME or "
            "<IP:PORT?sock=NAME>",
        )
    host = match.group("host").strip("[]")
    port_text = match.group("port")
    port = int(port_text) if port_text else DEFAULT_COLLECTOR_PORT
    if not 0 < port < 65536:
        raise InvalidInput(f"-collector {collector!r}: port {port} is not a TCP port")
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
