"""The setup's outputs and the user's defaults as the CLI reads them: `ANNEX_DEFAULT_*` → `Settings`.

`-setup` writes every stack output into the user's HTCondor config as a macro (the mapping lives
in `contract.STACK_OUTPUTS`); every other verb starts from this typed view of those macros.

As in the old condor_annex, a macro may also be given per region, `<region>.ANNEX_DEFAULT_*`
with the region's characters outside `[A-Za-z0-9_./]` turned into `_` (`us_east_1.`). The value
used is: the command-line flag > the per-region macro > the plain macro > the built-in default.
Setup outputs written without a prefix belong to the region in `ANNEX_DEFAULT_AWS_REGION`, so
they never leak into another region (a second region's `-setup` writes per-region names).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from condor_annex import contract
from condor_annex.aws import make_client, make_session
from condor_annex.errors import SetupIncomplete, SetupMissing

if TYPE_CHECKING:
    from condor_annex.target import AwsTarget

PRICING_API_REGION = "us-east-1"
"""The Price List Query API is served from us-east-1 (also eu-central-1 and ap-south-1) and
answers for every region; the region asked about is a filter, not the endpoint."""

# Which Settings field holds which stack output. Checked against contract.STACK_OUTPUTS below so a
# new output cannot be forgotten here.
FIELD_BY_OUTPUT_KEY: dict[str, str] = {
    contract.OUTPUT_CONFIG_BUCKET.key: "config_bucket",
    contract.OUTPUT_INSTANCE_PROFILE_ARN.key: "instance_profile_arn",
    contract.OUTPUT_INSTANCE_ROLE_ARN.key: "instance_role_arn",
    contract.OUTPUT_SPOT_FLEET_ROLE_ARN.key: "spot_fleet_role_arn",
    contract.OUTPUT_SECURITY_GROUP_IDS.key: "security_group_ids",
    contract.OUTPUT_VPC_ID.key: "vpc_id",
    contract.OUTPUT_LEASE_FUNCTION_ARN.key: "lease_function_arn",
    contract.OUTPUT_SWEEP_FUNCTION_ARN.key: "sweep_function_arn",
    contract.OUTPUT_CONNECTIVITY_FUNCTION_ARN.key: "connectivity_function_arn",
    contract.OUTPUT_SCHEDULER_ROLE_ARN.key: "scheduler_role_arn",
    contract.OUTPUT_OPERATOR_POLICY_ARN.key: "operator_policy_arn",
    contract.OUTPUT_OPERATOR_LAUNCH_POLICY_ARN.key: "operator_launch_policy_arn",
}
if set(FIELD_BY_OUTPUT_KEY) != {o.key for o in contract.STACK_OUTPUTS}:  # pragma: no cover
    raise RuntimeError("annex_settings.FIELD_BY_OUTPUT_KEY is out of step with contract")

# What each verb needs from the setup.
NEEDED_FOR_ON_DEMAND: tuple[contract.StackOutput, ...] = (
    contract.OUTPUT_CONFIG_BUCKET,
    contract.OUTPUT_INSTANCE_PROFILE_ARN,
    contract.OUTPUT_SECURITY_GROUP_IDS,
    contract.OUTPUT_LEASE_FUNCTION_ARN,
    contract.OUTPUT_SCHEDULER_ROLE_ARN,
)
NEEDED_FOR_SPOT_FLEET: tuple[contract.StackOutput, ...] = (
    *NEEDED_FOR_ON_DEMAND,
    contract.OUTPUT_SPOT_FLEET_ROLE_ARN,
)
NEEDED_FOR_STATUS: tuple[contract.StackOutput, ...] = (contract.OUTPUT_CONFIG_BUCKET,)


@dataclass(frozen=True)
class UserDefaults:
    """The old condor_annex's per-user defaults (`ANNEX_DEFAULT_*`); None where unset."""

    instance_type: Optional[str] = None
    ami_id: Optional[str] = None
    key_name: Optional[str] = None
    lease_duration: Optional[str] = None
    """Seconds (a bare number, as the old tool read it) or a duration with a unit."""
    unclaimed_timeout: Optional[str] = None
    """Seconds, as `lease_duration`."""
    spot_fleet_config_file: Optional[str] = None


