"""The allow/deny report: what the IAM engine decided, per principal.

`by_principal(checks, labels)` groups the engine's evaluated checks (`Authorizer.checks`: the
caller's own and those of roles AWS acts with, such as the Spot Fleet role at RequestSpotFleet)
under a readable principal label. The scripted check (tests/reliability/test_authz_report.py)
runs every role's real flow and prints the report with `render`: the expected flows must show
zero refusals, and the second list shows the refusals that must happen.

    python -m annex_sandbox.authz.report <decision log>

summarizes a decision log written with `ANNEX_SANDBOX_AUTHZ_LOG=<file>` (one line per non-root
request: operation, caller, kind, allowed, refused checks) by caller.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class PrincipalReport:
    """Allowed and refused checks of one principal, by action."""

    label: str
    allowed: Counter[str] = field(default_factory=Counter)
    refused: list[str] = field(default_factory=list)


def label_of(principal_arn: str, labels: Mapping[str, str]) -> str:
    """The label of the first `labels` key (a role or user name) the ARN names, else the ARN.

    Assumed-role sessions (`assumed-role/<role>/<session>`) and roles (`role/<path>/<role>`)
    are matched by role name; users by user name.
    """
    parts = principal_arn.split(":", 5)[-1].split("/")
    names = set(parts[1:]) if len(parts) > 1 else set()
    for name, label in labels.items():
        if name in names:
            return label
    return principal_arn


def by_principal(
    checks: Iterable[Sequence[object]], labels: Mapping[str, str]
) -> dict[str, PrincipalReport]:
    """`{label: report}` of `(principal ARN, action, resource, allowed)` checks."""
    reports: dict[str, PrincipalReport] = {}
    for principal, action, resource, allowed in checks:
        label = label_of(str(principal), labels)
        report = reports.setdefault(label, PrincipalReport(label))
        if allowed:
            report.allowed[str(action)] += 1
        else:
            report.refused.append(f"{action} on {resource}")
    return reports


def render(reports: Mapping[str, PrincipalReport], must_deny: Mapping[str, str]) -> str:
    """Two lists: each principal's allowed checks and refusals; each must-deny case's outcome."""
    lines = ["Expected flows (refusals must be zero):"]
    for label in sorted(reports):
        report = reports[label]
        actions = ", ".join(f"{a} x{n}" for a, n in sorted(report.allowed.items()))
        lines.append(
            f"  {label}: {sum(report.allowed.values())} allowed ({actions}); "
            f"{len(report.refused)} refused{': ' + '; '.join(report.refused) if report.refused else ''}"
        )
    lines.append("Denials that must happen:")
    lines += [f"  {case}: {outcome}" for case, outcome in must_deny.items()]
    return "\n".join(lines)


def summarize_log(lines: Iterable[str]) -> dict[str, Counter[str]]:
    """`{caller: Counter(allowed=n, refused=n, unmapped=n)}` of a decision log."""
    out: dict[str, Counter[str]] = {}
    for line in lines:
        if not line.strip():
            continue
        _operation, caller, _kind, allowed, refused = json.loads(line)
        counts = out.setdefault(caller, Counter())
        if refused == ["unmapped"]:
            counts["unmapped"] += 1
        counts["allowed" if allowed else "refused"] += 1
    return out


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m annex_sandbox.authz.report <ANNEX_SANDBOX_AUTHZ_LOG file>")
        return 2
    with open(argv[0]) as log:
        summary = summarize_log(log)
    for caller, counts in sorted(summary.items()):
        print(f"{caller}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 1 if any(c["refused"] for c in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
