"""The setup stack's settings, read from CDK context (`cdk.json`, `-c key=value`).

Context keys (documented in docs/SETUP.md): `stackName`, `vpcId`, `poolCidrs`, `allowSsh`,
`sshCidrs`, `versionedConfigBucket`, `accessLogs`. Values given on the command line arrive as
strings, so lists accept JSON (`["10.0.0.0/8"]`) or comma-separated text and booleans accept
`true`/`false`.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from condor_annex import contract

CTX_STACK_NAME = "stackName"
CTX_VPC_ID = "vpcId"
CTX_POOL_CIDRS = "poolCidrs"
CTX_ALLOW_SSH = "allowSsh"
CTX_SSH_CIDRS = "sshCidrs"
CTX_VERSIONED_BUCKET = "versionedConfigBucket"
CTX_ACCESS_LOGS = "accessLogs"
CONTEXT_KEYS = (
    CTX_STACK_NAME,
    CTX_VPC_ID,
    CTX_POOL_CIDRS,
    CTX_ALLOW_SSH,
    CTX_SSH_CIDRS,
    CTX_VERSIONED_BUCKET,
    CTX_ACCESS_LOGS,
)


class SettingsError(ValueError):
    """A context value the setup stack refuses, with the fix in the message."""


def _as_list(key: str, value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise SettingsError(f"context {key}: {error}") from error
        else:
            return [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"context {key} must be a list of CIDR strings, not {value!r}")
    return [v.strip() for v in value]


def _as_bool(key: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0", ""):
        return False
    raise SettingsError(f"context {key} must be true or false, not {value!r}")


def _cidrs(key: str, values: list[str]) -> tuple[str, ...]:
    """Normalized CIDRs; anything open to the whole internet is refused (cdk-nag EC23)."""
    out: list[str] = []
    for value in values:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError as error:
            raise SettingsError(f"context {key}: {value!r} is not a CIDR ({error})") from error
        if network.prefixlen == 0:
            raise SettingsError(
                f"context {key}: {value!r} opens the port to the whole internet; name the "
                "pool's own address ranges instead (e.g. 203.0.113.0/24)"
            )
        out.append(str(network))
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class SetupSettings:
    """Everything the admin can choose about the setup stack; defaults are the safe choice."""

    stack_name: str = contract.STACK_NAME
    vpc_id: Optional[str] = None
    pool_cidrs: tuple[str, ...] = ()
    allow_ssh: bool = False
    ssh_cidrs: tuple[str, ...] = ()
    versioned_config_bucket: bool = False
    access_logs: bool = True

    @classmethod
    def from_context(cls, get: Mapping[str, Any]) -> SetupSettings:
        """Read and check the context values (`get` maps key → value, missing keys absent)."""
        vpc_id = get.get(CTX_VPC_ID) or None
        if vpc_id is not None and not (isinstance(vpc_id, str) and vpc_id.startswith("vpc-")):
            raise SettingsError(f"context {CTX_VPC_ID} must look like vpc-0123abcd, not {vpc_id!r}")
        allow_ssh = _as_bool(CTX_ALLOW_SSH, get.get(CTX_ALLOW_SSH), False)
        ssh_cidrs = _cidrs(CTX_SSH_CIDRS, _as_list(CTX_SSH_CIDRS, get.get(CTX_SSH_CIDRS)))
        if allow_ssh and not ssh_cidrs:
            raise SettingsError(
                f"context {CTX_ALLOW_SSH} is true but {CTX_SSH_CIDRS} is empty: name the "
                "address ranges SSH may come from"
            )
        return cls(
            stack_name=str(get.get(CTX_STACK_NAME) or contract.STACK_NAME),
            vpc_id=vpc_id,
            pool_cidrs=_cidrs(CTX_POOL_CIDRS, _as_list(CTX_POOL_CIDRS, get.get(CTX_POOL_CIDRS))),
            allow_ssh=allow_ssh,
            ssh_cidrs=ssh_cidrs if allow_ssh else (),
            versioned_config_bucket=_as_bool(
                CTX_VERSIONED_BUCKET, get.get(CTX_VERSIONED_BUCKET), False
            ),
            access_logs=_as_bool(CTX_ACCESS_LOGS, get.get(CTX_ACCESS_LOGS), True),
        )
