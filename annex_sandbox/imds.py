"""An IMDSv2-faithful EC2 instance metadata service for tests and benchmarks.

The boot agent, boto3 and botocore talk to this server exactly as they talk to
169.254.169.254 on an instance: point them at it with the SDK's own setting
`AWS_EC2_METADATA_SERVICE_ENDPOINT=<url returned by add_instance>`. Nothing in product code
knows it exists. The behaviour follows the EC2 user guide ("Use the Instance Metadata Service
to access instance metadata", "Instance metadata categories") for an instance launched with
`HttpTokens=required`:

* `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: 1..21600` answers 200, the
  token as text and the TTL echoed in the same header. A missing or invalid TTL is 400; a PUT
  that carries `X-Forwarded-For` (it went through a proxy) is 403; other methods are 405.
* Every GET needs `X-aws-ec2-metadata-token` holding an unexpired token issued by THIS instance,
  otherwise 401 (IMDSv1 refused). Tokens cannot be shared between instances.
* Values and listings are `text/plain` without a trailing newline; directories list their
  children with a trailing `/`; unknown paths are 404; `Server: EC2ws`. A leaf also answers
  with a trailing slash (botocore asks for `placement/availability-zone/`).
* Optional data is absent the way AWS makes it absent: `public-ipv4` 404 without a public
  address, `iam/` 404 without a role, `tags/` 404 unless tags in metadata are enabled,
  `spot/instance-action` and `events/recommendations/rebalance` 404 until scheduled.

API::

    @dataclass class Credentials(access_key_id, secret_access_key, token, expiration)
    @dataclass class EmulatedInstance(instance_id, region="us-east-1", availability_zone=None,
        account_id="123456789012", instance_type="m5.large", image_id="ami-12345678",
        private_ipv4="10.0.0.10", public_ipv4=None, instance_profile_arn=None, role_name=None,
        tags=None, credentials=None, instance_profile_id=None, instance_lifecycle="on-demand",
        architecture="x86_64", security_groups=[], pending_time=now, user_data=None)
        # mutable: change tags / public_ipv4 while the server runs and the next GET sees it.
        # credentials: Callable[[], Credentials]; the server caches what it returns and asks
        # again when fewer than 5 minutes remain (EC2 rotates role credentials that early).

    class ImdsServer(host="127.0.0.1"):
        start() -> ImdsServer; stop(); context manager
        endpoint: str                      # main (shared) port URL, e.g. "http://127.0.0.1:PORT/"
        add_instance(instance, *, dedicated_port=True) -> str   # endpoint URL for that instance
        remove_instance(instance_id)       # its port refuses connections, its tokens die
        instance(instance_id) -> EmulatedInstance; instance_ids() -> list[str]
        endpoint_for(instance_id) -> str   # the URL add_instance returned
        schedule_spot_interruption(instance_id, action="terminate", at=None)
            # `at` = when EC2 acts (default now + 2 min); the notice is visible from at - 2 min.
        schedule_rebalance_recommendation(instance_id, at=None)   # visible from `at` (default now)
        clear_notices(instance_id)
        set_available(instance_id, available, *, mode="refuse")
            # mode "refuse": connection refused (dedicated port) / reset (shared port);
            # "hang": the request is read but never answered; "disabled": 403, as AWS answers
            # when the instance's HttpEndpoint is disabled.
        set_latency(instance_id, seconds)
        requests(instance_id) -> list[(method, path, status)]     # status 0: never answered

    role_credentials_from_local_aws(sts_client, role_arn, session_name) -> Callable[[], Credentials]
    instance_from_ec2(ec2_client, iam_client, instance_id, *, sts_client, region,
                      tags_in_metadata=None, public_ipv4=...) -> EmulatedInstance

Selecting an instance: each instance normally gets its own port (one selector thread accepts
on all of them, one thread per connection, so 1,000 instances cost 1,000 sockets and no
polling threads). All instances are also reachable on the main port with the header
`X-Annex-Emulated-Instance: <instance-id>`; `add_instance(..., dedicated_port=False)` gives an
instance only that. `start()` raises the soft open-file limit to 8192 when it is lower (one
socket per instance). Not emulated: the hop limit (everything is on loopback), IPv6, the signed
identity documents (pkcs7, signature).

Measured (2 vCPU, client and server in one process): adding 1,000 instances with their own ports
takes 0.1 s; the idle server uses no CPU; 1,000 agents doing token + 5 GETs, 200 at a time, are
served at about 1,000 requests/s.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import resource
import secrets
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from types import EllipsisType
from typing import Any, Optional, Union
from urllib.parse import urlsplit

# Names fixed by the EC2 metadata protocol (not secrets).
TOKEN_PATH = "/latest/api/token"  # noqa: S105
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"  # noqa: S105
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105
INSTANCE_SELECTOR_HEADER = "X-Annex-Emulated-Instance"
"""Emulator-only: selects the instance on the shared main port."""
TOKEN_TTL_MIN = 1
TOKEN_TTL_MAX = 21600
SPOT_NOTICE_LEAD = timedelta(minutes=2)
"""EC2 posts `spot/instance-action` two minutes before it acts."""
CREDENTIAL_REFRESH_MARGIN = timedelta(minutes=5)
"""EC2 makes new role credentials available at least five minutes before the old ones expire."""
IDENTITY_DOCUMENT_VERSION = "2017-09-30"
SERVER_HEADER = "EC2ws"

UNAVAILABLE_MODES = ("refuse", "hang", "disabled")
SPOT_ACTIONS = ("terminate", "stop", "hibernate")

# Characters AWS allows in tag keys exposed through instance metadata (keys with '/' or spaces
# cannot be shown there; the user guide says launches with such keys fail, we just hide them).
_TAG_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-=._:@,")


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _imds_json(data: dict[str, Any]) -> str:
    # IMDS pretty-prints its JSON documents with two-space indent and " : " separators.
    return json.dumps(data, indent=2, separators=(",", " : "))


@dataclass(frozen=True)
class Credentials:
    """Role credentials as the instance's metadata service hands them out."""

    access_key_id: str
    secret_access_key: str
    token: str
    expiration: datetime


