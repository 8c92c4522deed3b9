"""The local AWS: moto's server on loopback, with fidelity patches, a call log and throttling.

`LocalAws` runs moto's WSGI application in a thread of this process (what the tests use); the
same server runs as a process with `python -m annex_sandbox` (what the demo uses). A WSGI
middleware in front of moto records every call, applies throttles, and answers control requests
under `/_sandbox/` so that `SandboxControl` can drive a server in another process exactly as
`LocalAws` drives its own.

moto keeps its state in module globals: run one server per process.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Optional

import boto3
import botocore.loaders
import botocore.session

_log = logging.getLogger(__name__)

CONTROL_PREFIX = "/_sandbox/"
FAKE_ACCESS_KEY_ID = "AKIASANDBOXEXAMPLE00"
FAKE_SECRET_ACCESS_KEY = "sandbox-secret-access-key-not-a-secret"  # noqa: S105
DEFAULT_ACCOUNT_ID = "123456789012"
DEFAULT_FLEET_TAG_DELAY = 3.0

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class ApiCall:
    """One request the local AWS received (control requests excluded)."""

    service: str
    operation: str
    access_key_id: Optional[str]
    time: float
    throttled: bool = False


# --- Which call is this? -------------------------------------------------------------------------

_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/([^/]+)/aws4_request")
# SigV4 signing names that differ from botocore's service model names.
_MODEL_NAME_BY_SIGNING_NAME = {
    "monitoring": "cloudwatch",
    "email": "ses",
    "states": "stepfunctions",
    "execute-api": "apigateway",
}


def _credential_scope(
    environ: dict[str, Any], query: dict[str, list[str]]
) -> tuple[str | None, str | None]:
    """(access key id, signing service) from the SigV4 Authorization header or presigned query."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    match = _CREDENTIAL_RE.search(header)
    if match:
        return match.group(1), match.group(3)
    credential = query.get("X-Amz-Credential", [""])[0]
    parts = credential.split("/")
    if len(parts) == 5:
        return parts[0], parts[3]
    return None, None


@dataclass(frozen=True)
class _Route:
    operation: str
    method: str
    path: re.Pattern[str]
    query: tuple[tuple[str, Optional[str]], ...]
    headers: tuple[str, ...]
    literal_chars: int


@lru_cache(maxsize=64)
def _rest_routes(signing_name: str) -> tuple[str, tuple[_Route, ...]]:
    """The protocol and the HTTP routes of a service, from botocore's own service model.

    A route is method + URI template + what the request must carry: query keys written into
    the URI (`?acl`, `?list-type=2`) and the required members bound to the query string or a
    header (UploadPart's `uploadId`, CopyObject's `x-amz-copy-source`).
    """
    import botocore.session

    model_name = _MODEL_NAME_BY_SIGNING_NAME.get(signing_name, signing_name)
    try:
        model = botocore.session.get_session().get_service_model(model_name)
    except Exception:
        return "", ()
    routes = []
    for name in model.operation_names:
        operation = model.operation_model(name)
        http = operation.http
        uri, _, query = http.get("requestUri", "/").partition("?")
        pattern = re.sub(
            r"\\\{([^}]+)\\\}",
            lambda m: ".+" if m.group(1).endswith("+") else "[^/]+",
            re.escape(uri),
        )
        required_query = [
            (key, value or None)
            for key, _, value in (item.partition("=") for item in query.split("&") if item)
        ]
        required_headers = []
        shape = operation.input_shape
        for member in shape.required_members if shape is not None else []:
            location = shape.members[member].serialization.get("location")
            location_name = shape.members[member].serialization.get("name", member)
            if location == "querystring":
                required_query.append((location_name, None))
            elif location == "header":
                required_headers.append("HTTP_" + location_name.upper().replace("-", "_"))
        literal = len(re.sub(r"\{[^}]+\}", "", uri))
        routes.append(
            _Route(
                name,
                http.get("method", "POST"),
                re.compile(pattern + "/?"),
                tuple(required_query),
                tuple(required_headers),
                literal,
            )
        )
    return str(model.metadata.get("protocol", "")), tuple(routes)


