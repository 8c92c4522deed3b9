"""A real IAM policy engine deciding every request the local AWS receives.

`Authorizer.authorize(environ, service, operation)` resolves the caller from the signature's
access key (IAM user key, assumed-role session — the instance-profile credentials the IMDS
emulator hands out and the Lambda functions' role credentials — or the sandbox's account root),
turns the request into the IAM authorizations AWS makes for it (`mapping.MAPPINGS`), has
`@cloud-copilot/iam-simulate` decide each against the caller's identity policies as deployed and
the resource's policy, and answers a denial the way the service does. The account root (the
sandbox's own credentials) is allowed everything, as in AWS; an operation with no mapping is
denied to everyone else with an "unmapped" error, never silently allowed.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from annex_sandbox.authz.engine import ALLOWED, EngineUnavailable, PolicyEngine
from annex_sandbox.authz.mapping import (
    MAPPINGS,
    Check,
    checks_for,
    is_mapped,
    service_assumes_role,
)
from annex_sandbox.authz.request import ACTING_SERVICE_HEADER, AwsRequest, parse_request
from annex_sandbox.authz.world import Caller, CallerUnknown, World

__all__ = [
    "MAPPINGS",
    "SERVED_LOG_ENV",
    "Authorizer",
    "Check",
    "Decision",
    "EngineUnavailable",
    "Refusal",
]

DECISION_LOG_ENV = "ANNEX_SANDBOX_AUTHZ_LOG"
"""A file to append every decision for a non-root caller (and every unmapped call) to."""

SERVED_LOG_ENV = "ANNEX_SANDBOX_SERVED_LOG"
"""A file to append each `[service:operation, caller kind]` the local AWS served to, once per
server; the coverage check reads it at the end of a test session (every server, every process)."""

_READ_PREFIXES = ("Get", "List", "Describe", "Head", "Simulate", "Generate")


@dataclass(frozen=True)
class Refusal:
    """One check the engine did not allow."""

    check: Check
    principal: str
    decision: str
    error: str = ""

    def describe(self) -> str:
        return f"{self.check.action} on {self.check.resource} ({self.decision})"


@dataclass
class Decision:
    """The engine's answer for one request."""

    allowed: bool
    caller: Optional[Caller] = None
    checks: list[Check] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    unmapped: bool = False
    unknown_caller: str = ""