@dataclass
class EmulatedInstance:
    """What the metadata service knows about one instance; mutable while the server runs."""

    instance_id: str
    region: str = "us-east-1"
    availability_zone: Optional[str] = None
    account_id: str = "123456789012"
    instance_type: str = "m5.large"
    image_id: str = "ami-12345678"
    private_ipv4: str = "10.0.0.10"
    public_ipv4: Optional[str] = None
    instance_profile_arn: Optional[str] = None
    role_name: Optional[str] = None
    tags: Optional[dict[str, str]] = None
    credentials: Optional[Callable[[], Credentials]] = None
    instance_profile_id: Optional[str] = None
    instance_lifecycle: str = "on-demand"
    architecture: str = "x86_64"
    security_groups: list[str] = field(default_factory=list)
    pending_time: datetime = field(default_factory=_now)
    user_data: Optional[bytes] = None

    def __post_init__(self) -> None:
        if self.availability_zone is None:
            self.availability_zone = f"{self.region}a"


# --- Metadata tree ------------------------------------------------------------------------------

_Tree = dict[str, Any]  # values: str, bytes, Callable[[], str] (computed on demand) or _Tree


def _partition(region: str) -> tuple[str, str]:
    if region.startswith("cn-"):
        return "aws-cn", "amazonaws.com.cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov", "amazonaws.com"
    return "aws", "amazonaws.com"


def _local_hostname(ip: str, region: str) -> str:
    suffix = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
    return f"ip-{ip.replace('.', '-')}.{suffix}"


def _public_hostname(ip: str, region: str) -> str:
    suffix = (
        "compute-1.amazonaws.com" if region == "us-east-1" else f"{region}.compute.amazonaws.com"
    )
    return f"ec2-{ip.replace('.', '-')}.{suffix}"