USER_DEFAULT_MACROS: dict[str, str] = {
    "instance_type": "ANNEX_DEFAULT_ODI_INSTANCE_TYPE",
    "ami_id": "ANNEX_DEFAULT_ODI_IMAGE_ID",
    "key_name": "ANNEX_DEFAULT_ODI_KEY_NAME",
    "lease_duration": "ANNEX_DEFAULT_LEASE_DURATION",
    "unclaimed_timeout": "ANNEX_DEFAULT_UNCLAIMED_TIMEOUT",
    "spot_fleet_config_file": "ANNEX_DEFAULT_SFR_CONFIG_FILE",
}
"""Which UserDefaults field each macro sets (docs/MIGRATION.md is checked against this)."""
if set(USER_DEFAULT_MACROS) != {f.name for f in fields(UserDefaults)}:  # pragma: no cover
    raise RuntimeError("annex_settings.USER_DEFAULT_MACROS is out of step with UserDefaults")

SETUP_MACROS: tuple[str, ...] = (
    *(o.macro for o in contract.STACK_OUTPUTS),
    contract.MACRO_STACK_NAME,
    contract.MACRO_AWS_ACCOUNT_ID,
)
"""Macros that describe one region's setup."""


def region_prefix(region: str) -> str:
    """The old tool's per-region macro prefix (upper case, as macro names are case-blind)."""
    return re.sub(r"[^A-Za-z0-9_./]", "_", region).upper()


def regional_name(macro: str, region: str) -> str:
    return f"{region_prefix(region)}.{macro}"


def regional_macros(macros: Mapping[str, str], region: Optional[str]) -> dict[str, str]:
    """The plain `ANNEX_DEFAULT_*` view of `macros` for `region` (per-region values win).

    Plain setup macros describe the setup of the recorded region (`ANNEX_DEFAULT_AWS_REGION`):
    for any other region only its per-region setup macros count, so a region without a setup
    of its own reads as "no setup" rather than borrowing another region's bucket.
    """
    upper = {k.upper(): v for k, v in macros.items()}
    recorded = upper.get(contract.MACRO_AWS_REGION, "").strip()
    view = {k: v for k, v in upper.items() if "." not in k}
    if region and recorded and region != recorded:
        for name in SETUP_MACROS:
            view.pop(name, None)
    if region:
        prefix = region_prefix(region) + "."
        for name, value in upper.items():
            if name.startswith(prefix):
                view[name[len(prefix) :]] = value
    return view


@dataclass(frozen=True)
class Settings:
    """Typed setup outputs; empty strings / tuples where the user config lacks a macro."""

    config_bucket: str = ""
    instance_profile_arn: str = ""
    instance_role_arn: str = ""
    spot_fleet_role_arn: str = ""
    security_group_ids: tuple[str, ...] = ()
    vpc_id: str = ""
    lease_function_arn: str = ""
    sweep_function_arn: str = ""
    connectivity_function_arn: str = ""
    scheduler_role_arn: str = ""
    operator_policy_arn: str = ""
    operator_launch_policy_arn: str = ""
    region: str = ""
    stack_name: str = contract.STACK_NAME
    account_id: str = ""
    """The account `-setup` deployed into (empty in configs written before it was recorded)."""
    max_price_per_hour: str = ""
    """`ANNEX_DEFAULT_MAX_PRICE_PER_HOUR` as written (USD/hour); empty when no cap is set."""
    aws_fleet: bool = False
    """`ANNEX_DEFAULT_AWS_FLEET = True`: launch through EC2 Fleet by default."""
    defaults: UserDefaults = field(default_factory=UserDefaults)

    @classmethod
    def from_macros(cls, macros: Mapping[str, str], region: Optional[str] = None) -> Settings:
        """Build from `ANNEX_DEFAULT_*` macro values for `region` (default: the recorded one).

        Unknown macros are ignored; per-region forms win over plain ones (`regional_macros`).
        """
        recorded = {k.upper(): v for k, v in macros.items()}.get(contract.MACRO_AWS_REGION, "")
        region = (region or recorded).strip() or None
        macros = regional_macros(macros, region)
        values: dict[str, Any] = {}
        for output in contract.STACK_OUTPUTS:
            raw = macros.get(output.macro, "").strip()
            name = FIELD_BY_OUTPUT_KEY[output.key]
            if name == "security_group_ids":
                values[name] = tuple(s.strip() for s in raw.split(",") if s.strip())
            else:
                values[name] = raw
        values["region"] = region or ""
        values["account_id"] = macros.get(contract.MACRO_AWS_ACCOUNT_ID, "").strip()
        values["stack_name"] = (
            macros.get(contract.MACRO_STACK_NAME, "").strip() or contract.STACK_NAME
        )
        values["max_price_per_hour"] = macros.get(contract.MACRO_MAX_PRICE_PER_HOUR, "").strip()
        # HTCondor booleans: True/False, case-insensitive (also yes/no, 1/0 in practice).
        values["aws_fleet"] = macros.get(contract.MACRO_AWS_FLEET, "").strip().lower() in (
            "true",
            "yes",
            "1",
        )
        values["defaults"] = UserDefaults(
            **{
                name: (macros.get(macro, "").strip() or None)
                for name, macro in USER_DEFAULT_MACROS.items()
            }
        )
        return cls(**values)

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, str], region: str = "") -> Settings:
        """Build from stack outputs keyed by output key (as `setup` and test fixtures have them)."""
        macros = {contract.MACRO_BY_OUTPUT_KEY[k]: v for k, v in outputs.items()}
        macros[contract.MACRO_AWS_REGION] = region
        return cls.from_macros(macros)

    def value(self, output: contract.StackOutput) -> str:
        raw = getattr(self, FIELD_BY_OUTPUT_KEY[output.key])
        return ",".join(raw) if isinstance(raw, tuple) else str(raw)

    def missing(self, needed: tuple[contract.StackOutput, ...]) -> list[contract.StackOutput]:
        """The outputs in `needed` this configuration has no value for."""
        return [o for o in needed if not self.value(o)]

    @property
    def empty(self) -> bool:
        """True when no setup macro at all is present (setup never ran for this user)."""
        return not any(self.value(o) for o in contract.STACK_OUTPUTS)