class Authorizer:
    """Decides requests with the policy engine; records each decision for tests and docs."""

    def __init__(self, account_id: str, root_access_keys: frozenset[str]) -> None:
        self.world = World(account_id, root_access_keys)
        self.engine = PolicyEngine()
        self._lock = threading.Lock()
        self.decisions: list[tuple[str, str, str, bool, list[str]]] = []
        """(service:operation, caller ARN, kind, allowed, refused checks) of every non-root call."""
        self.unmapped: Counter[str] = Counter()
        """Operations without a mapping (any caller), with how often they were called."""
        self.checks: list[tuple[str, str, str, bool]] = []
        """(principal ARN, action, resource, allowed) of every check evaluated — the principal
        is the role acting for the caller where AWS acts on its behalf (the Spot Fleet role)."""
        self.served: set[tuple[str, str]] = set()
        """(service:operation, caller kind) of every request decided since the server started;
        unlike `decisions`, kept across resets (the coverage check's input)."""
        self.authorized: set[tuple[str, str]] = set()
        """(service:operation, action) of every check built since the server started."""

    def close(self) -> None:
        self.engine.close()

    def note_write(self, service: str, operation: str) -> None:
        """Drop cached policies when IAM or CloudFormation may have changed them."""
        if service in ("iam", "cloudformation", "sts") and not operation.startswith(_READ_PREFIXES):
            self.world.invalidate()

    def decide(self, req: AwsRequest) -> Decision:
        try:
            caller = self.world.caller(req.access_key_id, req.session_token)
        except CallerUnknown as unknown:
            return Decision(False, unknown_caller=unknown.reason)
        self._note_served(req, caller)
        if caller.is_root:
            acting = req.headers.get(ACTING_SERVICE_HEADER)
            if acting and (req.service, req.operation) == ("sts", "AssumeRole"):
                # An emulator assuming a role for a service (IMDS for EC2): the trust decides.
                refusals = self.service_assumes_role(
                    f"{acting}:AssumeRole", acting, str(req.param("RoleArn", "")), {}, req.region
                )
                if refusals:
                    return Decision(False, caller, [r.check for r in refusals], refusals)
            # AWS allows the root everything: no checks to build, only unmapped calls to note.
            if not is_mapped(req):
                self._note_unmapped(req, caller)
            return Decision(True, caller)
        checks = checks_for(req, self.world, caller)
        if checks is not None:
            self._note_authorized(req, checks)
        if checks is None:
            self._note_unmapped(req, caller)
            self._record(req, caller, False, ["unmapped"])
            return Decision(False, caller, unmapped=True)
        refusals = self.evaluate(caller, checks, req.region, secure_transport=req.secure_transport)
        self._record(req, caller, not refusals, [r.describe() for r in refusals])
        return Decision(not refusals, caller, checks, refusals)

    def decide_as_role(
        self, operation: str, role_arn: str, checks: list[Check], region: str
    ) -> list[Refusal]:
        """Refusals of what a service does on its own with a role it was given (Scheduler
        invoking a schedule's target with the target's `RoleArn`); recorded like a request of
        that role. A role that does not exist cannot be assumed: everything is refused."""
        name = role_arn.rsplit("/", 1)[-1]
        caller = Caller("service-role", role_arn, self.world.account_id, name, role_arn)
        role_checks = [replace(check, as_role=role_arn) for check in checks]
        if self.world.role_exists(role_arn):
            refusals = self.evaluate(caller, role_checks, region)
        else:
            refusals = [
                Refusal(c, role_arn, "Error", "the role does not exist") for c in role_checks
            ]
        self._record_entry(
            (operation, role_arn, caller.kind, not refusals, [r.describe() for r in refusals])
        )
        return refusals

    def service_assumes_role(
        self, operation: str, service: str, role_arn: str, context: dict[str, Any], region: str
    ) -> list[Refusal]:
        """Refusals of `service` assuming `role_arn` (the role's trust policy, with the
        `context` the service sends), recorded like a request of the service. A role that does
        not exist has no trust policy: nothing lets the service in."""
        check = service_assumes_role(self.world, service, role_arn, context)
        caller = Caller("service", service, self.world.account_id, service)
        refusals = self.evaluate(caller, [check], region)
        self._record_entry(
            (operation, service, caller.kind, not refusals, [r.describe() for r in refusals])
        )
        return refusals

    def _note_served(self, req: AwsRequest, caller: Caller) -> None:
        entry = (f"{req.service}:{req.operation}", caller.kind)
        with self._lock:
            if entry in self.served:
                return
            self.served.add(entry)
            path = os.environ.get(SERVED_LOG_ENV)
            if path:
                with open(path, "a") as log:
                    log.write(json.dumps(list(entry)) + "\n")

    def _note_authorized(self, req: AwsRequest, checks: list[Check]) -> None:
        """Log each action an operation's checks carry, once per server: the coverage check
        holds every one to the operation's row (`Mapping.also`)."""
        operation = f"{req.service}:{req.operation}"
        with self._lock:
            new = {(operation, c.action) for c in checks} - self.authorized
            self.authorized |= new
            path = os.environ.get(SERVED_LOG_ENV)
            if new and path:
                with open(path, "a") as log:
                    for op, action in sorted(new):
                        log.write(json.dumps({"operation": op, "authorizes": action}) + "\n")

    def _note_unmapped(self, req: AwsRequest, caller: Caller) -> None:
        operation = f"{req.service}:{req.operation}"
        with self._lock:
            self.unmapped[operation] += 1
            if caller.is_root:
                self._log([operation, caller.arn, caller.kind, True, ["unmapped"]])

    def _record(self, req: AwsRequest, caller: Caller, allowed: bool, refused: list[str]) -> None:
        self._record_entry(
            (f"{req.service}:{req.operation}", caller.arn, caller.kind, allowed, refused)
        )

    def _record_entry(self, entry: tuple[str, str, str, bool, list[str]]) -> None:
        with self._lock:
            self.decisions.append(entry)
            self._log(list(entry))

    @staticmethod
    def _log(entry: list[Any]) -> None:
        path = os.environ.get(DECISION_LOG_ENV)
        if path:
            with open(path, "a") as log:
                log.write(json.dumps(entry) + "\n")

    def evaluate(
        self, caller: Caller, checks: list[Check], region: str, *, secure_transport: bool = True
    ) -> list[Refusal]:
        """The checks the engine does not allow for `caller` (roles in `as_role` act for it).

        `secure_transport`: whether the request came over TLS (what a service does on its own
        with a role it assumed always does)."""
        simulations = []
        principals = []
        for check in checks:
            if check.as_service:
                principal = check.as_service
                policies = []
            elif check.as_role:
                role = self.world.role_by_arn(check.as_role)
                principal = str(role.arn)
                policies = self.world.role_policies(role.name)
            else:
                principal = caller.arn
                policies = self.world.identity_policies(caller)
            principals.append(principal)
            simulations.append(
                self._simulation(principal, policies, check, region, secure_transport)
            )
        results = self.engine.decide(simulations)
        with self._lock:
            self.checks += [
                (principal, check.action, check.resource, result["decision"] == ALLOWED)
                for check, principal, result in zip(checks, principals, results)
            ]
        return [
            Refusal(check, principal, result["decision"], result.get("error", ""))
            for check, principal, result in zip(checks, principals, results)
            if result["decision"] != ALLOWED
        ]

    def _simulation(
        self,
        principal: str,
        policies: list[dict[str, Any]],
        check: Check,
        region: str,
        secure_transport: bool,
    ) -> dict[str, Any]:
        account = self.world.account_id
        # A service principal has no ARN or account; AWS names the service instead.
        principal_context = (
            {"aws:PrincipalArn": principal, "aws:PrincipalAccount": account}
            if principal.startswith("arn:")
            else {"aws:PrincipalServiceName": principal, "aws:PrincipalIsAWSService": "true"}
        )
        context: dict[str, Any] = {
            **principal_context,
            "aws:ResourceAccount": account,
            # The loopback endpoint stands in for AWS's TLS endpoints (authz/request.py,
            # SECURE_TRANSPORT_KEY); its plain-HTTP listener for AWS's unencrypted ones.
            "aws:SecureTransport": "true" if secure_transport else "false",
            "aws:RequestedRegion": region,
            **{k: v if isinstance(v, list) else str(v) for k, v in check.context.items()},
        }
        simulation: dict[str, Any] = {
            "request": {
                "principal": principal,
                "action": check.action,
                "resource": {"resource": check.resource, "accountId": account},
                "contextVariables": context,
            },
            "identityPolicies": policies,
            "serviceControlPolicies": [],
            "resourceControlPolicies": [],
        }
        if check.resource_policy is not None:
            simulation["resourcePolicy"] = check.resource_policy
        if check.resource_type is not None:
            simulation["resourceType"] = check.resource_type
        return simulation

    # --- the request path -------------------------------------------------------------------

    def authorize(
        self, environ: dict[str, Any], service: str, operation: str, protocol: str
    ) -> Optional[tuple[str, list[tuple[str, str]], bytes]]:
        """None to let the request through, else the (status, headers, body) of the denial."""
        req = parse_request(environ, service, operation, protocol)
        decision = self.decide(req)
        self.note_write(service, operation)
        if decision.allowed:
            if protocol == "ec2" and req.flag("DryRun"):
                return ec2_error(
                    "412 Precondition Failed",
                    "DryRunOperation",
                    "Request would have succeeded, but DryRun flag is set.",
                )
            return None
        return denial(req, protocol, decision)


