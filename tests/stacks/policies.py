"""Reading IAM policy statements out of a synthesized template, for assertions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Statement:
    resource_id: str
    """Logical id of the role, policy or managed policy holding the statement."""
    policy_name: str
    body: dict[str, Any]

    @property
    def actions(self) -> list[str]:
        action = self.body.get("Action", [])
        return [action] if isinstance(action, str) else list(action)

    @property
    def resources(self) -> list[Any]:
        resource = self.body.get("Resource", [])
        return resource if isinstance(resource, list) else [resource]

    @property
    def allows(self) -> bool:
        return self.body.get("Effect") == "Allow"


def _documents(logical_id: str, resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    kind = resource["Type"]
    props = resource.get("Properties", {})
    if kind == "AWS::IAM::Role":
        for policy in props.get("Policies", []):
            yield policy["PolicyName"], policy["PolicyDocument"]
    elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        yield props.get("PolicyName", logical_id), props["PolicyDocument"]
    elif kind == "AWS::S3::BucketPolicy":
        yield "BucketPolicy", props["PolicyDocument"]


def statements(template: dict[str, Any]) -> list[Statement]:
    """Every statement of every identity, managed and bucket policy in `template`."""
    found = []
    for logical_id, resource in template["Resources"].items():
        for name, document in _documents(logical_id, resource):
            for body in document["Statement"]:
                found.append(Statement(logical_id, name, body))
    return found


def logical_ids(template: dict[str, Any], kind: str, prefix: str = "") -> list[str]:
    """Logical ids of resources of `kind` whose id starts with `prefix` (the construct path)."""
    return [
        logical_id
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == kind and logical_id.startswith(prefix)
    ]


def only(template: dict[str, Any], kind: str, prefix: str = "") -> str:
    ids = logical_ids(template, kind, prefix)
    assert len(ids) == 1, f"expected one {kind} under {prefix!r}, found {ids}"
    return ids[0]


def statements_of(template: dict[str, Any], logical_id: str) -> list[Statement]:
    return [s for s in statements(template) if s.resource_id == logical_id]


def by_sid(template: dict[str, Any], logical_id: str, sid: str) -> Statement:
    matches = [s for s in statements_of(template, logical_id) if s.body.get("Sid") == sid]
    assert len(matches) == 1, f"{logical_id} has {len(matches)} statements with Sid {sid}"
    return matches[0]


def rendered(value: Any) -> str:
    """A resolved template value as text (`${Ref}` and `${Logical.Attr}` for references)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Ref":
            return "${" + str(arg) + "}"
        if key == "Fn::GetAtt":
            return "${" + ".".join(str(a) for a in arg) + "}"
        if key == "Fn::Join":
            return str(arg[0]).join(rendered(part) for part in arg[1])
        if key == "Fn::Sub" and isinstance(arg, str):
            return str(arg)
    raise AssertionError(f"cannot render {value!r}")