def _rest_operation(
    signing_name: str, environ: dict[str, Any], query: dict[str, list[str]]
) -> str | None:
    method = environ.get("REQUEST_METHOD", "GET")
    path = environ.get("PATH_INFO", "/")
    routes = _rest_routes(signing_name)[1]
    x_id = query.get("x-id", [None])[0]  # botocore names some S3 operations itself
    if x_id and any(route.operation == x_id for route in routes):
        return x_id
    best: tuple[int, int, int, str] | None = None
    for route in routes:
        if route.method != method or not route.path.fullmatch(path):
            continue
        if any(
            key not in query or (value is not None and value not in query[key])
            for key, value in route.query
        ) or any(header not in environ for header in route.headers):
            continue
        # The most specific match wins; among equals the plainest name (ListBuckets, not
        # ListDirectoryBuckets).
        score = (
            len(route.query) + len(route.headers),
            route.literal_chars,
            -len(route.operation),
            route.operation,
        )
        if best is None or score > best:
            best = score
    return best[3] if best else None


def identify_call(environ: dict[str, Any]) -> tuple[str, str, str | None]:
    """(service, operation, access key id) of a request; reads and restores a form body."""
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    access_key, service = _credential_scope(environ, query)
    service = service or "unknown"
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return service, target.rsplit(".", 1)[-1], access_key
    action = query.get("Action", [None])[0]
    if action is None and environ.get("CONTENT_TYPE", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        action = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("Action", [None])[0]
    if action:
        return service, action, access_key
    operation = _rest_operation(service, environ, query)
    return (
        service,
        operation or f"{environ.get('REQUEST_METHOD', 'GET')} {environ.get('PATH_INFO', '/')}",
        access_key,
    )


# --- Throttling ----------------------------------------------------------------------------------


@dataclass
class TokenBucket:
    """`capacity` requests at once, refilled at `refill_per_second`."""

    capacity: float
    refill_per_second: float
    tokens: float = field(init=False)
    stamp: float = field(init=False, default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.capacity

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.refill_per_second)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def throttling_response(service: str, operation: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """The throttling error the real service answers with, in its own protocol's error format.

    EC2: "Request throttling for the Amazon EC2 API" (503 RequestLimitExceeded); S3: "Error
    responses" (503 SlowDown); IAM/STS/CloudFormation (query): 400 Throttling; Lambda: 429
    TooManyRequestsException; other JSON services: ThrottlingException.
    """
    request_id = str(uuid.uuid4())
    protocol = _rest_routes(service)[0]
    if protocol == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            "<Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>"
            f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
        )
        return "503 Service Unavailable", [("Content-Type", "text/xml")], body.encode()
    if service == "s3":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            "<Message>Please reduce your request rate.</Message>"
            f"<RequestId>{request_id}</RequestId></Error>"
        )
        return "503 Slow Down", [("Content-Type", "application/xml")], body.encode()
    if protocol in ("query", "rest-xml"):
        body = (
            "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>"
            f"<Message>Rate exceeded</Message></Error><RequestId>{request_id}</RequestId>"
            "</ErrorResponse>"
        )
        return "400 Bad Request", [("Content-Type", "text/xml")], body.encode()
    headers = [("x-amzn-RequestId", request_id)]
    if service == "lambda":
        code, status = "TooManyRequestsException", "429 Too Many Requests"
        payload: dict[str, str] = {
            "Type": "User",
            "message": "Rate exceeded",
            "Reason": "CallerRateLimitExceeded",
        }
    elif protocol == "rest-json":
        code, status = "ThrottlingException", "429 Too Many Requests"
        payload = {"message": "Rate exceeded"}
    else:
        code, status = "ThrottlingException", "400 Bad Request"
        payload = {"__type": code, "message": "Rate exceeded"}
    headers += [("x-amzn-ErrorType", code), ("Content-Type", "application/x-amz-json-1.1")]
    return status, headers, json.dumps(payload).encode()


# --- Shared state of one server ------------------------------------------------------------------


