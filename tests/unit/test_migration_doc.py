"""docs/MIGRATION.md: every old condor_annex flag and ANNEX_DEFAULT_* macro with its equivalent.

The tables below are the source; the test renders them and compares with the page, and checks
each claimed equivalent against the real parser (the flag exists) and the real settings loader
(the macro is read, per region too). Regenerate the page after a change:

    .venv/bin/python -m tests.unit.test_migration_doc > docs/MIGRATION.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from condor_annex import contract
from condor_annex.annex_settings import USER_DEFAULT_MACROS, Settings
from condor_annex.cli import parser as cli_parser

PAGE = Path(__file__).resolve().parents[2] / "docs" / "MIGRATION.md"

# (old flag, equivalent here: flags/verbs that must exist in the parser, notes)
FLAGS: list[tuple[str, tuple[str, ...], str]] = [
    (
        "status [condor_status args]",
        ("status", "--"),
        "`status -- ARGS`: ARGS go to condor_status, constrained to the annex; without `--` this tool's own table (`-json` for JSON).",
    ),
    (
        "off [condor_off args]",
        ("off", "-peaceful", "-graceful", "-fast"),
        "Drains first: peaceful shutdown (`-graceful`/`-fast` as condor_off means them), terminate when the annex's masters have left the pool or after `-drain-timeout` (default 30 min, `0` = now). Needs `-annex-name`.",
    ),
    (
        "-aws-region R",
        ("-aws-region",),
        "Also selects that region's `<region>.ANNEX_DEFAULT_*` macros and per-region setup.",
    ),
    (
        "-aws-ec2-url / -aws-events-url / -aws-lambda-url / -aws-s3-url",
        (),
        "Not supported: endpoints come from the AWS SDK settings (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`).",
    ),
    (
        "-aws-user-data-file F",
        ("-aws-user-data-file",),
        "On-demand and Spot Fleet; with the default image it travels beside the first-boot script as multipart MIME.",
    ),
    ("-aws-user-data S", ("-aws-user-data",), "As above."),
    (
        "-aws-default-user-data[-file]",
        (),
        "Not supported: a flag always replaces a Spot Fleet file's `UserData`; leave the flag out to keep the file's.",
    ),
    (
        "-annex-name N",
        ("-annex-name",),
        "Names are checked (letters, digits, `_`, `-`; at most 27), not truncated.",
    ),
    (
        "-config-dir DIR",
        ("-config-dir",),
        "DIR's files (no subdirectories; checked by HTCondor's parser) land in config.d as `60-<name>`, after the annex's own file. The old tool put them in /etc/condor.",
    ),
    ("-owner U[, U]*", ("-owner",), "A comma/space list; START admits any of them."),
    ("-no-owner", ("-no-owner",), "Anyone's jobs (that ask for the annex) may run."),
    (
        "-aws-spot-fleet-config-file F",
        ("-aws-spot-fleet-config-file",),
        "`-` reads stdin; default `ANNEX_DEFAULT_SFR_CONFIG_FILE`. The file's fleet role, instance profile and security groups are replaced by the setup's, with a note.",
    ),
    (
        "-aws-access-key-file / -aws-secret-key-file (-aws-public-key-file / -aws-private-key-file)",
        ("-aws-profile",),
        "Credentials come from the AWS SDK chain; pick a profile with `-aws-profile`. `-setup ACCESS SECRET` still takes key files.",
    ),
    (
        "-aws-spot-fleet-lease-function-arn / -aws-on-demand-lease-function-arn",
        (),
        "Not supported: one lease function for both kinds, from the setup.",
    ),
    (
        "-aws-on-demand-instance-type T",
        ("-aws-on-demand-instance-type",),
        "Default `ANNEX_DEFAULT_ODI_INSTANCE_TYPE`, else m5.large; a comma list gives fallback types.",
    ),
    (
        "-aws-on-demand-key-name K",
        ("-aws-on-demand-key-name", "-aws-key-name"),
        "Default `ANNEX_DEFAULT_ODI_KEY_NAME`; the setup opens no SSH port.",
    ),
    (
        "-aws-on-demand-security-group-ids G",
        (),
        "Not supported: the setup's security group (it admits only the pool's port from the pool's CIDRs).",
    ),
    (
        "-aws-on-demand-ami-id A",
        ("-aws-on-demand-ami-id",),
        "Default `ANNEX_DEFAULT_ODI_IMAGE_ID`, else the region's Amazon Linux 2023 (public SSM parameter) made annex-ready at first boot; `-check-image A` says which.",
    ),
    (
        "-aws-on-demand-instance-profile-arn A",
        (),
        "Not supported: the setup's instance profile (the agent finds the config bucket through it).",
    ),
    (
        "-aws-s3-config-path B/K",
        (),
        "Not supported: always `config-<annex>.tar.gz` in the setup's bucket.",
    ),
    ("-tag NAME VALUE", ("-tag",), "`aws:` and `htcondor:` keys are reserved."),
    (
        "-duration H",
        ("-duration",),
        "Decimal hours, or `s/m/h/d` units; default `ANNEX_DEFAULT_LEASE_DURATION` (seconds), else 50 min.",
    ),
    (
        "-idle H",
        ("-idle",),
        "As `-duration`; default `ANNEX_DEFAULT_UNCLAIMED_TIMEOUT` (seconds), else 15 min.",
    ),
    ("-slots N", ("-slots",), "Spot Fleet."),
    ("-count N", ("-count",), "On-demand."),
    (
        "-aws-spot-fleet / -aws-on-demand",
        (),
        "Not needed: the kind follows from `-slots` / `-count`.",
    ),
    ("-help", ("-help",), "Exit status 0."),
    (
        "-check-setup",
        ("-check-setup",),
        "Also checks the stack's outputs, functions and connectivity.",
    ),
    ("-request-id ID", (), "Not supported."),
    (
        "-setup [ACCESS SECRET [CF-URL]] / -setup FROM INSTANCE",
        ("-setup",),
        "One CDK stack; needs `-pool-cidr`. Without key files the SDK chain is used (instance roles included). A second region's setup is recorded under per-region macros.",
    ),
    (
        "-status [-classad]",
        ("-status", "-classad"),
        "`-classad` prints one `AnnexInstance` ad per instance (condor_status `-ads` reads them).",
    ),
    ("-yes", ("-yes",), "Also for `off` and `-destroy-setup`."),
]

# (macro, status, notes); status: "read" (honoured), "written" (by -setup, read), "not read"
MACROS: list[tuple[str, str, str]] = [
    (
        "ANNEX_DEFAULT_AWS_REGION",
        "read",
        "The region when `-aws-region` is absent; written by the first `-setup`.",
    ),
    ("ANNEX_DEFAULT_ODI_INSTANCE_TYPE", "read", "Default `-aws-on-demand-instance-type`."),
    ("ANNEX_DEFAULT_ODI_IMAGE_ID", "read", "Default `-aws-on-demand-ami-id`."),
    ("ANNEX_DEFAULT_ODI_KEY_NAME", "read", "Default `-aws-key-name`."),
    ("ANNEX_DEFAULT_LEASE_DURATION", "read", "Default `-duration`, in seconds."),
    ("ANNEX_DEFAULT_UNCLAIMED_TIMEOUT", "read", "Default `-idle`, in seconds."),
    (
        "ANNEX_DEFAULT_SFR_CONFIG_FILE",
        "read",
        "Default `-aws-spot-fleet-config-file` for `-slots` without `-aws-spot-instance-types`.",
    ),
    ("ANNEX_DEFAULT_S3_BUCKET", "written", "The setup's config bucket."),
    (
        "ANNEX_DEFAULT_ODI_SECURITY_GROUP_IDS",
        "written",
        "The setup's security group (also for Spot Fleet).",
    ),
    (
        "ANNEX_DEFAULT_ODI_INSTANCE_PROFILE_ARN",
        "written",
        "The setup's instance profile (also for Spot Fleet).",
    ),
    (
        "ANNEX_DEFAULT_CONNECTIVITY_FUNCTION_ARN",
        "written",
        "This tool's connectivity function (a different event format from the old one).",
    ),
    (
        "ANNEX_DEFAULT_ODI_LEASE_FUNCTION_ARN / ANNEX_DEFAULT_SFR_LEASE_FUNCTION_ARN",
        "not read",
        "One lease function for both kinds: `ANNEX_DEFAULT_LEASE_FUNCTION_ARN`, written by `-setup`.",
    ),
    (
        "ANNEX_DEFAULT_ACCESS_KEY_FILE / ANNEX_DEFAULT_SECRET_KEY_FILE",
        "not read",
        "Credentials come from the AWS SDK chain (`-aws-profile`).",
    ),
    (
        "ANNEX_DEFAULT_EC2_URL / _CWE_URL / _LAMBDA_URL / _S3_URL / _CF_URL",
        "not read",
        "Endpoints come from the AWS SDK settings (`AWS_ENDPOINT_URL_<SERVICE>`).",
    ),
    (
        "ANNEX_COLLECTOR",
        "not read",
        "The pool is `-collector` or `COLLECTOR_HOST`; nodes join as execute nodes (no direct attach).",
    ),
    (
        "ANNEX_TOKEN_LIFETIME / ANNEX_TOKEN_KEY_NAME / ANNEX_TOKEN_DOMAIN",
        "not read",
        "The node token lasts as long as the lease, is minted with the POOL key, and names `-trust-domain` or `TRUST_DOMAIN`.",
    ),
    (
        "ANNNEX_PASSWORD_FILE",
        "not read",
        "No pool password is shipped to the nodes; they get a scoped token.",
    ),
    ("ANNEX_PROVISIONING_DELAY", "not read", "A Spot Fleet's `ValidUntil` is the lease end."),
    (
        "ANNEX_LOG / ANNEX_AUDIT_LOG / ANNEX_GAHP* / ANNEX_DEBUG / ANNEX_COMMAND_STATE",
        "not read",
        "No GAHP and no log files: progress on stderr, `-json` output.",
    ),
]

PER_REGION_NOTE = (
    "Every macro marked read or written may also be given per region, as the old tool wrote "
    "them: `<region>.ANNEX_DEFAULT_*` with the region's `-` turned into `_` (`us_east_1.`). "
    "The value used is: the flag > the per-region macro > the plain macro > the built-in "
    "default. Plain setup macros belong to the region in `ANNEX_DEFAULT_AWS_REGION`; another "
    "region's `-setup` writes per-region names and leaves them alone. Macros are read from "
    "the HTCondor user config file only (`USER_CONFIG_FILE`, default `~/.condor/user_config`)."
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    lines = [
        "# Migrating from the old condor_annex",
        "",
        "Generated from `tests/unit/test_migration_doc.py`, which also checks every equivalent "
        "against the parser and the settings loader. The old tool's inventory: "
        "`shared/research/reference-condor-annex.md`.",
        "",
        "## Command-line options",
        "",
        "| old | here | notes |",
        "|---|---|---|",
    ]
    for old, new, note in FLAGS:
        here = ", ".join(f"`{n}`" for n in new) if new else "—"
        lines.append(f"| `{_cell(old)}` | {here} | {_cell(note)} |")
    lines += [
        "",
        "## `ANNEX_DEFAULT_*` and other `ANNEX_*` macros",
        "",
        "| macro | here | notes |",
        "|---|---|---|",
    ]
    for macro, status, note in MACROS:
        lines.append(f"| `{_cell(macro)}` | {status} | {_cell(note)} |")
    lines += [
        "",
        PER_REGION_NOTE,
        "",
        "## Images and tarballs",
        "",
        "- Without an image option the annex boots the region's Amazon Linux 2023 and installs "
        'HTCondor and the agent at first boot (docs/AGENT.md, "Default image").',
        "- The agent accepts the old tool's tarballs (`config.d/`, `tokens.d/`, `passwords.d/` "
        "for /etc/condor) and the customization guide's plain config files besides this CLI's "
        'own (docs/AGENT.md, "Tarball layouts").',
        "",
    ]
    return "\n".join(lines)


def _option_strings() -> set[str]:
    parser = cli_parser.build_parser()
    strings = {s for action in parser._actions for s in action.option_strings}
    return strings | set(cli_parser.VERBS) | {cli_parser.PASSTHROUGH}


def test_every_equivalent_flag_exists_in_the_parser() -> None:
    known = _option_strings()
    for old, new, _ in FLAGS:
        for flag in new:
            assert flag in known, f"{old}: {flag} is not an option of condor_annex"


def test_flags_without_an_equivalent_say_why() -> None:
    for old, new, note in FLAGS:
        if not new:
            assert note.startswith(("Not supported", "Not needed")), old


def test_every_macro_marked_read_or_written_is_read_by_the_settings_loader_per_region_too() -> None:
    setup_macros = {o.macro for o in contract.STACK_OUTPUTS}
    for macro, status, _ in MACROS:
        if status == "not read":
            continue
        assert status in ("read", "written"), macro
        for region_form in (False, True):
            name = f"us_west_2.{macro}" if region_form else macro
            macros = {contract.MACRO_AWS_REGION: "us-west-2", name: "probe-value"}
            if macro == contract.MACRO_AWS_REGION:
                assert Settings.from_macros({macro: "us-west-2"}).region == "us-west-2"
                continue
            settings = Settings.from_macros(macros, "us-west-2")
            values = [*vars(settings.defaults).values(), *vars(settings).values()]
            flat = [
                v for value in values for v in (value if isinstance(value, tuple) else (value,))
            ]
            assert "probe-value" in flat, f"{name} is not read"
        assert (
            macro in setup_macros
            or macro in USER_DEFAULT_MACROS.values()
            or (macro == contract.MACRO_AWS_REGION)
        )


def test_every_user_default_macro_is_in_the_table() -> None:
    listed = {m for m, _, _ in MACROS}
    assert set(USER_DEFAULT_MACROS.values()) <= listed


def test_the_page_is_the_rendered_tables() -> None:
    if not PAGE.exists():
        pytest.fail(f"{PAGE} is missing: run python -m tests.unit.test_migration_doc > {PAGE}")
    assert PAGE.read_text() == render(), (
        "docs/MIGRATION.md is stale: run .venv/bin/python -m tests.unit.test_migration_doc > "
        "docs/MIGRATION.md"
    )


if __name__ == "__main__":
    argparse.ArgumentParser(description="Print docs/MIGRATION.md.").parse_args()
    print(render(), end="")
