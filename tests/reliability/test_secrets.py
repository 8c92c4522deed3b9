"""Secrets: refused when others can read them, never printed, private inside the tarball."""

from __future__ import annotations

import functools
import io
import json
import stat
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from condor_annex import contract, tokens
from condor_annex.errors import CredentialsError, InvalidInput
from tests.integration.annex_env import POOL_KEY, TRUST_DOMAIN, AnnexEnv, write_scrambled_key
from tests.reliability.conftest import (
    assert_no_secret,
    check_refused,
    claim_left,
    cli,
    left_behind,
    od_args,
)

AREA = "secrets"
pytestmark = pytest.mark.xdist_group("reliability-secrets")
mark = pytest.mark.reliability


@functools.lru_cache(maxsize=1)
def _admin_token() -> str:
    """A real execute-node IDTOKEN that ends before the default lease (-token-file checks it)."""
    now = datetime.now(timezone.utc)
    return tokens.mint_idtoken(
        signing_key=POOL_KEY,
        issuer=TRUST_DOMAIN,
        subject=f"condor_pool@{TRUST_DOMAIN}",
        scopes=contract.ANNEX_TOKEN_AUTHZ,
        expires_at=now + timedelta(minutes=45),
        now=now,
    )


def _token_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "annex.token"
    path.write_text(_admin_token() + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(0o644, marks=mark(AREA, "-token-file world-readable (0644)"), id="0644"),
        pytest.param(0o640, marks=mark(AREA, "-token-file group-readable (0640)"), id="0640"),
        pytest.param(0o602, marks=mark(AREA, "-token-file world-writable (0602)"), id="0602"),
    ],
)
def test_token_file_readable_by_others_is_refused(
    env: AnnexEnv, observed: Any, tmp_path: Path, mode: int
) -> None:
    path = _token_file(tmp_path, mode)
    run = check_refused(
        env, observed, od_args(env, "leaky", "-token-file", str(path)),
        InvalidInput.exit_code, f"chmod 600 {path}",
    )  # fmt: skip
    assert _admin_token() not in run.err


@mark(AREA, "-pool-signing-key-file world-readable (0644)")
def test_world_readable_pool_key_is_refused(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    key = tmp_path / "POOL"
    write_scrambled_key(key, POOL_KEY)
    key.chmod(0o644)
    argv = [
        *od_args(env, "leakykey"),
        "-pool-signing-key-file", str(key), "-config-file", str(env.config_file),
        "-collector", env.collector.address, "-trust-domain", TRUST_DOMAIN, "-yes",
    ]  # fmt: skip
    check_refused(env, observed, argv, InvalidInput.exit_code, "chmod 600", defaults=False)


@mark(AREA, "-token-file that holds no token (comments only)")
def test_token_file_without_token_is_refused(env: AnnexEnv, observed: Any, tmp_path: Path) -> None:
    path = tmp_path / "empty.token"
    path.write_text("# nothing here\n")
    path.chmod(0o600)
    argv = od_args(env, "notoken", "-token-file", str(path))
    check_refused(env, observed, argv, InvalidInput.exit_code, "holds no token")


@mark(AREA, "successful create, text and --json: no token or key in any output")
def test_create_output_holds_no_secret_and_tarball_token_is_private(
    env: AnnexEnv, observed: Any, tmp_path: Path
) -> None:
    path = _token_file(tmp_path, 0o600)
    before = env.leftovers()
    text = cli(env, *od_args(env, "quiet", "-token-file", str(path)))
    doc = cli(env, *od_args(env, "quietjson", "-token-file", str(path), "--json"))
    body = env.admin.s3.get_object(
        Bucket=env.settings.config_bucket, Key=contract.config_key("quiet")
    )["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
        member = archive.getmember(contract.TARBALL_TOKEN_FILE)
        inside = archive.extractfile(member).read().decode()  # type: ignore[union-attr]
    head = env.admin.s3.head_object(
        Bucket=env.settings.config_bucket, Key=contract.config_key("quiet")
    )
    for name in ("quiet", "quietjson"):
        cli(env, "off", "-annex-name", name)
    left = left_behind(env, before)
    observed.check(
        f"exits {text.code}/{doc.code}", text.code == 0 and doc.code == 0, (text.err, doc.err)
    )
    observed.holds("--json output is JSON", lambda: json.loads(doc.out))
    observed.check("the tarball holds the admin's token", _admin_token() in inside)
    observed.holds(
        "outputs free of the token",
        lambda: assert_no_secret(text.out, text.err, doc.out, doc.err, extra=(_admin_token(),)),
    )
    observed.equal("tarball token member mode {:04o}", stat.S_IMODE(member.mode), 0o600)
    observed.check(
        f"object encryption {head.get('ServerSideEncryption')}",
        head.get("ServerSideEncryption") in ("AES256", "aws:kms"),
    )
    claim_left(observed, left)


@mark(AREA, "create failing after the token was read (launch refused): error holds no token")
def test_failure_after_token_does_not_print_it(
    env: AnnexEnv, observed: Any, tmp_path: Path
) -> None:
    path = _token_file(tmp_path, 0o600)
    argv = od_args(
        env, "failtok", "-token-file", str(path), "-aws-subnet-id", "subnet-00000000dead"
    )
    # A subnet outside the setup's VPC: the operator's launch policy refuses the launch.
    run = check_refused(env, observed, argv, CredentialsError.exit_code, "launch")
    observed.check("failed after the token step", "  token: done" in run.err, run.err)
    observed.check("error holds no token", _admin_token() not in run.out + run.err)