IAM_ENGINE_ENV = "ANNEX_SANDBOX_IAM_ENGINE"
"""Set to `0` to run the local AWS without the IAM engine (benchmarks measuring something else)."""


def iam_engine_default() -> bool:
    """The engine decides every request unless `ANNEX_SANDBOX_IAM_ENGINE=0`."""
    import os

    return os.environ.get(IAM_ENGINE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class SandboxState:
    """Call log, throttles, the IAM engine and the fleet tag delay of the running server."""

    def __init__(
        self,
        fleet_tag_delay: float = DEFAULT_FLEET_TAG_DELAY,
        *,
        iam_engine: Optional[bool] = None,
        account_id: str = DEFAULT_ACCOUNT_ID,
    ) -> None:
        from annex_sandbox.authz import Authorizer

        self.default_fleet_tag_delay = fleet_tag_delay
        self.iam_engine_default = iam_engine_default() if iam_engine is None else iam_engine
        self.iam_engine = self.iam_engine_default
        self.authorizer = Authorizer(account_id, frozenset({FAKE_ACCESS_KEY_ID}))
        self._lock = threading.Lock()
        self._calls: list[ApiCall] = []
        self._buckets: dict[tuple[str, Optional[str]], TokenBucket] = {}
        self.schedule_clock: Any = None
        """The `ScheduleClock` firing one-time schedules, once the server runs."""
        self.set_fleet_tag_delay(fleet_tag_delay)

    def record(self, service: str, operation: str, access_key_id: str | None) -> bool:
        """Log a call; False when a throttle refuses it."""
        with self._lock:
            allowed = True
            for key in ((service, operation), (service, None)):
                bucket = self._buckets.get(key)
                if bucket is not None and not bucket.take():
                    allowed = False
            self._calls.append(ApiCall(service, operation, access_key_id, time.time(), not allowed))
        return allowed

    def reset(self) -> None:
        from moto.moto_api._internal.models import moto_api_backend

        from annex_sandbox.patches.capacity import CAPACITY_ERRORS
        from annex_sandbox.patches.spot_fleet import FLEET_TAG_CLOCK

        FLEET_TAG_CLOCK.cancel_all()
        CAPACITY_ERRORS.clear()
        moto_api_backend.reset()
        if self.schedule_clock is not None:
            self.schedule_clock.reset()
        self.enforce_iam(self.iam_engine_default)
        self.authorizer.world.invalidate()
        self.authorizer.decisions.clear()
        self.authorizer.checks.clear()
        self.set_fleet_tag_delay(self.default_fleet_tag_delay)
        with self._lock:
            self._calls.clear()
            self._buckets.clear()

    def enforce_iam(self, enabled: bool = True) -> None:
        """The IAM engine decides every request from the next one on (or stops deciding).

        moto's own enforcement stays off: it checks resources only for S3 and ignores
        conditions; the engine (annex_sandbox/authz) evaluates what AWS evaluates.
        """
        self.iam_engine = enabled

    def set_fleet_tag_delay(self, seconds: float) -> None:
        from annex_sandbox.patches.spot_fleet import FLEET_TAG_CLOCK

        FLEET_TAG_CLOCK.delay = float(seconds)

    def throttle(
        self,
        service: str,
        operation: str | None = None,
        *,
        capacity: float,
        refill_per_second: float,
    ) -> None:
        with self._lock:
            self._buckets[(service, operation)] = TokenBucket(capacity, refill_per_second)

    def clear_throttles(self) -> None:
        with self._lock:
            self._buckets.clear()

    def inject_capacity_error(
        self,
        instance_type: str,
        availability_zone: str | None = None,
        *,
        code: str = "InsufficientInstanceCapacity",
    ) -> None:
        """Launches of `instance_type` (in `availability_zone`, or anywhere) fail with `code`."""
        from annex_sandbox.patches.capacity import CAPACITY_ERRORS, CapacityRule

        CAPACITY_ERRORS.add(CapacityRule(instance_type, availability_zone, code))

    def clear_capacity_errors(self) -> None:
        from annex_sandbox.patches.capacity import CAPACITY_ERRORS

        CAPACITY_ERRORS.clear()

    def calls(self, service: str | None = None, operation: str | None = None) -> list[ApiCall]:
        with self._lock:
            return [
                c
                for c in self._calls
                if (service is None or c.service == service)
                and (operation is None or c.operation == operation)
            ]

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def add_root_access_key(self, access_key_id: str) -> None:
        """Treat `access_key_id` as one of the account root's access keys (allowed everything).

        AWS accounts' root users may have access keys; tests that sign with a key of their own
        (keys read from files) register it here instead of creating an IAM user.
        """
        world = self.authorizer.world
        world.root_access_keys = world.root_access_keys | {access_key_id}
        world.invalidate()

    def authorize_schedule_target(
        self, region: str, schedule_arn: str, target: dict[str, Any]
    ) -> Optional[str]:
        """Why Scheduler may not invoke `target` as its `RoleArn` (None: it may, or the engine
        is off), decided by the IAM engine: the role's trust lets `scheduler.amazonaws.com`
        assume it, then `lambda:InvokeFunction` on the function."""
        from annex_sandbox.authz import Check

        if not self.iam_engine:
            return None
        role_arn = str(target.get("RoleArn") or "")
        if not role_arn:
            return "the target names no RoleArn for Scheduler to assume"
        # arn:<partition>:scheduler:<region>:<account>:schedule/<group>/<name>
        prefix, _, path = schedule_arn.partition(":schedule/")
        group = path.split("/", 1)[0]
        untrusted = self.authorizer.service_assumes_role(
            "scheduler:AssumeScheduleRole",
            "scheduler.amazonaws.com",
            role_arn,
            {
                "aws:SourceAccount": prefix.rsplit(":", 1)[-1],
                "aws:SourceArn": f"{prefix}:schedule-group/{group}",
            },
            region,
        )
        if untrusted:
            return (
                f"scheduler.amazonaws.com cannot assume {role_arn}: its trust policy does not "
                "allow it (" + "; ".join(r.describe() for r in untrusted) + ")"
            )
        function_arn = str(target["Arn"])
        refusals = self.authorizer.decide_as_role(
            "scheduler:InvokeTarget",
            role_arn,
            [Check("lambda:InvokeFunction", function_arn)],
            region,
        )
        if not refusals:
            return None
        return f"{role_arn} is not authorized to perform: " + "; ".join(
            r.describe() for r in refusals
        )

    def lambda_role_trust(self, role_arn: str, region: str) -> Optional[str]:
        """Why Lambda may not assume the execution role `role_arn` (None: it may, or the engine
        is off): the role's trust policy must let `lambda.amazonaws.com` in. No confused-deputy
        keys are sent: the Lambda guide documents none for the execution role."""
        if not self.iam_engine:
            return None
        if role_arn.split(":")[4:5] != [self.authorizer.world.account_id]:
            # The engine models the account the local AWS serves; a function another account
            # deploys (the two-account tests) is that account's own business.
            return None
        refusals = self.authorizer.service_assumes_role(
            "lambda:AssumeExecutionRole", "lambda.amazonaws.com", role_arn, {}, region
        )
        if not refusals:
            return None
        return "; ".join(r.describe() for r in refusals)

    def authz_report(self) -> dict[str, Any]:
        """What the IAM engine decided for callers other than the root, and what is unmapped."""
        authorizer = self.authorizer
        return {
            "decisions": [list(d) for d in authorizer.decisions],
            "unmapped": dict(authorizer.unmapped),
        }


class SandboxMiddleware:
    """WSGI middleware: control endpoints, call log and throttling in front of moto."""

    def __init__(self, app: WsgiApp, state: SandboxState, *, secure_transport: bool = True) -> None:
        """`secure_transport`: whether this listener stands in for AWS's TLS endpoints (the
        SDKs' default) or for its plain-HTTP ones (`aws:SecureTransport` false)."""
        self.app = app
        self.state = state
        self.secure_transport = secure_transport

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        from annex_sandbox.authz.request import SECURE_TRANSPORT_KEY

        environ[SECURE_TRANSPORT_KEY] = self.secure_transport
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL_PREFIX):
            return self._control(environ, start_response, path[len(CONTROL_PREFIX) :])
        if path.startswith("/moto-api"):
            return self.app(environ, start_response)
        service, operation, access_key = identify_call(environ)
        if not self.state.record(service, operation, access_key):
            status, headers, body = throttling_response(service, operation)
            start_response(status, [*headers, ("Content-Length", str(len(body)))])
            return [body]
        if self.state.iam_engine:
            protocol = _rest_routes(service)[0]
            try:
                refused = self.state.authorizer.authorize(environ, service, operation, protocol)
            except Exception as error:
                # Never let a request through undecided: answer 500 and say why.
                _log.exception("IAM engine failed on %s:%s", service, operation)
                reason = json.dumps({"error": f"IAM engine: {type(error).__name__}: {error}"})
                start_response("500 Internal Server Error", [("Content-Type", "application/json")])
                return [reason.encode()]
            if refused is not None:
                status, headers, body = refused
                start_response(status, [*headers, ("Content-Length", str(len(body)))])
                return [body]
        if service == "pricing":
            # moto has no Price List Query API: answered here from the fixture prices.
            from annex_sandbox.pricing import pricing_response

            length = int(environ.get("CONTENT_LENGTH") or 0)
            request_body = environ["wsgi.input"].read(length) if length else b""
            status, headers, body = pricing_response(operation, request_body)
            start_response(status, [*headers, ("Content-Length", str(len(body)))])
            return [body]
        return self.app(environ, start_response)

    def _control(
        self, environ: dict[str, Any], start_response: StartResponse, command: str
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        args: dict[str, Any] = (
            json.loads(environ["wsgi.input"].read(length) or b"{}") if length else {}
        )
        query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
        state = self.state
        result: Any = {"ok": True}
        try:
            if (method, command) == ("POST", "reset"):
                state.reset()
            elif (method, command) == ("POST", "iam"):
                state.enforce_iam(bool(args.get("enabled", True)))
            elif (method, command) == ("POST", "fleet-tag-delay"):
                state.set_fleet_tag_delay(float(args["seconds"]))
            elif (method, command) == ("POST", "throttles"):
                state.throttle(
                    args["service"],
                    args.get("operation"),
                    capacity=float(args["capacity"]),
                    refill_per_second=float(args["refill_per_second"]),
                )
            elif (method, command) == ("DELETE", "throttles"):
                state.clear_throttles()
            elif (method, command) == ("POST", "capacity-errors"):
                state.inject_capacity_error(
                    args["instance_type"],
                    args.get("availability_zone"),
                    code=args.get("code", "InsufficientInstanceCapacity"),
                )
            elif (method, command) == ("DELETE", "capacity-errors"):
                state.clear_capacity_errors()
            elif (method, command) == ("GET", "calls"):
                result = [
                    asdict(c) for c in state.calls(query.get("service"), query.get("operation"))
                ]
            elif (method, command) == ("DELETE", "calls"):
                state.clear_calls()
            elif (method, command) == ("GET", "authz"):
                result = state.authz_report()
            else:
                start_response("404 Not Found", [("Content-Type", "application/json")])
                return [json.dumps({"error": f"no control operation {method} {command}"}).encode()]
        except (KeyError, TypeError, ValueError) as error:
            start_response("400 Bad Request", [("Content-Type", "application/json")])
            return [json.dumps({"error": str(error)}).encode()]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(result).encode()]


