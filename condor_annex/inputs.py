"""Checks of what the admin typed or named, run before anything is made in AWS.

Each check is small, named, and raises `InvalidInput` (exit 2) naming the flag or file and
what to do instead. `create.validate_request` calls the ones that need no AWS model; the Spot
Fleet shape check runs in create's validate step, before its first AWS call.

START expressions: the CLI parses them with HTCondor's own ClassAd parser (`classad2`, part of
the `htcondor` bindings) when it is importable; without the bindings a small lexer proves the
expression is one balanced term (brackets and string literals closed), which is all that
"can only narrow" needs, because it is ANDed in parentheses: `(policy) && (expr)`. The boot
agent never parses START (HTCondor on the node does).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from condor_annex import contract
from condor_annex.errors import InvalidInput

MAX_START_EXPRESSION_CHARS = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CLOSERS = {"(": ")", "[": "]", "{": "}"}


# --- START ---------------------------------------------------------------------------------------


def _classad_parser() -> Optional[Any]:
    try:
        import classad2
    except ImportError:
        return None
    return classad2


def _balanced(expression: str) -> Optional[str]:
    """None when every bracket and string literal in `expression` is closed; else the problem."""
    stack: list[str] = []
    i = 0
    while i < len(expression):
        char = expression[i]
        if char in "\"'":
            end = i + 1
            while end < len(expression) and expression[end] != char:
                end += 2 if expression[end] == "\\" else 1
            if end >= len(expression):
                return f"a {char} quote at position {i} is never closed"
            i = end + 1
            continue
        if char in _CLOSERS:
            stack.append(_CLOSERS[char])
        elif char in ")]}" and (not stack or stack.pop() != char):
            return f"the {char!r} at position {i} closes nothing"
        i += 1
    if stack:
        return f"{len(stack)} bracket(s) are never closed"
    return None


def check_start_expression(expression: str) -> str:
    """The expression, stripped, once it is one complete ClassAd expression on one line."""
    flag = "-start-expression"
    text = expression.strip()
    if not text or _CONTROL.search(expression):
        raise InvalidInput(
            f"{flag} must be one non-empty line", next_step="write the condition on one line"
        )
    if len(text) > MAX_START_EXPRESSION_CHARS:
        raise InvalidInput(f"{flag} has {len(text)} characters; at most 4096 are accepted")
    if "$" in text:
        # HTCondor's config layer would expand $(...) on the node, outside this check.
        raise InvalidInput(
            f"{flag} may not use HTCondor config macros ($)",
            next_step="write the condition with ClassAd attributes only",
        )
    problem = _balanced(text)
    if problem is None and ";" in text:
        problem = "';' would end the expression"
    parser = _classad_parser()
    if problem is None and parser is not None:
        try:
            parser.ExprTree(text)
        except Exception:  # classad2 raises ClassAdException (no public base to name)
            problem = "HTCondor's ClassAd parser cannot parse it"
    if problem is not None:
        raise InvalidInput(
            f"{flag} {text!r} is not one ClassAd expression: {problem}",
            next_step="give a single condition such as 'TARGET.RequestMemory <= 4096'; it "
            "is ANDed with the annex's policy and can only narrow it",
        )
    return text


def narrowed_start(policy: str, expression: Optional[str]) -> str:
    """`policy` ANDed with the checked `expression`: the result never admits more jobs."""
    if expression is None:
        return policy
    return f"({policy}) && ({check_start_expression(expression)})"


# --- Token files ---------------------------------------------------------------------------------


def check_token_file(
    path: Path,
    *,
    lease_expires_at: datetime,
    now: datetime,
    trust_domain: Optional[str],
) -> None:
    """A -token-file is used only if it holds a real, unexpired IDTOKEN whose expiry is no later
    than the lease and whose scopes are at most what an execute node needs."""
    from condor_annex import tokens

    flag = "-token-file"
    token = tokens.token_from_file(path)
    try:
        claims = tokens.unverified_claims(token)
    except tokens.TokenInvalid as exc:
        raise InvalidInput(
            f"{flag}: the token in {path} is unusable: {exc.message}",
            next_step="make one with `condor_token_create -authz READ -authz ADVERTISE_STARTD "
            "-authz ADVERTISE_MASTER -lifetime SECONDS`",
        ) from None
    allowed = set(contract.ANNEX_TOKEN_AUTHZ)
    make = (
        "condor_token_create -identity condor_pool@DOMAIN "
        + " ".join(f"-authz {a}" for a in contract.ANNEX_TOKEN_AUTHZ)
        + f" -lifetime {max(60, int((lease_expires_at - now).total_seconds()))}"
    )
    if claims.get("_alg") != "HS256":
        raise InvalidInput(
            f"{flag}: the token in {path} is not an HTCondor IDTOKEN (alg {claims.get('_alg')!r})",
            next_step=f"make one with `{make}`",
        )
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise InvalidInput(
            f"{flag}: the token in {path} never expires; an annex token must end with the lease",
            next_step=f"make one with `{make}`",
        )
    if exp <= now.timestamp():
        raise InvalidInput(
            f"{flag}: the token in {path} expired at "
            f"{datetime.fromtimestamp(exp, now.tzinfo).isoformat()}",
            next_step=f"make a new one with `{make}`",
        )
    if exp > lease_expires_at.timestamp():
        raise InvalidInput(
            f"{flag}: the token in {path} outlives the lease (it expires at "
            f"{datetime.fromtimestamp(exp, now.tzinfo).isoformat()}, the lease at "
            f"{lease_expires_at.replace(microsecond=0).isoformat()})",
            next_step=f"make one that ends with the lease: `{make}`, or pass a longer -duration",
        )
    scope = claims.get("scope")
    if not isinstance(scope, str) or not scope.strip():
        raise InvalidInput(
            f"{flag}: the token in {path} carries no scope (it would act with every "
            "authorization of its identity)",
            next_step=f"make one limited to what an execute node needs: `{make}`",
        )
    levels = [s.removeprefix(tokens.SCOPE_PREFIX) for s in scope.split()]
    beyond = sorted({lvl for lvl in levels if lvl not in allowed})
    if beyond:
        raise InvalidInput(
            f"{flag}: the token in {path} allows {', '.join(beyond)}, more than an execute node "
            f"needs ({', '.join(contract.ANNEX_TOKEN_AUTHZ)})",
            next_step=f"make one limited to those: `{make}`",
        )
    issuer = claims.get("iss")
    if trust_domain and issuer != trust_domain:
        raise InvalidInput(
            f"{flag}: the token in {path} was issued by {issuer!r}, not the pool's trust domain "
            f"{trust_domain!r}",
            next_step="use a token made by this pool's central manager",
        )


# --- Spot Fleet size -----------------------------------------------------------------------------


def max_fleet_instances(slots: int, weights: Sequence[float]) -> int:
    """The most instances a fleet of `slots` capacity can launch: every one the lightest type."""
    lightest = min(weights) if weights else 1.0
    return math.ceil(slots / lightest)


def check_fleet_size(slots: int, weights: Sequence[float], cap: int) -> None:
    """Refuse weights that would let `-slots` launch more than `cap` instances."""
    worst = max_fleet_instances(slots, weights)
    if worst > cap:
        raise InvalidInput(
            f"-slots {slots} with a smallest weight of {min(weights):g} could launch {worst} "
            f"instances; at most {cap} are allowed",
            next_step="use weights of at least 1 (slots per instance) or fewer -slots",
        )


# --- Spot Fleet shapes ---------------------------------------------------------------------------


def check_against_model(
    service_model: Any, operation: str, params: Mapping[str, Any], *, source: str
) -> None:
    """Refuse `params` that `operation`'s input shape in botocore's model rejects (type, range,
    enum, required member), before any request is sent."""
    from botocore.validate import ParamValidator

    shape = service_model.operation_model(operation).input_shape
    report = ParamValidator().validate(dict(params), shape)
    if report.has_errors():
        first = report.generate_report().splitlines()[1:2] or [report.generate_report()]
        raise InvalidInput(
            f"{source}: the EC2 API would refuse it: {first[0].strip()}",
            next_step="correct the value named above (types and names as in the EC2 API "
            f"reference for {operation})",
        )