# --- Denials in each service's own words ----------------------------------------------------------


def _message(req: AwsRequest, decision: Decision) -> tuple[str, Optional[Refusal]]:
    caller = decision.caller.arn if decision.caller else "anonymous"
    if decision.unmapped:
        return (
            f"User: {caller} is not authorized to perform: {req.service}:{req.operation} "
            f"because the local AWS has no IAM mapping for it (unmapped operation; add one to "
            f"annex_sandbox/authz/mapping.py)",
            None,
        )
    first = decision.refusals[0]
    why = {
        "ExplicitlyDenied": "with an explicit deny in a policy",
        "Error": f"because the IAM engine could not evaluate it ({first.error})",
    }.get(
        first.decision, f"because no identity-based policy allows the {first.check.action} action"
    )
    acting = "" if first.principal == caller else f" (acting as {first.principal})"
    return (
        f"User: {caller}{acting} is not authorized to perform: {first.check.action} on "
        f"resource: {first.check.resource} {why}",
        first,
    )


def encoded_failure(decision: Decision) -> str:
    """What `sts:DecodeAuthorizationMessage` would reveal: the refused checks."""
    payload = {
        "allowed": False,
        "explicitDeny": any(r.decision == "ExplicitlyDenied" for r in decision.refusals),
        "unmapped": decision.unmapped,
        "refused": [
            {
                "action": r.check.action,
                "resource": r.check.resource,
                "principal": r.principal,
                "decision": r.decision,
                "context": r.check.context,
            }
            for r in decision.refusals
        ],
    }
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def ec2_error(status: str, code: str, message: str) -> tuple[str, list[tuple[str, str]], bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{_xml(message)}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    )
    return status, [("Content-Type", "text/xml")], body.encode()


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def denial(
    req: AwsRequest, protocol: str, decision: Decision
) -> tuple[str, list[tuple[str, str]], bytes]:
    """The error the service answers an unauthorized (or unauthenticated) caller with."""
    request_id = str(uuid.uuid4())
    if decision.unknown_caller:
        return _unknown_caller(req, protocol, decision.unknown_caller, request_id)
    message, _ = _message(req, decision)
    if protocol == "ec2":
        return ec2_error(
            "403 Forbidden",
            "UnauthorizedOperation",
            f"You are not authorized to perform this operation. {message}. "
            f"Encoded authorization failure message: {encoded_failure(decision)}",
        )
    if req.service == "s3":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
            f"<Message>{_xml(message)}</Message><RequestId>{request_id}</RequestId></Error>"
        )
        return "403 Forbidden", [("Content-Type", "application/xml")], body.encode()
    if protocol == "query":
        body = (
            "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"
            f"<Message>{_xml(message)}</Message></Error><RequestId>{request_id}</RequestId>"
            "</ErrorResponse>"
        )
        return "403 Forbidden", [("Content-Type", "text/xml")], body.encode()
    code = "AccessDeniedException"
    headers = [
        ("x-amzn-RequestId", request_id),
        ("x-amzn-ErrorType", code),
        ("Content-Type", "application/json"),
    ]
    payload: dict[str, str] = {"Message": message, "message": message}
    if req.service == "lambda":
        payload["Type"] = "User"
    if protocol == "json":
        payload["__type"] = code
        return "400 Bad Request", headers, json.dumps(payload).encode()
    return "403 Forbidden", headers, json.dumps(payload).encode()