def require_setup(
    settings: Settings, needed: tuple[contract.StackOutput, ...], region: str
) -> None:
    """Raise SetupMissing / SetupIncomplete when the user config lacks what a verb needs."""
    where = f" -aws-region {region}" if region else ""
    if settings.empty:
        raise SetupMissing(
            "no condor_annex setup is recorded"
            + (f" for {region}" if region else "")
            + " in your HTCondor user config",
            next_step=f"run `condor_annex -setup{where}`",
        )
    missing = settings.missing(needed)
    if missing:
        raise SetupIncomplete(
            "the setup recorded in your HTCondor user config lacks "
            + ", ".join(o.macro for o in missing),
            next_step=f"run `condor_annex -setup{where}` again (it updates in place)",
        )


def settings_field_names() -> list[str]:
    return [f.name for f in fields(Settings)]


def load_settings(config_file: Optional[Path] = None, region: Optional[str] = None) -> Settings:
    """Read the user's config file (or `config_file`) into Settings for `region` (default: the
    recorded `ANNEX_DEFAULT_AWS_REGION`)."""
    from condor_annex import user_config  # part A's module; imported late to keep this light

    path = config_file if config_file is not None else user_config.user_config_path()
    macros = user_config.read_annex_macros(path) if path.exists() else {}
    return Settings.from_macros(macros, region)


@dataclass
class AnnexClients:
    """The AWS clients the annex verbs use; made once per command from one session."""

    ec2: Any
    s3: Any
    scheduler: Any
    lambda_: Any
    region: str = ""
    account_id: str = ""

    pricing: Any = None
    """The Price List Query API (served from us-east-1 for every region); None: prices unknown."""
    ssm: Any = None
    """Systems Manager, for the public parameter naming the default image."""
    ec2_launch: Any = None
    """EC2 for launch calls only, without SDK retries: a capacity error moves on to the next
    pool at once (the SDKs retry `InsufficientInstanceCapacity`, a 500) and throttling is
    retried by the create's own back-off with the same client token."""

    @property
    def launcher(self) -> Any:
        return self.ec2_launch if self.ec2_launch is not None else self.ec2

    @classmethod
    def from_session(
        cls, region: Optional[str] = None, profile: Optional[str] = None
    ) -> AnnexClients:
        return cls._from(make_session(region=region or None, profile=profile), "")

    @classmethod
    def from_target(cls, target: AwsTarget) -> AnnexClients:
        """Every client from the one session `target` resolved (same account, same region)."""
        return cls._from(target.session, target.account_id)

    @classmethod
    def _from(cls, session: Any, account_id: str) -> AnnexClients:
        return cls(
            ec2=make_client(session, "ec2"),
            s3=make_client(session, "s3"),
            scheduler=make_client(session, "scheduler"),
            lambda_=make_client(session, "lambda"),
            region=session.region_name or "",
            account_id=account_id,
            pricing=make_client(session, "pricing", region_name=PRICING_API_REGION),
            ec2_launch=make_client(session, "ec2", max_attempts=1),
            ssm=make_client(session, "ssm"),
        )
