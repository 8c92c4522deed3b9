"""Evaluate policy documents with the local AWS's IAM engine, outside any request.

The judge is the same engine the local AWS uses for every request (`@cloud-copilot/iam-simulate`
over the Service Authorization Reference, annex_sandbox/authz): an explicit Deny wins, then any
Allow, else an implicit deny, with every condition operator AWS has. The privilege tests use it
only for requests no flow makes on its own (a role no flow passes, a profile no flow uses); every
flow is judged by the local AWS deciding its real requests. An input the engine cannot evaluate
(a malformed policy, a resource ARN the action has no type for) raises; it never guesses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from annex_sandbox.authz.engine import (
    ALLOWED,
    EXPLICITLY_DENIED,
    IMPLICITLY_DENIED,
    PolicyEngine,
)

ALLOW = "Allow"
IMPLICIT_DENY = "ImplicitDeny"
EXPLICIT_DENY = "ExplicitDeny"
_OUTCOMES = {ALLOWED: ALLOW, IMPLICITLY_DENIED: IMPLICIT_DENY, EXPLICITLY_DENIED: EXPLICIT_DENY}
ACCOUNT = "123456789012"


@dataclass(frozen=True)
class Request:
    """One authorization request: `action` on `resource` with condition context keys."""

    action: str
    resource: str
    context: Mapping[str, Any] = field(default_factory=dict)
    principal: str = f"arn:aws:iam::{ACCOUNT}:user/annex-operator"


@lru_cache(maxsize=1)
def _engine() -> PolicyEngine:
    return PolicyEngine()


def evaluate(documents: Iterable[Mapping[str, Any]], request: Request) -> str:
    """ALLOW, IMPLICIT_DENY or EXPLICIT_DENY for `request` under the identity `documents`."""
    simulation = {
        "request": {
            "principal": request.principal,
            "action": request.action,
            "resource": {"resource": request.resource, "accountId": ACCOUNT},
            "contextVariables": {
                k: v if isinstance(v, list) else str(v) for k, v in request.context.items()
            },
        },
        "identityPolicies": [
            {"name": f"policy{i}", "policy": {"Version": "2012-10-17", **dict(d)}}
            for i, d in enumerate(documents)
        ],
        "serviceControlPolicies": [],
        "resourceControlPolicies": [],
    }
    result = _engine().decide([simulation])[0]
    if result["decision"] not in _OUTCOMES:
        raise ValueError(f"the IAM engine cannot evaluate {request}: {result.get('error')}")
    return _OUTCOMES[result["decision"]]


def denied(documents: Sequence[Mapping[str, Any]], requests: Iterable[Request]) -> list[Request]:
    """The requests `documents` do not allow."""
    return [r for r in requests if evaluate(documents, r) != ALLOW]