def _unknown_caller(
    req: AwsRequest, protocol: str, reason: str, request_id: str
) -> tuple[str, list[tuple[str, str]], bytes]:
    if reason == "MissingAuthenticationToken":
        code, message = "MissingAuthenticationToken", "Request is missing Authentication Token"
    elif req.service == "s3":
        code = "InvalidAccessKeyId" if reason == "InvalidId" else "InvalidToken"
        message = (
            "The AWS Access Key Id you provided does not exist in our records."
            if reason == "InvalidId"
            else "The provided token is malformed or otherwise invalid."
        )
    elif protocol == "ec2":
        code, message = (
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
        )
    else:
        code = "InvalidClientTokenId"
        message = "The security token included in the request is invalid."
    if protocol == "ec2":
        return ec2_error("401 Unauthorized", code, message)
    if req.service == "s3":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            f"<Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>{request_id}</RequestId></Error>"
        )
        return "403 Forbidden", [("Content-Type", "application/xml")], body.encode()
    if protocol == "query":
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
            f"<Message>{message}</Message></Error><RequestId>{request_id}</RequestId>"
            "</ErrorResponse>"
        )
        return "403 Forbidden", [("Content-Type", "text/xml")], body.encode()
    headers = [
        ("x-amzn-RequestId", request_id),
        ("x-amzn-ErrorType", code),
        ("Content-Type", "application/json"),
    ]
    return "403 Forbidden", headers, json.dumps({"__type": code, "message": message}).encode()
