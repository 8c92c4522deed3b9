"""A small IAM policy evaluator for identity policies, for what the local AWS does not evaluate.

moto enforces IAM by action, and by resource only for S3 (every other service is checked
against `*`), and it ignores every condition operator except `StringEquals` on `sts:ExternalId`.
This evaluates one request — action, resource ARN, request context keys — against policy
documents the way AWS's identity-policy logic does: an explicit Deny wins, then any Allow,
else an implicit deny. Supported: Action/NotAction, Resource/NotResource (`*` and `?`
wildcards; actions case-insensitive), and the condition operators the setup's policies use
(String*, Arn*, Bool, Null, with `...IfExists`). Anything else raises, never guesses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ALLOW = "Allow"
IMPLICIT_DENY = "ImplicitDeny"
EXPLICIT_DENY = "ExplicitDeny"


@dataclass(frozen=True)
class Request:
    """One authorization request: `action` on `resource` with condition context keys."""

    action: str
    resource: str
    context: Mapping[str, Any] = field(default_factory=dict)


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _wildcard(pattern: str, value: str, *, case: bool) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case else re.IGNORECASE) is not None


def _context_key(context: Mapping[str, Any], key: str) -> list[str] | None:
    # Condition keys are case-insensitive (tag keys inside them too, for aws:*Tag/ keys).
    for name, value in context.items():
        if name.lower() == key.lower():
            return [str(v) for v in _list(value)]
    return None


_BASE_OPERATORS = {
    "StringEquals": lambda want, have: want == have,
    "StringNotEquals": lambda want, have: want == have,
    "StringEqualsIgnoreCase": lambda want, have: want.lower() == have.lower(),
    "StringLike": lambda want, have: _wildcard(want, have, case=True),
    "StringNotLike": lambda want, have: _wildcard(want, have, case=True),
    "ArnEquals": lambda want, have: _wildcard(want, have, case=True),
    "ArnLike": lambda want, have: _wildcard(want, have, case=True),
    "ArnNotEquals": lambda want, have: _wildcard(want, have, case=True),
    "ArnNotLike": lambda want, have: _wildcard(want, have, case=True),
    "Bool": lambda want, have: want.lower() == have.lower(),
}
_NEGATED = {"StringNotEquals", "StringNotLike", "ArnNotEquals", "ArnNotLike"}


def _condition_holds(operator: str, key: str, wanted: Any, context: Mapping[str, Any]) -> bool:
    if operator.startswith(("ForAnyValue:", "ForAllValues:")):
        raise NotImplementedError(f"set operator {operator}")
    have = _context_key(context, key)
    if operator == "Null":
        # Null: "true" holds when the key is absent, "false" when it is present.
        return (have is None) == (str(_list(wanted)[0]).lower() == "true")
    if_exists = operator.endswith("IfExists")
    base = operator[: -len("IfExists")] if if_exists else operator
    if base not in _BASE_OPERATORS:
        raise NotImplementedError(f"condition operator {operator}")
    if have is None:
        # AWS: a missing key makes a condition false, except negated operators and ...IfExists.
        return if_exists or base in _NEGATED
    match = _BASE_OPERATORS[base]
    hit = any(match(str(w), h) for w in _list(wanted) for h in have)
    return not hit if base in _NEGATED else hit


def _statement_applies(statement: Mapping[str, Any], request: Request) -> bool:
    if "Action" in statement:
        if not any(_wildcard(a, request.action, case=False) for a in _list(statement["Action"])):
            return False
    elif "NotAction" in statement:
        if any(_wildcard(a, request.action, case=False) for a in _list(statement["NotAction"])):
            return False
    else:
        raise ValueError(f"statement without Action/NotAction: {statement}")
    if "Resource" in statement:
        if not any(_wildcard(r, request.resource, case=True) for r in _list(statement["Resource"])):
            return False
    elif "NotResource" in statement:
        if any(_wildcard(r, request.resource, case=True) for r in _list(statement["NotResource"])):
            return False
    else:
        raise ValueError(f"statement without Resource/NotResource: {statement}")
    for operator, pairs in (statement.get("Condition") or {}).items():
        for key, wanted in pairs.items():
            if not _condition_holds(operator, key, wanted, request.context):
                return False
    return True


def evaluate(documents: Iterable[Mapping[str, Any]], request: Request) -> str:
    """ALLOW, IMPLICIT_DENY or EXPLICIT_DENY for `request` under the identity `documents`."""
    allowed = False
    for document in documents:
        for statement in _list(document["Statement"]):
            if not _statement_applies(statement, request):
                continue
            if statement["Effect"] == "Deny":
                return EXPLICIT_DENY
            allowed = True
    return ALLOW if allowed else IMPLICIT_DENY


def denied(documents: Sequence[Mapping[str, Any]], requests: Iterable[Request]) -> list[Request]:
    """The requests `documents` do not allow."""
    return [r for r in requests if evaluate(documents, r) != ALLOW]
