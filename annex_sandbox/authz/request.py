"""One HTTP request to the local AWS as the IAM engine needs it: who, what, with which parameters.

Parameters come back in the request's own protocol shape, unflattened where the wire flattens
them: EC2/IAM/STS/CloudFormation form fields `TagSpecification.1.Tag.2.Key` become nested dicts
(`params["TagSpecification"]["1"]["Tag"]["2"]["Key"]`, see `members`), JSON bodies are parsed, REST
URI labels (`{Name}`, `{FunctionName}`) are bound by name from botocore's own service model, and
S3's bucket and key are read from the path or the virtual host.
"""

from __future__ import annotations

import io
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Optional
from xml.etree import ElementTree

_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/([^/]+)/aws4_request")

ACTING_SERVICE_HEADER = "x-annex-sandbox-acting-service"
"""Header of an AssumeRole the local AWS's own emulators make for an AWS service (the IMDS
emulator assuming an instance's role as `ec2.amazonaws.com`, as EC2 does for instance metadata):
signed with the sandbox's root key, it is judged as the named service assuming the role — by the
role's trust policy — and honoured from the root only."""

SECURE_TRANSPORT_KEY = "annex_sandbox.secure_transport"
"""WSGI environ key: False when the request came in on the local AWS's plain-HTTP listener.

AWS clients (the SDKs, the CDK CLI, the agent) talk HTTPS to AWS; the local AWS's loopback HTTP
endpoint stands in for those TLS endpoints, so its requests carry `aws:SecureTransport` true. Its
second listener (`LocalAws.plain_http_endpoint_url`) stands in for AWS's plain-HTTP endpoints
(`http://s3.amazonaws.com`): there the key is false, as AWS sets it for unencrypted requests."""


@dataclass
class AwsRequest:
    """The parts of one request that authorization depends on."""

    service: str
    operation: str
    access_key_id: Optional[str]
    session_token: Optional[str]
    region: str
    method: str
    path: str
    query: dict[str, list[str]]
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    """Lower-case header names."""
    secure_transport: bool = True
    """Whether the request came over TLS (`aws:SecureTransport`): see `SECURE_TRANSPORT_KEY`."""

    def param(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)

    def flag(self, name: str) -> bool:
        return str(self.params.get(name, "")).lower() == "true"


def members(value: Any) -> list[Any]:
    """The items of a flattened list (`{"1": a, "2": b}`) or a JSON list, in order."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and all(k.isdigit() for k in value):
        return [value[k] for k in sorted(value, key=int)]
    return [value]


def _unflatten(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for key, value in pairs:
        node = root
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return root


def _read_body(environ: dict[str, Any]) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body: bytes = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


@lru_cache(maxsize=256)
def _uri_pattern(signing_name: str, operation: str) -> Optional[re.Pattern[str]]:
    import botocore.session

    from annex_sandbox.local_aws import _MODEL_NAME_BY_SIGNING_NAME

    name = _MODEL_NAME_BY_SIGNING_NAME.get(signing_name, signing_name)
    try:
        model = botocore.session.get_session().get_service_model(name).operation_model(operation)
    except Exception:
        return None
    uri = model.http.get("requestUri", "/").partition("?")[0]
    pattern = ""
    for piece in re.split(r"(\{[^}]+\})", uri):
        if piece.startswith("{"):
            label = piece[1:-1]
            greedy = label.endswith("+")
            label = label.rstrip("+")
            pattern += f"(?P<{label}>{'.+' if greedy else '[^/]+'})"
        else:
            pattern += re.escape(piece)
    return re.compile(pattern + "/?")


def parse_request(
    environ: dict[str, Any], service: str, operation: str, protocol: str
) -> AwsRequest:
    """The `AwsRequest` for a request `identify_call` named; restores any body it reads."""
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    header = environ.get("HTTP_AUTHORIZATION", "")
    match = _CREDENTIAL_RE.search(header)
    if match:
        access_key, region = match.group(1), match.group(2)
    else:
        parts = query.get("X-Amz-Credential", [""])[0].split("/")
        access_key, region = (parts[0], parts[2]) if len(parts) == 5 else (None, "")
    token = environ.get("HTTP_X_AMZ_SECURITY_TOKEN") or query.get("X-Amz-Security-Token", [None])[0]
    headers = {
        k[5:].lower().replace("_", "-"): str(v) for k, v in environ.items() if k.startswith("HTTP_")
    }
    request = AwsRequest(
        service=service,
        operation=operation,
        access_key_id=access_key,
        session_token=token,
        region=region,
        method=environ.get("REQUEST_METHOD", "GET"),
        path=urllib.parse.unquote(environ.get("PATH_INFO", "/")),
        query=query,
        headers=headers,
        secure_transport=bool(environ.get(SECURE_TRANSPORT_KEY, True)),
    )
    content_type = environ.get("CONTENT_TYPE", "")
    if protocol in ("query", "ec2"):
        pairs = urllib.parse.parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if content_type.startswith("application/x-www-form-urlencoded"):
            form = _read_body(environ).decode("utf-8", "replace")
            pairs += urllib.parse.parse_qsl(form, keep_blank_values=True)
        request.params = _unflatten(pairs)
    elif protocol == "json":
        request.params = _json_object(_read_body(environ))
    elif protocol == "rest-json":
        body = _read_body(environ)
        if "json" in content_type:
            request.params = _json_object(body)
        pattern = _uri_pattern(service, operation)
        bound = pattern.fullmatch(environ.get("PATH_INFO", "/")) if pattern else None
        if bound:
            request.params.update(
                {k: urllib.parse.unquote(v) for k, v in bound.groupdict().items()}
            )
        for key, values in query.items():
            request.params.setdefault(key, values[0])
    elif service == "s3":
        request.params = _s3_bucket_and_key(environ)
        request.params.update({k: v[0] for k, v in query.items()})
        if operation == "DeleteObjects":
            request.params["Delete"] = _objects_to_delete(_read_body(environ))
    return request


def _objects_to_delete(body: bytes) -> list[dict[str, str]]:
    """`[{"Key", "VersionId"?}]` of an S3 DeleteObjects body (`<Delete><Object>...`)."""
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 - the local AWS's own clients' bodies
    except ElementTree.ParseError:
        return []
    out = []
    for element in root:
        if not element.tag.endswith("Object"):
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: child.text or "" for child in element}
        if "Key" in fields:
            out.append({k: v for k, v in fields.items() if k in ("Key", "VersionId")})
    return out


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body) if body.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _s3_bucket_and_key(environ: dict[str, Any]) -> dict[str, Any]:
    host = environ.get("HTTP_HOST", "").rsplit(":", 1)[0]
    path = urllib.parse.unquote(environ.get("PATH_INFO", "/")).lstrip("/")
    labels = host.split(".")
    # Virtual-hosted style: <bucket>.localhost or <bucket>.s3[.<region>].amazonaws.com.
    if len(labels) > 1 and not re.fullmatch(r"[\d.]+", host) and labels[1] in ("localhost", "s3"):
        bucket, key = labels[0], path
    else:
        bucket, _, key = path.partition("/")
    return {"Bucket": bucket, "Key": key} if key else {"Bucket": bucket}
