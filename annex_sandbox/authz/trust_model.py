"""The trust model — who may do what to whose annex — as the IAM engine decides it.

Each `Question` is one action on a resource of three kinds: the acting annex's own ("mine"),
another annex's ("theirs"), and one that belongs to no annex (untagged, or named outside the
annex's naming scheme). `trust_table` asks the engine for every principal of a deployed setup;
`render` turns the answers into the markdown table docs/SECURITY.md carries
(tests/integration/test_security_doc.py regenerates and compares it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from annex_sandbox.authz.mapping import Check, request_tag_context, resource_tag_context
from annex_sandbox.authz.world import PARTITION, Caller

if TYPE_CHECKING:
    from annex_sandbox.authz import Authorizer

OWN, OTHER, NONE = "mine", "theirs", None
COLUMNS: tuple[Optional[str], ...] = (OWN, OTHER, NONE)
HEADERS = ("own annex", "another annex", "no annex (untagged / not annex-named)")
NOT_ASKED = "—"


@dataclass(frozen=True)
class Setup:
    """What the questions need to know about the deployed setup."""

    account: str
    region: str
    bucket: str
    instance_profile_arn: str
    lease_function_arn: str
    annex_tag: str
    config_key: Callable[[str], str]
    lease_key: Callable[[str], str]
    schedule_name: Callable[[str], str]


@dataclass(frozen=True)
class Question:
    """`action` on the resource `resource(setup, annex)` builds (None: not asked)."""

    what: str
    action: str
    resource: Callable[[Setup, Optional[str]], Optional[str]]
    context: Callable[[Setup, Optional[str]], dict[str, Any]] = lambda setup, annex: {}


def _ec2(kind: str, resource_id: str) -> Callable[[Setup, Optional[str]], Optional[str]]:
    return lambda s, annex: f"arn:{PARTITION}:ec2:{s.region}:{s.account}:{kind}/{resource_id}"


def _tagged(setup: Setup, annex: Optional[str]) -> dict[str, Any]:
    return resource_tag_context({setup.annex_tag: annex} if annex else {})


def _launch_context(setup: Setup, annex: Optional[str]) -> dict[str, Any]:
    return {
        **request_tag_context({setup.annex_tag: annex} if annex else {}),
        "ec2:MetadataHttpTokens": "required",
        "ec2:InstanceProfile": setup.instance_profile_arn,
        "ec2:InstanceType": "m5.large",
    }


def _object(key: Callable[[Setup], Callable[[str], str]], stray: str) -> Any:
    def resource(setup: Setup, annex: Optional[str]) -> str:
        name = key(setup)(annex) if annex else stray
        return f"arn:{PARTITION}:s3:::{setup.bucket}/{name}"

    return resource


def _schedule(setup: Setup, annex: Optional[str]) -> str:
    name = setup.schedule_name(annex) if annex else "nightly-backup"
    return f"arn:{PARTITION}:scheduler:{setup.region}:{setup.account}:schedule/default/{name}"


def _invoke(setup: Setup, annex: Optional[str]) -> Optional[str]:
    if annex == OWN:
        return setup.lease_function_arn
    if annex is None:
        return f"arn:{PARTITION}:lambda:{setup.region}:{setup.account}:function:payroll"
    return None


QUESTIONS: tuple[Question, ...] = (
    Question(
        "launch an instance tagged for the annex (IMDSv2, setup's profile)",
        "ec2:RunInstances",
        _ec2("instance", "*"),
        _launch_context,
    ),
    Question(
        "terminate an instance",
        "ec2:TerminateInstances",
        _ec2("instance", "i-0123456789abcdef0"),
        _tagged,
    ),
    Question(
        "cancel a Spot Fleet request",
        "ec2:CancelSpotFleetRequests",
        _ec2("spot-fleet-request", "sfr-01234567-89ab-cdef-0123-456789abcdef"),
        _tagged,
    ),
    Question(
        "delete a launch template",
        "ec2:DeleteLaunchTemplate",
        _ec2("launch-template", "lt-0123456789abcdef0"),
        _tagged,
    ),
    Question(
        "read a config tarball",
        "s3:GetObject",
        _object(lambda s: s.config_key, "backups/db.tar.gz"),
    ),
    Question(
        "write a config tarball",
        "s3:PutObject",
        _object(lambda s: s.config_key, "backups/db.tar.gz"),
    ),
    Question(
        "delete a lease record",
        "s3:DeleteObject",
        _object(lambda s: s.lease_key, "backups/db.json"),
    ),
    Question("delete a lease schedule", "scheduler:DeleteSchedule", _schedule),
    Question("invoke the lease function (other: any function)", "lambda:InvokeFunction", _invoke),
)


@dataclass(frozen=True)
class Principal:
    """Who acts: an IAM user holding a policy (`caller`) or a role (`role_arn`)."""

    label: str
    caller: Optional[Caller] = None
    role_arn: Optional[str] = None


Row = tuple[str, str, tuple[str, ...]]
"""(principal, question, answers in COLUMNS order)."""


def trust_table(
    authorizer: Authorizer,
    setup: Setup,
    principals: Sequence[Principal],
    questions: Sequence[Question] = QUESTIONS,
) -> list[Row]:
    """Every principal x question x column, decided by the engine against deployed policies."""
    rows: list[Row] = []
    for principal in principals:
        for question in questions:
            answers = []
            for annex in COLUMNS:
                resource = question.resource(setup, annex)
                if resource is None:
                    answers.append(NOT_ASKED)
                    continue
                check = Check(
                    question.action,
                    resource,
                    question.context(setup, annex),
                    as_role=principal.role_arn,
                )
                caller = principal.caller or Caller(
                    "service-role", principal.role_arn or "", setup.account, principal.label
                )
                refused = authorizer.evaluate(caller, [check], setup.region)
                answers.append("deny" if refused else "**allow**")
            rows.append((principal.label, question.what, tuple(answers)))
    return rows


def render(rows: Sequence[Row]) -> str:
    """The markdown table (header, separator, one line per row)."""
    lines = [
        f"| principal | action ({question_count(rows)} questions each) | {' | '.join(HEADERS)} |",
        "|---|---|" + "---|" * len(HEADERS),
    ]
    for principal, what, answers in rows:
        lines.append(f"| {principal} | {what} | {' | '.join(answers)} |")
    return "\n".join(lines) + "\n"


def question_count(rows: Sequence[Row]) -> int:
    return len({what for _, what, _ in rows})
