"""Round 2 of bad input: every value and file is checked before anything is made in AWS.

Each case asserts exit 2 (or the verb's code), the one-line message naming the flag or file,
that nothing was left behind, and — where the point is "before anything is made" — that the
local AWS saw no call that changes anything.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from condor_annex import contract, tokens
from condor_annex.errors import InvalidInput, SetupMissing
from tests.integration.annex_env import (
    POOL_KEY,
    TRUST_DOMAIN,
    AnnexEnv,
    htcondor_params,
    tarball_members,
)
from tests.reliability.conftest import (
    check_refused,
    claim_left,
    claim_refused,
    cli,
    left_behind,
    od_args,
)

AREA = "input"
BAD = InvalidInput.exit_code
pytestmark = pytest.mark.xdist_group("reliability-input-checks")
mark = pytest.mark.reliability
_READ_ONLY = ("Describe", "List", "Get", "Head")


def _case(case: str, *values: Any) -> Any:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", case).strip("-").lower()[:40]
    return pytest.param(*values, marks=mark(AREA, case), id=slug)


def _changing_calls(env: AnnexEnv) -> list[str]:
    return [
        f"{c.service}:{c.operation}"
        for c in env.local.calls()
        if not c.operation.startswith(_READ_ONLY)
    ]


def with_defaults(env: AnnexEnv, argv: list[str]) -> list[str]:
    """`argv` plus the environment's defaults, except those `argv` sets itself (argparse keeps
    the last value given, so the defaults must not come after an override)."""
    defaults = env.cli_args()
    out: list[str] = []
    i = 0
    while i < len(defaults):
        flag = defaults[i]
        takes_value = i + 1 < len(defaults) and not defaults[i + 1].startswith("-")
        if flag not in argv:
            out += defaults[i : i + (2 if takes_value else 1)]
        i += 2 if takes_value else 1
    return [*argv, *out]


def refused_before_aws(
    env: AnnexEnv, observed: Any, argv: list[str], code: int, *mentions: str, **kw: Any
) -> None:
    """`check_refused`, plus: no call that changes anything reached the local AWS."""
    env.local.clear_calls()
    check_refused(env, observed, with_defaults(env, argv), code, *mentions, defaults=False, **kw)
    calls = _changing_calls(env)
    observed.check(f"AWS changes: {len(calls)}", calls == [], calls)


def _spot(name: str, *extra: str) -> list[str]:
    return ["-annex-name", name, "-slots", "11", *extra]


# --- names, sizes, regions ------------------------------------------------------------------


@mark(AREA, "annex name with a trailing newline `web\\n` (regex `$` matched before it)")
def test_name_with_trailing_newline_is_refused(env: AnnexEnv, observed: Any) -> None:
    refused_before_aws(env, observed, od_args(env, "web\n"), BAD, "-annex-name", "not allowed")


@pytest.mark.parametrize(
    "argv, mention",
    [
        _case(
            "-slots 11 with weight 0.01 (could launch 1,100 instances past the cap)",
            ["-aws-spot-instance-types", "m5.large:0.01"],
            "could launch 1100 instances",
        ),
        _case(
            "-slots 11 with weights 4 and 0.001 (the lightest type decides)",
            ["-aws-spot-instance-types", "m5.large:4,c5.large:0.001"],
            "could launch 11000 instances",
        ),
    ],
)
def test_fractional_weights_cannot_exceed_the_instance_cap(
    env: AnnexEnv, observed: Any, argv: list[str], mention: str
) -> None:
    refused_before_aws(env, observed, _spot("frac", *argv), BAD, mention, "next:")


@mark(AREA, "Spot Fleet config file: WeightedCapacity 0.001 with -slots 11")
def test_fractional_weight_in_config_file_is_refused(
    env: AnnexEnv, observed: Any, tmp_path: Path
) -> None:
    spec = {"ImageId": env.ami_id, "InstanceType": "m5.large", "WeightedCapacity": 0.001}
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"LaunchSpecifications": [spec]}))
    argv = _spot("fracfile", "-aws-spot-fleet-config-file", str(path))
    refused_before_aws(env, observed, argv, BAD, "could launch 11000 instances")


@pytest.mark.parametrize(
    "region",
    [
        _case("-aws-region `us east 1` (malformed)", "us east 1"),
        _case("-aws-region `US-EAST-1` (upper case)", "US-EAST-1"),
        _case("-aws-region `../../etc` (path-like)", "../../etc"),
    ],
)
def test_malformed_region_is_refused(env: AnnexEnv, observed: Any, region: str) -> None:
    argv = ["status", "-aws-region", region]
    refused_before_aws(env, observed, argv, BAD, "-aws-region", "not an AWS region name")


# --- START expressions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression, mention",
    [
        _case(
            "START `True) || (True` (would widen START to everyone)",
            "True) || (True",
            "closes nothing",
        ),
        _case("START `(True` (unclosed)", "(True", "never closed"),
        _case('START `Owner == "x` (unclosed string)', 'Owner == "x', "never closed"),
        _case("START `$(START)` (config macro)", "$(START)", "config macros"),
        _case("START `a; b` (two statements)", "RequestCpus < 4; True", "';'"),
        _case("START `Memory > > 1` (ClassAd syntax error)", "Memory > > 1", "ClassAd parser"),
        _case("START `   ` (blank)", "   ", "one non-empty line"),
    ],
)
def test_start_expression_that_could_widen_or_break_start_is_refused(
    env: AnnexEnv, observed: Any, expression: str, mention: str
) -> None:
    argv = od_args(env, "startx", "-start-expression", expression)
    refused_before_aws(env, observed, argv, BAD, "-start-expression", mention)


@mark(AREA, "START `TARGET.RequestMemory <= 4096` (narrows; HTCondor parses the result)")
def test_narrowing_start_expression_is_anded_and_parses(
    env: AnnexEnv, observed: Any, tmp_path: Path
) -> None:
    before = env.leftovers()
    run = cli(env, *od_args(env, "narrow", "-start-expression", "TARGET.RequestMemory <= 4096"))
    try:
        body = env.admin.s3.get_object(
            Bucket=env.settings.config_bucket, Key=contract.config_key("narrow")
        )["Body"].read()
        config_dir = tmp_path / "config.d"
        config_dir.mkdir()
        for name, data in tarball_members(body).items():
            if name.endswith(".config"):
                (config_dir / Path(name).name).write_bytes(data)
        start = htcondor_params(config_dir, ["START"])["START"] or ""
    finally:
        off = cli(env, "off", "-annex-name", "narrow")
    left = left_behind(env, before)
    observed.equal("exit {}", run.code, 0)
    observed.check(
        f"START on the node (parsed by htcondor2) ends `{start[-40:]}`",
        start.startswith("((TARGET.Owner =?= ")
        and start.endswith(") && (TARGET.RequestMemory <= 4096)"),
        start,
    )
    observed.equal("off exit {}", off.code, 0)
    claim_left(observed, left)


# --- collectors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        _case(
            "collector `host:port?sock=collector` (shared port) works end to end",
            "{a}?sock=collector",
        ),
        _case(
            "collector sinful `<ip:port?sock=collector>` works end to end", "<{a}?sock=collector>"
        ),
    ],
)
def test_shared_port_collector_forms_work_end_to_end(
    env: AnnexEnv, observed: Any, form: str, tmp_path: Path
) -> None:
    collector = form.format(a=env.collector.address)
    before = env.leftovers()
    name = "sock" + uuid.uuid4().hex[:6]
    run = cli(env, *with_defaults(env, od_args(env, name, "-collector", collector)), defaults=False)
    try:
        body = env.admin.s3.get_object(
            Bucket=env.settings.config_bucket, Key=contract.config_key(name)
        )["Body"].read()
        config_dir = tmp_path / "config.d"
        config_dir.mkdir()
        for member, data in tarball_members(body).items():
            if member.endswith(".config"):
                (config_dir / Path(member).name).write_bytes(data)
        written = htcondor_params(config_dir, ["COLLECTOR_HOST", "CONDOR_HOST"])
    finally:
        off = cli(env, "off", "-annex-name", name)
    left = left_behind(env, before)
    observed.equal("exit {}", run.code, 0)
    observed.check(
        "COLLECTOR_HOST on the node (parsed by htcondor2) is the form given",
        written["COLLECTOR_HOST"] == collector,
        written,
    )
    observed.equal("CONDOR_HOST {}", written["CONDOR_HOST"], "127.0.0.1")
    observed.equal("off exit {}", off.code, 0)
    claim_left(observed, left)


@pytest.mark.parametrize(
    "collector, mention",
    [
        _case(
            "collector `cm1,cm2` (two collectors)",
            "cm1.example.org,cm2.example.org",
            "one collector",
        ),
        _case("collector `cm:99999` (port out of range)", "cm.example.org:99999", "not a TCP port"),
        _case("collector `cm:96l8` (typo in the port)", "cm.example.org:96l8", "-collector"),
        _case(
            "collector `cm:9618?sock=a b` (space in the shared-port name)",
            "cm:9618?sock=a b",
            "-collector",
        ),
    ],
)
def test_collector_forms_htcondor_refuses_are_refused_first(
    env: AnnexEnv, observed: Any, collector: str, mention: str
) -> None:
    argv = od_args(env, "coll", "-collector", collector)
    refused_before_aws(env, observed, argv, BAD, mention)


# --- token files ------------------------------------------------------------------------------


def _token(
    *, scopes: Any = contract.ANNEX_TOKEN_AUTHZ, lifetime: int = 600, issuer: str = TRUST_DOMAIN
) -> str:
    now = datetime.now(timezone.utc)
    return tokens.mint_idtoken(
        signing_key=POOL_KEY,
        issuer=issuer,
        subject=f"condor_pool@{TRUST_DOMAIN}",
        scopes=scopes,
        expires_at=now + timedelta(seconds=lifetime),
        now=now - timedelta(seconds=1200),
    )


def _token_file(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "annex.token"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def _strip_claim(token: str, claim: str) -> str:
    header, claims, signature = token.split(".")
    data = json.loads(tokens._b64url_decode(claims))
    data.pop(claim, None)
    return f"{header}.{tokens._b64url(json.dumps(data).encode())}.{signature}"


@pytest.mark.parametrize(
    "make, mention",
    [
        _case("-token-file: not a JWT (three dots of garbage)", lambda: "a.b.c", "not a JWT"),
        _case("-token-file: expired 10 minutes ago", lambda: _token(lifetime=-600), "expired at"),
        _case(
            "-token-file: never expires (no exp claim)",
            lambda: _strip_claim(_token(), "exp"),
            "never expires",
        ),
        _case(
            "-token-file: outlives the lease (30 days vs -duration 1h)",
            lambda: _token(lifetime=30 * 86400),
            "outlives the lease",
        ),
        _case(
            "-token-file: ADMINISTRATOR and WRITE scopes",
            lambda: _token(scopes=("READ", "WRITE", "ADMINISTRATOR")),
            "ADMINISTRATOR, WRITE",
        ),
        _case(
            "-token-file: no scope claim (all of the identity's rights)",
            lambda: _strip_claim(_token(), "scope"),
            "carries no scope",
        ),
        _case(
            "-token-file: issued by another pool",
            lambda: _token(issuer="other.example.org"),
            "other.example.org",
        ),
        _case(
            "-token-file: Latin-1 bytes, not UTF-8",
            lambda: b"\xff\xfe token \xe9",
            "not UTF-8",
        ),
    ],
)
def test_unusable_token_file_is_refused_before_anything_is_made(
    env: AnnexEnv, observed: Any, tmp_path: Path, make: Any, mention: str
) -> None:
    path = _token_file(tmp_path, make())
    argv = od_args(env, "tok", "-token-file", str(path), "-duration", "1h")
    refused_before_aws(env, observed, argv, BAD, "-token-file", mention, "next:")


@mark(AREA, "-token-file: a good execute-node token that ends before the lease is used")
def test_good_token_file_is_accepted(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    path = _token_file(tmp_path, _token(lifetime=1800))
    before = env.leftovers()
    run = cli(env, *od_args(env, "goodtok", "-token-file", str(path), "-duration", "1h"))
    off = cli(env, "off", "-annex-name", "goodtok")
    left = left_behind(env, before)
    observed.equal("exit {}", run.code, 0)
    observed.equal("off exit {}", off.code, 0)
    claim_left(observed, left)


# --- file arguments ---------------------------------------------------------------------------


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    "flag, make, mention",
    [
        _case("-token-file is a directory", "-token-file", lambda p: p, "is a directory"),
        _case("-token-file is a named pipe (would block)", "-token-file", _fifo, "named pipe"),
        _case(
            "-aws-user-data-file is a directory",
            "-aws-user-data-file",
            lambda p: p,
            "is a directory",
        ),
        _case(
            "-aws-user-data-file does not exist",
            "-aws-user-data-file",
            lambda p: p / "absent",
            "does not exist",
        ),
        _case(
            "-pool-signing-key-file is a directory",
            "-pool-signing-key-file",
            lambda p: p,
            "-pool-signing-key-file",
        ),
    ],
)
def test_file_argument_of_the_wrong_kind_is_refused(
    env: AnnexEnv, observed: Any, tmp_path: Path, flag: str, make: Any, mention: str
) -> None:
    target = tmp_path / "d"
    target.mkdir(mode=0o700)
    path = make(target)
    argv = [a for a in od_args(env, "files") if a != "-yes"]
    argv = [*argv, flag, str(path)]
    refused_before_aws(env, observed, argv, BAD, flag, mention)


@mark(AREA, "Spot Fleet config file in Latin-1, not UTF-8")
def test_spot_config_not_utf8_is_refused(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    path.write_bytes(b'{"LaunchSpecifications": [{"InstanceType": "m5.large", "x": "\xe9"}]}')
    argv = _spot("latin", "-aws-spot-fleet-config-file", str(path))
    refused_before_aws(env, observed, argv, BAD, "-aws-spot-fleet-config-file", "not UTF-8")


@pytest.mark.parametrize(
    "make, mention",
    [
        _case("-config-file is a directory", lambda p: p, "is a directory"),
        _case(
            "-config-file in Latin-1, not UTF-8",
            lambda p: (p / "uc").write_bytes(b"X = \xe9\n") and p / "uc",
            "not UTF-8",
        ),
    ],
)
def test_unreadable_user_config_is_refused(
    env: AnnexEnv, observed: Any, tmp_path: Path, make: Any, mention: str
) -> None:
    path = make(tmp_path)
    argv = [*od_args(env, "uc"), "-config-file", str(path)]
    # `-config-file` given last wins over the environment's (argparse keeps the last value).
    refused_before_aws(env, observed, argv, BAD, "user config", mention)


# --- Spot Fleet config values the EC2 API would refuse --------------------------------------


@pytest.mark.parametrize(
    "extra, mention",
    [
        _case(
            "Spot Fleet config: SpotPrice 0.5 as a number (EC2 wants a string)",
            {"SpotPrice": 0.5},
            "SpotPrice",
        ),
        _case(
            'Spot Fleet config: EbsOptimized "yes" (EC2 wants a boolean)',
            {"EbsOptimized": "yes"},
            "EbsOptimized",
        ),
        _case(
            "Spot Fleet config: Placement.AvailabilityZone 5 (EC2 wants a string)",
            {"Placement": {"AvailabilityZone": 5}},
            "AvailabilityZone",
        ),
    ],
)
def test_spot_config_value_of_the_wrong_type_is_refused_before_any_call(
    env: AnnexEnv, observed: Any, tmp_path: Path, extra: dict[str, Any], mention: str
) -> None:
    spec = {"ImageId": env.ami_id, "InstanceType": "m5.large", **extra}
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"LaunchSpecifications": [spec]}))
    argv = ["-annex-name", "types", "-slots", "2", "-aws-spot-fleet-config-file", str(path)]
    refused_before_aws(env, observed, argv, BAD, "EC2 API would refuse", mention)


@mark(AREA, "Spot Fleet config: ReplaceUnhealthyInstances `sometimes` (EC2 wants a boolean)")
def test_spot_config_bad_fleet_option_is_refused(
    env: AnnexEnv, observed: Any, tmp_path: Path
) -> None:
    spec = {"ImageId": env.ami_id, "InstanceType": "m5.large"}
    path = tmp_path / "fleet.json"
    path.write_text(
        json.dumps({"ReplaceUnhealthyInstances": "sometimes", "LaunchSpecifications": [spec]})
    )
    argv = ["-annex-name", "when", "-slots", "2", "-aws-spot-fleet-config-file", str(path)]
    refused_before_aws(env, observed, argv, BAD, "ReplaceUnhealthyInstances")


# --- records and regions ----------------------------------------------------------------------


@mark(AREA, "corrupt lease record (not JSON) for the name being extended")
def test_corrupt_lease_record_is_a_named_error(env: AnnexEnv, observed: Any) -> None:
    key = contract.lease_key("corrupt")
    env.admin.s3.put_object(Bucket=env.settings.config_bucket, Key=key, Body=b"\x00garbage")
    try:
        run = cli(env, "-annex-name", "corrupt", "-duration", "2h")
        claim_refused(observed, run, 1, "cannot be read", "condor_annex off -annex-name corrupt")
        observed.check("not an internal error", "internal error" not in run.err, run.err)
    finally:
        cli(env, "off", "-annex-name", "corrupt")
    assert contract.lease_key("corrupt") not in env.objects()


@mark(AREA, "`off` in another region than the recorded setup")
def test_off_in_another_region_is_refused_and_terminates_nothing(
    env: AnnexEnv, observed: Any
) -> None:
    before = env.leftovers()
    run = cli(env, *od_args(env, "elsewhere"))
    assert run.code == 0, run.err
    made = left_behind(env, before)
    try:
        env.local.clear_calls()
        off = cli(env, "off", "-annex-name", "elsewhere", "-aws-region", "eu-west-3")
        calls = _changing_calls(env)
        still = left_behind(env, before)
        claim_refused(observed, off, SetupMissing.exit_code, "eu-west-3", "-setup")
        observed.equal("AWS changes: {}", len(calls), 0)
        observed.check("the annex's instance still runs", still == made, (still, made))
    finally:
        assert cli(env, "off", "-annex-name", "elsewhere").code == 0
    assert not any(left_behind(env, before).values())


@pytest.mark.parametrize(
    "verb",
    [
        _case("`status` in another region than the recorded setup", ["status"]),
        _case(
            "create in another region than the recorded setup",
            ["-annex-name", "other", "-count", "1", "-aws-on-demand-ami-id", "ami-1"],
        ),
    ],
)
def test_other_verbs_in_another_region_are_refused(
    env: AnnexEnv, observed: Any, verb: list[str]
) -> None:
    argv = [*verb, "-aws-region", "ap-south-2"]
    refused_before_aws(env, observed, argv, SetupMissing.exit_code, "ap-south-2", "-aws-region")