# --- The server ----------------------------------------------------------------------------------


class LocalAws:
    """moto's server on loopback with the project's fidelity patches, in a thread of this process."""

    def __init__(
        self,
        *,
        region: str = "us-east-1",
        host: str = "127.0.0.1",
        port: int = 0,
        fleet_tag_delay: float = DEFAULT_FLEET_TAG_DELAY,
        iam_engine: Optional[bool] = None,
    ) -> None:
        """`iam_engine`: None follows `ANNEX_SANDBOX_IAM_ENGINE` (on unless it is `0`)."""
        self.region = region
        self.host = host
        self.port = port
        self.account_id = DEFAULT_ACCOUNT_ID
        self.state = SandboxState(fleet_tag_delay, iam_engine=iam_engine)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._moto_app: Any = None
        self._plain_http: Optional[tuple[Any, threading.Thread]] = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalAws:
        """Apply the patches, bind the port, serve in a daemon thread."""
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        from annex_sandbox import lambda_runtime
        from annex_sandbox.patches import apply_all
        from annex_sandbox.schedule_clock import ScheduleClock

        apply_all()
        self._moto_app = DomainDispatcherApplication(create_backend_app)
        app = SandboxMiddleware(self._moto_app, self.state)
        self._server = make_server(
            self.host, self.port, app, threaded=True, request_handler=_quiet_handler()
        )
        self.port = int(self._server.server_address[1])
        self.state.set_fleet_tag_delay(self.state.default_fleet_tag_delay)
        # Lambda Invoke runs Python handlers; their own AWS calls come back here.
        lambda_runtime.install(self.endpoint_url, self.state.lambda_role_trust)
        self.state.schedule_clock = ScheduleClock(
            authorize=self.state.authorize_schedule_target
        ).start()
        if self.state.iam_engine_default:
            threading.Thread(
                target=self.state.authorizer.engine.warm, name="iam-engine-start", daemon=True
            ).start()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="local-aws", daemon=True
        )
        self._thread.start()
        return self

    @property
    def plain_http_endpoint_url(self) -> str:
        """A second loopback listener onto the same local AWS, standing in for AWS's plain-HTTP
        endpoints: its requests carry `aws:SecureTransport` false (authz/request.py). Started on
        first use; the main endpoint stands in for the TLS endpoints every AWS client uses."""
        from werkzeug.serving import make_server

        if self._moto_app is None:
            raise RuntimeError("start the local AWS first")
        if self._plain_http is None:
            app = SandboxMiddleware(self._moto_app, self.state, secure_transport=False)
            server = make_server(self.host, 0, app, threaded=True, request_handler=_quiet_handler())
            thread = threading.Thread(
                target=server.serve_forever, name="local-aws-plain-http", daemon=True
            )
            thread.start()
            self._plain_http = (server, thread)
        return f"http://{self.host}:{int(self._plain_http[0].server_address[1])}"

    def stop(self) -> None:
        from annex_sandbox.patches.spot_fleet import FLEET_TAG_CLOCK

        FLEET_TAG_CLOCK.cancel_all()
        if self._plain_http is not None:
            server, thread = self._plain_http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._plain_http = None
        if self.state.schedule_clock is not None:
            self.state.schedule_clock.stop()
            self.state.schedule_clock = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.state.authorizer.close()

    def __enter__(self) -> LocalAws:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment for SDKs and the CDK CLI: endpoint, region, fake credentials."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
        }

    def session(self, **kw: Any) -> boto3.Session:
        """A boto3 session with the fake credentials and region (override with keywords).

        Sessions share one botocore data loader, so making clients costs milliseconds instead of
        re-reading the service models every time.
        """
        options: dict[str, Any] = {
            "aws_access_key_id": FAKE_ACCESS_KEY_ID,
            "aws_secret_access_key": FAKE_SECRET_ACCESS_KEY,
            "region_name": self.region,
            **kw,
        }
        if "botocore_session" not in options and "profile_name" not in options:
            core = botocore.session.get_session()
            core.register_component("data_loader", _shared_loader())
            options["botocore_session"] = core
        return boto3.Session(**options)

    def client(self, service: str, **kw: Any) -> Any:
        """A client for `service` bound to this server (keywords go to `Session.client`)."""
        session_keys = (
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
            "region_name",
        )
        session = self.session(**{k: kw.pop(k) for k in session_keys if k in kw})
        kw.setdefault("endpoint_url", self.endpoint_url)
        return session.client(service, **kw)

    # Control: direct access to this process's state.
    def reset(self) -> None:
        self.state.reset()

    def set_fleet_tag_delay(self, seconds: float) -> None:
        self.state.set_fleet_tag_delay(seconds)

    def fire_fleet_tags(self) -> int:
        """Let Spot Fleet tag every instance still waiting for its fleet tag, now."""
        from annex_sandbox.patches.spot_fleet import FLEET_TAG_CLOCK

        return FLEET_TAG_CLOCK.fire_pending()

    def enforce_iam(self, enabled: bool = True) -> None:
        self.state.enforce_iam(enabled)

    def add_root_access_key(self, access_key_id: str) -> None:
        self.state.add_root_access_key(access_key_id)

    def throttle(
        self,
        service: str,
        operation: str | None = None,
        *,
        capacity: float,
        refill_per_second: float,
    ) -> None:
        self.state.throttle(
            service, operation, capacity=capacity, refill_per_second=refill_per_second
        )

    def clear_throttles(self) -> None:
        self.state.clear_throttles()

    def inject_capacity_error(
        self,
        instance_type: str,
        availability_zone: str | None = None,
        *,
        code: str = "InsufficientInstanceCapacity",
    ) -> None:
        self.state.inject_capacity_error(instance_type, availability_zone, code=code)

    def clear_capacity_errors(self) -> None:
        self.state.clear_capacity_errors()

    def calls(self, service: str | None = None, operation: str | None = None) -> list[ApiCall]:
        return self.state.calls(service, operation)

    def clear_calls(self) -> None:
        self.state.clear_calls()