@dataclass
class _InstanceState:
    instance: EmulatedInstance
    port: Optional[int] = None
    listener: Optional[socket.socket] = None
    available: bool = True
    unavailable_mode: str = "refuse"
    latency: float = 0.0
    spot_action: Optional[tuple[str, datetime]] = None
    rebalance_at: Optional[datetime] = None
    log: list[tuple[str, str, int]] = field(default_factory=list)
    connections: set[socket.socket] = field(default_factory=set)
    restored: threading.Event = field(default_factory=threading.Event)
    credential_lock: threading.Lock = field(default_factory=threading.Lock)
    cached_credentials: Optional[tuple[object, Credentials, datetime]] = None

    def __post_init__(self) -> None:
        self.restored.set()


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "text/plain"


_ERROR_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
}


def _error(status: int) -> _Answer:
    # IMDS answers errors with a small XHTML page, not JSON.
    title = f"{status} - {_ERROR_TITLES.get(status, 'Error')}"
    page = (
        '<?xml version="1.0" encoding="iso-8859-1"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n'
        '\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
        f" <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n"
        " </body>\n</html>\n"
    )
    return _Answer(status, page.encode(), content_type="text/html")


class _Context:
    """What a connection handler knows: the server and the instance its port is bound to."""

    def __init__(self, imds: ImdsServer, instance_id: Optional[str]) -> None:
        self.imds = imds
        self.instance_id = instance_id


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3's pools expect
    timeout = 30  # idle keep-alive connections are closed after this many seconds
    server: _Context  # type: ignore[assignment]

    def version_string(self) -> str:
        return SERVER_HEADER

    def log_message(self, format: str, *args: Any) -> None:
        return  # the per-instance request log replaces the stderr access log

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            self._send(_error(400), method)
            return
        if length > 0:
            self.rfile.read(min(length, 1 << 20))
        imds = self.server.imds
        instance_id = self.server.instance_id or self.headers.get(INSTANCE_SELECTOR_HEADER)
        state = imds._state(instance_id) if instance_id else None
        if state is None:
            self._send(_error(404), method)
            return
        if not state.available:
            mode = state.unavailable_mode
            if mode == "disabled":
                answer = _error(403)
                imds._record(state, method, self.path, answer.status)
                self._send(answer, method)
                return
            imds._record(state, method, self.path, 0)
            if mode == "hang":
                state.restored.wait()
            self.close_connection = True
            _reset(self.connection)
            return
        if state.latency > 0:
            imds._stopping.wait(state.latency)
        answer = imds._answer(state, method, self.path, self.headers)
        imds._record(state, method, self.path, answer.status)
        self._send(answer, method)

    def _send(self, answer: _Answer, method: str) -> None:
        self.send_response(answer.status, _ERROR_TITLES.get(answer.status))
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Accept-Ranges", "none")
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(answer.body)


