"""The connectivity function, run in-process against real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.cdk import load_lambda_module

connectivity = load_lambda_module("connectivity")


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and says nothing (like a collector)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(timeout=1)
    server.close()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound then released)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


def test_listening_port_is_reported_reachable(listening_port: int):
    report = connectivity.handler({"host": "127.0.0.1", "port": listening_port, "timeout": 2})

    assert report["reachable"] is True
    assert report["address"] == "127.0.0.1"
    assert report["port"] == listening_port
    assert report["error"] is None


def test_closed_port_is_reported_unreachable_and_refused(closed_port: int):
    report = connectivity.handler({"host": "127.0.0.1", "port": closed_port, "timeout": 2})

    assert report["reachable"] is False
    assert "refused" in report["error"].lower()


def test_unanswered_connection_gives_up_at_its_timeout():
    # 192.0.2.0/24 (TEST-NET-1, RFC 5737) is never routed: the SYN goes unanswered or is refused
    # at once by the local network; either way the check ends within its timeout.
    # How long that took is not asserted (a shared machine makes any budget flaky); the answer
    # names what happened.
    report = connectivity.handler({"host": "192.0.2.1", "port": 9618, "timeout": 0.5})

    assert report["reachable"] is False
    assert any(
        what in report["error"].lower()
        for what in ("timed out after 0.5 s", "unreachable", "refused")
    ), report["error"]


def test_banner_sent_by_the_peer_is_reported():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def greet() -> None:
        conn, _ = server.accept()
        conn.sendall(b"HELLO collector\n")
        time.sleep(0.3)
        conn.close()

    thread = threading.Thread(target=greet, daemon=True)
    thread.start()
    report = connectivity.handler(
        {"host": "127.0.0.1", "port": server.getsockname()[1], "timeout": 2}
    )
    thread.join(timeout=2)
    server.close()

    assert report["reachable"] is True
    assert report["banner"] == "HELLO collector\n"


def test_unresolvable_host_is_reported_with_the_reason():
    report = connectivity.handler({"host": "no-such-host.invalid", "port": 9618, "timeout": 2})

    assert report["reachable"] is False
    assert "resolve" in report["error"]