@lru_cache(maxsize=1)
def _shared_loader() -> botocore.loaders.Loader:
    """One botocore data loader (it caches the parsed service models) for every session made here."""
    return botocore.loaders.create_loader()


def _quiet_handler() -> type:
    """moto's request handler without werkzeug's one-line-per-request log."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    class QuietHandler(MotoRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    return QuietHandler


class SandboxControl:
    """Drive a local AWS running in another process (`python -m annex_sandbox`)."""

    def __init__(self, endpoint_url: str) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")

    def _call(
        self, method: str, command: str, body: dict[str, Any] | None = None, query: str = ""
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 (the local AWS on loopback)
            f"{self.endpoint_url}{CONTROL_PREFIX}{command}{query}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read())

    def reset(self) -> None:
        self._call("POST", "reset", {})

    def set_fleet_tag_delay(self, seconds: float) -> None:
        self._call("POST", "fleet-tag-delay", {"seconds": seconds})

    def enforce_iam(self, enabled: bool = True) -> None:
        self._call("POST", "iam", {"enabled": enabled})

    def throttle(
        self,
        service: str,
        operation: str | None = None,
        *,
        capacity: float,
        refill_per_second: float,
    ) -> None:
        self._call(
            "POST",
            "throttles",
            {
                "service": service,
                "operation": operation,
                "capacity": capacity,
                "refill_per_second": refill_per_second,
            },
        )

    def clear_throttles(self) -> None:
        self._call("DELETE", "throttles")

    def inject_capacity_error(
        self,
        instance_type: str,
        availability_zone: str | None = None,
        *,
        code: str = "InsufficientInstanceCapacity",
    ) -> None:
        self._call(
            "POST",
            "capacity-errors",
            {"instance_type": instance_type, "availability_zone": availability_zone, "code": code},
        )

    def clear_capacity_errors(self) -> None:
        self._call("DELETE", "capacity-errors")

    def calls(self, service: str | None = None, operation: str | None = None) -> list[ApiCall]:
        params = {
            k: v for k, v in (("service", service), ("operation", operation)) if v is not None
        }
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return [ApiCall(**c) for c in self._call("GET", "calls", query=query)]

    def clear_calls(self) -> None:
        self._call("DELETE", "calls")

    def authz_report(self) -> dict[str, Any]:
        """`SandboxState.authz_report` of the server: the IAM engine's decisions for callers
        other than the root, and the operations it found no mapping for."""
        report: dict[str, Any] = self._call("GET", "authz")
        return report