def _reset(conn: socket.socket) -> None:
    """Abort a connection with RST, as a host with nothing listening would."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# --- The server ---------------------------------------------------------------------------------


class ImdsServer:
    """Metadata service for many emulated instances; thread-safe. See the module docstring."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._lock = threading.RLock()
        self._instances: dict[str, _InstanceState] = {}
        self._tokens: dict[str, tuple[str, float]] = {}
        self._tokens_issued = 0
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._calls: list[tuple[Callable[[], None], threading.Event]] = []
        self._thread: Optional[threading.Thread] = None
        self._main: Optional[socket.socket] = None
        self._main_port: Optional[int] = None
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()

    # -- lifecycle

    def start(self) -> ImdsServer:
        """Bind the main port and start accepting; returns self."""
        if self._thread is not None:
            raise RuntimeError("ImdsServer already started")
        _raise_open_file_limit()
        self._main = self._listen(0)
        self._main_port = self._main.getsockname()[1]
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._selector.register(self._main, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, name="imds-accept", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every port and connection; hung requests are released."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake()
        self._thread.join(timeout=10)
        self._thread = None
        with self._lock:
            states = list(self._instances.values())
            self._instances.clear()
            self._tokens.clear()
            connections = list(self._connections)
        for state in states:
            state.restored.set()
            if state.listener is not None:
                state.listener.close()
        for conn in connections:
            _reset(conn)
        if self._main is not None:
            self._main.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> ImdsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """URL of the main port (instances selected by `X-Annex-Emulated-Instance`)."""
        if self._main_port is None:
            raise RuntimeError("ImdsServer not started")
        return self._url(self._main_port)

    # -- instances

    def add_instance(self, instance: EmulatedInstance, *, dedicated_port: bool = True) -> str:
        """Serve `instance`; returns the endpoint URL its SDK should use."""
        state = _InstanceState(instance)
        with self._lock:
            if instance.instance_id in self._instances:
                raise ValueError(f"instance {instance.instance_id} is already emulated")
            self._instances[instance.instance_id] = state
        if not dedicated_port:
            return self.endpoint
        try:
            self._open_port(state, 0)
        except BaseException:
            with self._lock:
                self._instances.pop(instance.instance_id, None)
            raise
        assert state.port is not None
        return self._url(state.port)

    def remove_instance(self, instance_id: str) -> None:
        """Stop serving an instance: its port refuses connections and its tokens die."""
        with self._lock:
            state = self._instances.pop(instance_id)
            self._tokens = {t: v for t, v in self._tokens.items() if v[0] != instance_id}
        self._close_port(state)
        state.restored.set()
        self._drop_connections(state)

    def instance(self, instance_id: str) -> EmulatedInstance:
        """The live, mutable record served for `instance_id`."""
        return self._require(instance_id).instance

    def served_credentials(self, instance_id: str) -> Optional[Credentials]:
        """The role credentials this instance's metadata service handed out last (None if none).

        What a secret-hunting test must look for: the instance's `credentials` attribute is the
        credential *source* (a callable), not the secret it produced.
        """
        cached = self._require(instance_id).cached_credentials
        return cached[1] if cached is not None else None

    def instance_ids(self) -> list[str]:
        with self._lock:
            return list(self._instances)

    def endpoint_for(self, instance_id: str) -> str:
        """The URL `add_instance` returned for `instance_id`."""
        state = self._require(instance_id)
        return self.endpoint if state.port is None else self._url(state.port)

    # -- events

    def schedule_spot_interruption(
        self, instance_id: str, action: str = "terminate", at: Optional[datetime] = None
    ) -> None:
        """Post a Spot interruption: EC2 acts at `at`; the notice shows from `at` - 2 minutes."""
        if action not in SPOT_ACTIONS:
            raise ValueError(f"spot action must be one of {SPOT_ACTIONS}, not {action!r}")
        when = at if at is not None else _now() + SPOT_NOTICE_LEAD
        self._require(instance_id).spot_action = (action, when)

    def schedule_rebalance_recommendation(
        self, instance_id: str, at: Optional[datetime] = None
    ) -> None:
        """Post a rebalance recommendation whose noticeTime is `at` (visible from then)."""
        self._require(instance_id).rebalance_at = at if at is not None else _now()

    def clear_notices(self, instance_id: str) -> None:
        state = self._require(instance_id)
        state.spot_action = None
        state.rebalance_at = None

    # -- faults

    def set_available(self, instance_id: str, available: bool, *, mode: str = "refuse") -> None:
        """Make the instance's metadata service absent, hung or disabled (see module docs)."""
        if mode not in UNAVAILABLE_MODES:
            raise ValueError(f"mode must be one of {UNAVAILABLE_MODES}, not {mode!r}")
        state = self._require(instance_id)
        if available:
            if state.port is not None and state.listener is None:
                self._open_port(state, state.port)
            state.available = True
            state.restored.set()
            return
        state.restored.clear()
        state.unavailable_mode = mode
        state.available = False
        if mode == "refuse":
            self._close_port(state)
            self._drop_connections(state)

    def set_latency(self, instance_id: str, seconds: float) -> None:
        """Delay every answer for this instance by `seconds`."""
        self._require(instance_id).latency = max(0.0, seconds)

    def requests(self, instance_id: str) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request seen for the instance, oldest first."""
        state = self._require(instance_id)
        with self._lock:
            return list(state.log)

    # -- internals: state

    def _require(self, instance_id: str) -> _InstanceState:
        state = self._state(instance_id)
        if state is None:
            raise KeyError(f"no emulated instance {instance_id}")
        return state

    def _state(self, instance_id: str) -> Optional[_InstanceState]:
        with self._lock:
            return self._instances.get(instance_id)

    def _record(self, state: _InstanceState, method: str, path: str, status: int) -> None:
        with self._lock:
            state.log.append((method, path, status))

    def _url(self, port: int) -> str:
        host = f"[{self.host}]" if self._family == socket.AF_INET6 else self.host
        return f"http://{host}:{port}/"

    # -- internals: sockets

    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _open_port(self, state: _InstanceState, port: int) -> None:
        sock = self._listen(port)
        state.listener = sock
        state.port = sock.getsockname()[1]
        instance_id = state.instance.instance_id

        def register() -> None:
            self._selector.register(sock, selectors.EVENT_READ, instance_id)

        self._in_loop(register)

    def _close_port(self, state: _InstanceState) -> None:
        sock, state.listener = state.listener, None
        if sock is None:
            return

        def close() -> None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()

        self._in_loop(close)

    def _drop_connections(self, state: _InstanceState) -> None:
        with self._lock:
            connections = list(state.connections)
        for conn in connections:
            _reset(conn)

    def _in_loop(self, call: Callable[[], None]) -> None:
        """Run `call` on the accept thread (selectors are not thread-safe) and wait for it."""
        if self._thread is None or threading.current_thread() is self._thread:
            call()  # nothing else touches the selector before start() or on the loop itself
            return
        done = threading.Event()
        with self._lock:
            self._calls.append((call, done))
        self._wake()
        done.wait(timeout=10)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _loop(self) -> None:
        while not self._stopping.is_set():
            for key, _events in self._selector.select(timeout=None):
                if key.data == "wake":
                    self._run_calls()
                else:
                    self._accept(key.fileobj, key.data)  # type: ignore[arg-type]
        self._run_calls()

    def _run_calls(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            calls, self._calls = self._calls, []
        for call, done in calls:
            try:
                call()
            finally:
                done.set()

    def _accept(self, listener: socket.socket, instance_id: Optional[str]) -> None:
        try:
            conn, _addr = listener.accept()
        except OSError:
            return
        conn.setblocking(True)
        thread = threading.Thread(
            target=self._serve_connection, args=(conn, instance_id), name="imds-conn", daemon=True
        )
        thread.start()

    def _serve_connection(self, conn: socket.socket, instance_id: Optional[str]) -> None:
        state = self._state(instance_id) if instance_id else None
        with self._lock:
            self._connections.add(conn)
            if state is not None:
                state.connections.add(conn)
        try:
            _Handler(conn, conn.getpeername(), _Context(self, instance_id))  # type: ignore[arg-type]
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections.discard(conn)
                if state is not None:
                    state.connections.discard(conn)
            conn.close()

    # -- internals: the protocol

    def _answer(self, state: _InstanceState, method: str, raw_path: str, headers: Any) -> _Answer:
        path = urlsplit(raw_path).path
        if path.rstrip("/") == TOKEN_PATH:
            if method != "PUT":
                return _error(405)
            return self._issue_token(state, headers)
        if method not in ("GET", "HEAD"):
            return _error(405)
        if not self._token_valid(state, headers.get(TOKEN_HEADER)):
            return _error(401)
        node: Any = self._tree(state)
        segments = [s for s in path.split("/") if s]
        for segment in segments:
            if not isinstance(node, dict):
                return _error(404)
            child = node.get(segment)
            if child is None:
                child = node.get(segment + "/")
            if child is None:
                return _error(404)
            node = child
        if isinstance(node, dict):
            return _Answer(200, "\n".join(node).encode())
        if isinstance(node, bytes):
            return _Answer(200, node, content_type="application/octet-stream")
        value = node() if callable(node) else node
        return _Answer(200, value.encode())

    def _issue_token(self, state: _InstanceState, headers: Any) -> _Answer:
        # AWS refuses token requests that went through a proxy (X-Forwarded-For present).
        if headers.get("X-Forwarded-For") is not None:
            return _error(403)
        raw_ttl = headers.get(TOKEN_TTL_HEADER)
        try:
            ttl = int(raw_ttl) if raw_ttl is not None else 0
        except ValueError:
            ttl = 0
        if not TOKEN_TTL_MIN <= ttl <= TOKEN_TTL_MAX:
            return _error(400)
        token = "AQAEA" + secrets.token_urlsafe(42)
        with self._lock:
            self._tokens[token] = (state.instance.instance_id, time.monotonic() + ttl)
            self._tokens_issued += 1
            if self._tokens_issued % 1024 == 0:
                now = time.monotonic()
                self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
        return _Answer(200, token.encode(), headers=((TOKEN_TTL_HEADER, str(ttl)),))

    def _token_valid(self, state: _InstanceState, token: Optional[str]) -> bool:
        if not token:
            return False
        with self._lock:
            entry = self._tokens.get(token)
        if entry is None:
            return False
        owner, expires = entry
        return owner == state.instance.instance_id and time.monotonic() < expires

    def _tree(self, state: _InstanceState) -> _Tree:
        inst = state.instance
        partition, domain = _partition(inst.region)
        now = _now()
        meta: _Tree = {
            "ami-id": inst.image_id,
            "ami-launch-index": "0",
            "events/": {"maintenance/": {"history": "[]", "scheduled": "[]"}},
            "hostname": _local_hostname(inst.private_ipv4, inst.region),
            "instance-action": "none",
            "instance-id": inst.instance_id,
            "instance-life-cycle": inst.instance_lifecycle,
            "instance-type": inst.instance_type,
            "local-hostname": _local_hostname(inst.private_ipv4, inst.region),
            "local-ipv4": inst.private_ipv4,
            "placement/": {
                "availability-zone": inst.availability_zone or f"{inst.region}a",
                "region": inst.region,
            },
            "security-groups": "\n".join(inst.security_groups),
            "services/": {"domain": domain, "partition": partition},
        }
        if inst.public_ipv4:
            meta["public-hostname"] = _public_hostname(inst.public_ipv4, inst.region)
            meta["public-ipv4"] = inst.public_ipv4
        if inst.role_name:
            meta["iam/"] = {
                "info": lambda: self._iam_info(state),
                "security-credentials/": {inst.role_name: lambda: self._credentials_doc(state)},
            }
        if inst.tags is not None:
            visible = {
                k: v for k, v in inst.tags.items() if k and set(k) <= _TAG_KEY_CHARS and k != "."
            }
            meta["tags/"] = {"instance/": dict(sorted(visible.items()))}
        spot: _Tree = {}
        if state.spot_action is not None:
            action, when = state.spot_action
            if now >= when - SPOT_NOTICE_LEAD:
                spot["instance-action"] = json.dumps({"action": action, "time": _iso(when)})
                if action == "terminate":
                    spot["termination-time"] = _iso(when)
        if spot:
            meta["spot/"] = spot
        if state.rebalance_at is not None and now >= state.rebalance_at:
            meta["events/"]["recommendations/"] = {
                "rebalance": json.dumps({"noticeTime": _iso(state.rebalance_at)})
            }
        latest: _Tree = {
            "dynamic": {"instance-identity/": {"document": lambda: self._identity(inst)}},
            "meta-data": dict(sorted(meta.items())),
        }
        if inst.user_data is not None:
            latest["user-data"] = inst.user_data
        return {"latest": latest}

    def _identity(self, inst: EmulatedInstance) -> str:
        return _imds_json(
            {
                "accountId": inst.account_id,
                "architecture": inst.architecture,
                "availabilityZone": inst.availability_zone,
                "billingProducts": None,
                "devpayProductCodes": None,
                "marketplaceProductCodes": None,
                "imageId": inst.image_id,
                "instanceId": inst.instance_id,
                "instanceType": inst.instance_type,
                "kernelId": None,
                "pendingTime": _iso(inst.pending_time),
                "privateIp": inst.private_ipv4,
                "ramdiskId": None,
                "region": inst.region,
                "version": IDENTITY_DOCUMENT_VERSION,
            }
        )

    def _iam_info(self, state: _InstanceState) -> str:
        inst = state.instance
        arn = inst.instance_profile_arn or (
            f"arn:{_partition(inst.region)[0]}:iam::{inst.account_id}:instance-profile/"
            f"{inst.role_name}"
        )
        profile_id = inst.instance_profile_id or _derived_profile_id(arn)
        cached = state.cached_credentials
        updated = cached[2] if cached is not None else inst.pending_time
        return _imds_json(
            {
                "Code": "Success",
                "LastUpdated": _iso(updated),
                "InstanceProfileArn": arn,
                "InstanceProfileId": profile_id,
            }
        )

    def _credentials_doc(self, state: _InstanceState) -> str:
        inst = state.instance
        provider = inst.credentials
        if provider is None:
            return _assume_role_failure("no credential source configured for the emulated role")
        with state.credential_lock:
            cached = state.cached_credentials
            if (
                cached is None
                or cached[0] is not provider
                or cached[1].expiration - _now() < CREDENTIAL_REFRESH_MARGIN
            ):
                try:
                    fresh = provider()
                except Exception as exc:  # surfaced the way IMDS reports a failed AssumeRole
                    return _assume_role_failure(f"{type(exc).__name__}: {exc}")
                cached = (provider, fresh, _now())
                state.cached_credentials = cached
        _, creds, updated = cached
        return _imds_json(
            {
                "Code": "Success",
                "LastUpdated": _iso(updated),
                "Type": "AWS-HMAC",
                "AccessKeyId": creds.access_key_id,
                "SecretAccessKey": creds.secret_access_key,
                "Token": creds.token,
                "Expiration": _iso(creds.expiration),
            }
        )


def _assume_role_failure(message: str) -> str:
    # What IMDS serves when EC2 cannot assume the instance's role (botocore treats it as "none").
    return _imds_json(
        {"Code": "AssumeRoleUnauthorizedAccess", "Message": message, "LastUpdated": _iso(_now())}
    )


def _derived_profile_id(arn: str) -> str:
    # Instance profile ids are "AIPA" + 17 upper-case base32 characters; stable per ARN.
    return "AIPA" + base64.b32encode(hashlib.sha256(arn.encode()).digest()).decode()[:17]


def _raise_open_file_limit() -> None:
    # One socket per emulated instance: 1,000 instances need more than the common 1,024 default.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# --- Bridges to the local AWS -------------------------------------------------------------------


def role_credentials_from_local_aws(
    sts_client: Any, role_arn: str, session_name: str
) -> Callable[[], Credentials]:
    """A credential source that assumes `role_arn` on the local AWS, as EC2 does for a profile.

    With the emulator's IAM enforcement on, the credentials get exactly the role's permissions,
    and the AssumeRole is judged as EC2's (`ec2.amazonaws.com` must be let in by the role's trust
    policy; refused, IMDS serves `AssumeRoleUnauthorizedAccess` as EC2 does).
    """
    from annex_sandbox.authz.request import ACTING_SERVICE_HEADER

    def as_ec2(request: Any, **_: Any) -> None:
        request.headers[ACTING_SERVICE_HEADER] = "ec2.amazonaws.com"

    sts_client.meta.events.register(
        "before-sign.sts.AssumeRole", as_ec2, unique_id="annex-sandbox-imds-acting-service"
    )

    def fetch() -> Credentials:
        answer = sts_client.assume_role(RoleArn=role_arn, RoleSessionName=session_name[:64])
        creds = answer["Credentials"]
        expiration: datetime = creds["Expiration"]
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=timezone.utc)
        return Credentials(
            access_key_id=creds["AccessKeyId"],
            secret_access_key=creds["SecretAccessKey"],
            token=creds["SessionToken"],
            expiration=expiration,
        )

    return fetch


class LiveInstanceTags(dict):  # type: ignore[type-arg]
    """An instance's EC2 tags as instance metadata shows them: current, not a launch snapshot.

    "View tags for your EC2 instances in instance metadata" (Amazon EC2 User Guide): tags added
    or changed after launch appear in `tags/instance/` (Spot Fleet's `aws:ec2spot:fleet-request-id`
    arrives that way). Re-read through DescribeInstances at most once per `max_age` seconds.
    """

    def __init__(self, ec2_client: Any, instance_id: str, max_age: float = 0.5) -> None:
        super().__init__()
        self._ec2 = ec2_client
        self._instance_id = instance_id
        self._max_age = max_age
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._read_at < self._max_age:
                return
            described = self._ec2.describe_instances(InstanceIds=[self._instance_id])
            tags = described["Reservations"][0]["Instances"][0].get("Tags") or []
            super().clear()
            super().update({t["Key"]: t["Value"] for t in tags})
            self._read_at = time.monotonic()

    def items(self) -> Any:
        self._refresh()
        return super().items()

    def keys(self) -> Any:
        self._refresh()
        return super().keys()

    def __iter__(self) -> Any:
        self._refresh()
        return super().__iter__()

    def __getitem__(self, key: str) -> str:
        self._refresh()
        return str(super().__getitem__(key))

    def get(self, key: str, default: Any = None) -> Any:
        self._refresh()
        return super().get(key, default)


def instance_from_ec2(
    ec2_client: Any,
    iam_client: Any,
    instance_id: str,
    *,
    sts_client: Any,
    region: str,
    tags_in_metadata: Optional[bool] = None,
    public_ipv4: Union[str, EllipsisType, None] = ...,
) -> EmulatedInstance:
    """The emulated instance matching what DescribeInstances says about `instance_id`.

    Role and profile id come from GetInstanceProfile; credentials assume the role with the
    instance id as session name (as EC2 does). `tags_in_metadata=None` follows the instance's
    `MetadataOptions.InstanceMetadataTags`; `public_ipv4=...` takes the address EC2 reports.
    """
    reservations = ec2_client.describe_instances(InstanceIds=[instance_id])["Reservations"]
    reservation = reservations[0]
    described: dict[str, Any] = reservation["Instances"][0]
    profile_arn: Optional[str] = (described.get("IamInstanceProfile") or {}).get("Arn")
    role_name: Optional[str] = None
    role_arn: Optional[str] = None
    profile_id: Optional[str] = None
    if profile_arn:
        profile_name = profile_arn.rsplit("/", 1)[-1]
        profile = iam_client.get_instance_profile(InstanceProfileName=profile_name)
        profile_id = profile["InstanceProfile"]["InstanceProfileId"]
        roles = profile["InstanceProfile"]["Roles"]
        if roles:
            role_name = roles[0]["RoleName"]
            role_arn = roles[0]["Arn"]
    if tags_in_metadata is None:
        options = described.get("MetadataOptions") or {}
        tags_in_metadata = options.get("InstanceMetadataTags") == "enabled"
    address = described.get("PublicIpAddress") if public_ipv4 is ... else public_ipv4
    pending: datetime = described.get("LaunchTime") or _now()
    return EmulatedInstance(
        instance_id=instance_id,
        region=region,
        availability_zone=(described.get("Placement") or {}).get("AvailabilityZone"),
        account_id=reservation.get("OwnerId") or "123456789012",
        instance_type=described["InstanceType"],
        image_id=described["ImageId"],
        private_ipv4=described.get("PrivateIpAddress") or "10.0.0.10",
        public_ipv4=address,
        instance_profile_arn=profile_arn,
        role_name=role_name,
        tags=LiveInstanceTags(ec2_client, instance_id) if tags_in_metadata else None,
        credentials=(
            role_credentials_from_local_aws(sts_client, role_arn, instance_id) if role_arn else None
        ),
        instance_profile_id=profile_id,
        instance_lifecycle="spot" if described.get("InstanceLifecycle") == "spot" else "on-demand",
        architecture=described.get("Architecture") or "x86_64",
        security_groups=[g["GroupName"] for g in described.get("SecurityGroups") or []],
        pending_time=pending,
    )
