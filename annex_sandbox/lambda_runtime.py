"""Fidelity fix: Lambda `Invoke` runs Python functions for real, without Docker.

moto runs Lambda code only inside Docker, which this machine does not have; without it `Invoke`
answers with an error or a canned string. AWS runs the function's deployment package with its
handler, its environment variables and its execution role's credentials ("Lambda execution
environment", "Defining Lambda function permissions with an execution role"). This patch does the
same in a child process: it unpacks the function's zip once, imports `Handler`, feeds it the event
on stdin and returns what the handler returned, or the error payload AWS uses
(`errorMessage`/`errorType`, with `X-Amz-Function-Error: Unhandled`).

Only Python runtimes are supported; the product's functions are all Python.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

_RUNNER = r"""
import importlib, json, sys, time, traceback
module_name, _, function_name = sys.argv[1].rpartition(".")
event = json.loads(sys.stdin.read() or "{}")
class Context:
    function_name = sys.argv[2]
    aws_request_id = sys.argv[3]
    memory_limit_in_mb = sys.argv[4]
    _deadline = time.monotonic() + float(sys.argv[5])
    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))
try:
    handler = getattr(importlib.import_module(module_name), function_name)
    result = handler(event, Context())
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.exit(0)
except Exception as exc:
    traceback.print_exc()
    payload = {"errorMessage": str(exc), "errorType": type(exc).__name__}
    sys.stdout.write("\n" + json.dumps(payload) + "\n")
    sys.exit(1)
"""

_unpack_lock = threading.Lock()
_installed_endpoint: list[str] = []

RoleTrust = Callable[[str, str], Optional[str]]
"""`(execution role ARN, region)` → why Lambda may not assume the role, or None."""

CANNOT_ASSUME = "The role defined for the function cannot be assumed by Lambda."
_installed_trust: list[Optional[RoleTrust]] = [None]


def _code_dir(code_bytes: bytes, cache_root: Path) -> Path:
    digest = hashlib.sha256(code_bytes).hexdigest()[:20]
    target = cache_root / digest
    with _unpack_lock:
        if not target.exists():
            staging = Path(tempfile.mkdtemp(dir=cache_root))
            with zipfile.ZipFile(io.BytesIO(code_bytes)) as archive:
                archive.extractall(staging)
            staging.rename(target)
    return target


def _role_credentials(fn: Any) -> dict[str, str]:
    """Credentials of the function's execution role, minted by the emulator's own STS."""
    from moto.sts.models import sts_backends

    sts = sts_backends[fn.account_id]["global"]
    role = sts.assume_role(
        region_name=fn.region,
        role_session_name=fn.function_name[:64],
        role_arn=fn.role,
        policy="",
        duration=900,
        external_id="",
    )
    return {
        "AWS_ACCESS_KEY_ID": role.access_key_id,
        "AWS_SECRET_ACCESS_KEY": role.secret_access_key,
        "AWS_SESSION_TOKEN": role.session_token,
    }


def _invoke_in_subprocess(fn: Any, event: Any, endpoint_url: str) -> tuple[str, bool, str]:
    cache_root = Path(tempfile.gettempdir()) / "condor-annex-lambda-code"
    cache_root.mkdir(exist_ok=True)
    if not str(fn.run_time or "").startswith("python"):
        return json.dumps({"errorMessage": f"runtime {fn.run_time} not emulated"}), True, ""
    code_dir = _code_dir(fn.code_bytes, cache_root)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(code_dir),
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_REGION": fn.region,
        "AWS_DEFAULT_REGION": fn.region,
        "AWS_LAMBDA_FUNCTION_NAME": fn.function_name,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{fn.run_time}",
        **_role_credentials(fn),
        **{str(k): str(v) for k, v in (fn.environment_vars or {}).items()},
    }
    timeout = float(fn.timeout or 3)
    request_id = hashlib.sha1(os.urandom(8)).hexdigest()  # noqa: S324 - an id, not security
    payload = event if isinstance(event, str) else json.dumps(event)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                _RUNNER,
                fn.handler,
                fn.function_name,
                request_id,
                str(fn.memory_size),
                str(timeout),
            ],
            input=payload,
            capture_output=True,
            text=True,
            cwd=code_dir,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        message = f"Task timed out after {timeout:.2f} seconds"
        return json.dumps({"errorMessage": message, "errorType": "Sandbox.Timedout"}), True, ""
    lines = done.stdout.rstrip("\n").splitlines()
    result = lines[-1] if lines else "null"
    logs = "\n".join(lines[:-1]) + done.stderr
    fn.logs_backend.ensure_log_group(fn.logs_group_name)
    fn.save_logs(logs)
    return result, done.returncode != 0, logs


def install(endpoint_url: str, role_trust: Optional[RoleTrust] = None) -> None:
    """Make every moto Lambda function invoke its Python handler in a child process.

    `endpoint_url` is where the function's own AWS calls go (the local AWS itself).
    `role_trust` decides whether Lambda (`lambda.amazonaws.com`) may assume an execution role
    (the IAM engine: the role's trust policy). CreateFunction and an UpdateFunctionConfiguration
    naming a new role refuse a role Lambda cannot assume with InvalidParameterValueException
    "The role defined for the function cannot be assumed by Lambda." (the Lambda API's answer);
    an invocation whose role's trust has since changed fails the same way and the handler does
    not run.
    """
    from moto.awslambda.models import LambdaBackend, LambdaFunction

    _installed_trust[0] = role_trust
    if _installed_endpoint:
        _installed_endpoint[0] = endpoint_url
        return
    _installed_endpoint.append(endpoint_url)

    def _invoke_lambda(self: Any, event: Any = None) -> tuple[str, bool, str]:
        _refuse_untrusted_role(str(self.role), str(self.region))
        return _invoke_in_subprocess(
            self, event if event is not None else {}, _installed_endpoint[0]
        )

    original_create: Callable[..., Any] = LambdaBackend.create_function
    original_update: Callable[..., Any] = LambdaBackend.update_function_configuration

    def create_function(self: LambdaBackend, spec: dict[str, Any]) -> Any:
        if spec.get("Role"):
            _refuse_untrusted_role(str(spec["Role"]), self.region_name)
        return original_create(self, spec)

    def update_function_configuration(
        self: LambdaBackend, function_name: str, qualifier: str, body: dict[str, Any]
    ) -> Any:
        if body.get("Role"):
            _refuse_untrusted_role(str(body["Role"]), self.region_name)
        return original_update(self, function_name, qualifier, body)

    LambdaFunction._invoke_lambda = _invoke_lambda  # type: ignore[method-assign]
    LambdaBackend.create_function = create_function  # type: ignore[method-assign]
    LambdaBackend.update_function_configuration = update_function_configuration  # type: ignore[method-assign]


def _refuse_untrusted_role(role_arn: str, region: str) -> None:
    from moto.awslambda.exceptions import InvalidParameterValueException

    trust = _installed_trust[0]
    refused = trust(role_arn, region) if trust is not None else None
    if refused is not None:
        raise InvalidParameterValueException(f"{CANNOT_ASSUME} ({refused})")
