r"""IDTOKEN minting: the recipe of docs/RULES.md, "Security tokens", a token written by the real HTCondor, and where annex
tokens come from.

Our tokens are not byte-identical to HTCondor's: `condor_token_create` writes the header
`{"alg":"HS256","kid":"POOL"}` (ours adds `"typ":"JWT"`) and escapes `/` as `\/` in the claims.
What must agree is the key derivation and the signature, so each side verifies the other's
tokens: `REAL_TOKEN` below (from HTCondor's own tool) is verified by our code here, and tokens we
mint are accepted by a real collector in tests/integration/test_tokens_htcondor.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from condor_annex import contract, tokens
from condor_annex.errors import InvalidInput, SetupIncomplete

NOW = datetime(2026, 11, 25, 13, 0, 0, tzinfo=timezone.utc)
EXPIRES = NOW + timedelta(minutes=50)
JTI = "0123456789abcdef0123456789abcdef"
PINNED_TOKEN_SHA256 = "3b3aeb19611701e77b3ee7a7320868f4f86d69773489fdd90ab53836af307a82"

# Written by HTCondor 25.13.2's own tool (tarball in ../shared/htcondor), the pool key file holding
# `the pool password` scrambled with DE AD BE EF:
#   condor_token_create -identity condor_pool@pool.example.org -key POOL -authz READ \
#       -authz ADVERTISE_STARTD -authz ADVERTISE_MASTER -lifetime 3000      (TRUST_DOMAIN set)
REAL_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsImtpZCI6IlBPT0wifQ."
    "eyJleHAiOjE3OTYwOTAwMDQsImlhdCI6MTc5NjA4NzAwNCwiaXNzIjoicG9vbC5leGFtcGxlLm9yZyIsImp0aSI6ImFh"
    "ZDg0YjBlN2FiNzFmYWMxNzBhMWE5ZmRhMTMyYzg1Iiwic2NvcGUiOiJjb25kb3I6XC9SRUFEIGNvbmRvcjpcL0FEVkVS"
    "VElTRV9TVEFSVEQgY29uZG9yOlwvQURWRVJUSVNFX01BU1RFUiIsInN1YiI6ImNvbmRvcl9wb29sQHBvb2wuZXhhbXBs"
    "ZS5vcmcifQ.LFqXditY6A95QddBdSYAEkAlBjriTWYyGkS7KYdYNM8"
)
REAL_TOKEN_KEY = b"the pool password"
REAL_TOKEN_IAT = datetime.fromtimestamp(1796087004, tz=timezone.utc)

KEYS = {
    "ascii": b"the pool password",
    "random": bytes.fromhex("9f3a61c4e2d8b07a55c1e9f04b3d2a7718e6c0fd2b94a1e3d7c5086f3e21b9ac"),
    "nul": b"ab\x00cd\x00\x00ef",
    "64-byte": bytes(range(64)),
}


def _scramble(key: bytes) -> bytes:
    pad = bytes.fromhex("deadbeef")
    return bytes(b ^ pad[i % 4] for i, b in enumerate(key))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_token(key: bytes, *, issuer: str, subject: str) -> str:
    """The recipe, written out independently (cryptography's HKDF, not ours)."""
    jwt_key = HKDF(algorithm=SHA256(), length=32, salt=b"htcondor", info=b"master jwt").derive(
        key + key
    )
    header = _b64(b'{"alg":"HS256","typ":"JWT","kid":"POOL"}')
    claims = {
        "exp": int(EXPIRES.timestamp()),
        "iat": int(NOW.timestamp()),
        "iss": issuer,
        "jti": JTI,
        "scope": "condor:/READ condor:/ADVERTISE_STARTD condor:/ADVERTISE_MASTER",
        "sub": subject,
    }
    payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    sig = hmac.new(jwt_key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(sig)}"


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    decoded: dict[str, object] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_minted_token_matches_an_independent_computation_of_the_recipe(kind):
    key = KEYS[kind]
    minted = tokens.mint_idtoken(
        signing_key=key,
        issuer="pool.example.org",
        subject="condor_pool@pool.example.org",
        scopes=contract.ANNEX_TOKEN_AUTHZ,
        expires_at=EXPIRES,
        now=NOW,
        jti=JTI,
    )
    assert minted == _hand_token(
        key, issuer="pool.example.org", subject="condor_pool@pool.example.org"
    )


def test_minted_token_for_a_fixed_key_is_unchanged():
    # A regression pin of our own output (not HTCondor's; see REAL_TOKEN for that): catches an
    # unintended change of JSON layout or key derivation.
    minted = tokens.mint_idtoken(
        signing_key=b"the pool password",
        issuer="pool.example.org",
        subject="condor_pool@pool.example.org",
        scopes=contract.ANNEX_TOKEN_AUTHZ,
        expires_at=EXPIRES,
        now=NOW,
        jti=JTI,
    )
    assert hashlib.sha256(minted.encode()).hexdigest() == PINNED_TOKEN_SHA256


def test_token_written_by_real_condor_token_create_verifies_with_our_code():
    claims = tokens.verify_idtoken(REAL_TOKEN, signing_key=REAL_TOKEN_KEY, now=REAL_TOKEN_IAT)
    assert claims["sub"] == "condor_pool@pool.example.org"
    assert claims["iss"] == "pool.example.org"
    assert claims["scope"] == " ".join(f"condor:/{a}" for a in contract.ANNEX_TOKEN_AUTHZ)
    assert claims["exp"] - claims["iat"] == 3000


def test_real_token_with_its_header_changed_is_rejected():
    # The mutation "a token header changed": HTCondor signs the header bytes too.
    header = _b64(b'{"alg":"HS256","typ":"JWT","kid":"POOL"}')
    forged = ".".join([header, *REAL_TOKEN.split(".")[1:]])
    with pytest.raises(tokens.TokenInvalid, match="signature"):
        tokens.verify_idtoken(forged, signing_key=REAL_TOKEN_KEY, now=REAL_TOKEN_IAT)


def test_real_token_with_another_key_is_rejected():
    with pytest.raises(tokens.TokenInvalid, match="signature"):
        tokens.verify_idtoken(REAL_TOKEN, signing_key=b"the pool passwore", now=REAL_TOKEN_IAT)


def test_our_token_carries_the_same_claims_as_htcondors():
    real = tokens.verify_idtoken(REAL_TOKEN, signing_key=REAL_TOKEN_KEY, now=REAL_TOKEN_IAT)
    ours = tokens.verify_idtoken(
        tokens.mint_idtoken(
            signing_key=REAL_TOKEN_KEY,
            issuer=str(real["iss"]),
            subject=str(real["sub"]),
            scopes=contract.ANNEX_TOKEN_AUTHZ,
            expires_at=datetime.fromtimestamp(int(real["exp"]), tz=timezone.utc),
            now=REAL_TOKEN_IAT,
            jti=str(real["jti"]),
        ),
        signing_key=REAL_TOKEN_KEY,
        now=REAL_TOKEN_IAT,
    )
    assert ours == real


def test_derived_jwt_key_is_hkdf_of_the_doubled_key():
    key = KEYS["nul"]
    expected = HKDF(algorithm=SHA256(), length=32, salt=b"htcondor", info=b"master jwt").derive(
        key * 2
    )
    assert tokens.derive_jwt_key(key) == expected


def test_hkdf_matches_rfc5869_test_case_1():
    okm = tokens._hkdf_sha256(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_signing_key_file_is_unscrambled_with_deadbeef(tmp_path, kind):
    path = tmp_path / "POOL"
    path.write_bytes(_scramble(KEYS[kind]))
    assert tokens.read_pool_signing_key(path) == KEYS[kind]


def test_missing_signing_key_file_names_the_way_out(tmp_path):
    with pytest.raises(SetupIncomplete, match="-token-file"):
        tokens.read_pool_signing_key(tmp_path / "absent")


def test_token_carries_scope_expiry_issuer_subject_and_random_jti():
    make = lambda: tokens.mint_idtoken(  # noqa: E731
        signing_key=b"k",
        issuer="td",
        subject="who@td",
        scopes=["READ", "condor:/ADVERTISE_STARTD"],
        expires_at=EXPIRES,
        now=NOW,
    )
    first, second = _claims(make()), _claims(make())
    assert first["scope"] == "condor:/READ condor:/ADVERTISE_STARTD"
    assert first["exp"] == int(EXPIRES.timestamp())
    assert first["iat"] == int(NOW.timestamp())
    assert (first["iss"], first["sub"]) == ("td", "who@td")
    assert len(str(first["jti"])) == 32 and int(str(first["jti"]), 16) >= 0
    assert first["jti"] != second["jti"]


def test_verify_returns_claims_of_a_good_token():
    token = tokens.mint_idtoken(
        signing_key=b"k", issuer="td", subject="s@td", scopes=["READ"], expires_at=EXPIRES, now=NOW
    )
    assert tokens.verify_idtoken(token, signing_key=b"k", now=NOW)["sub"] == "s@td"


def test_verify_rejects_a_tampered_claim():
    token = tokens.mint_idtoken(
        signing_key=b"k", issuer="td", subject="s@td", scopes=["READ"], expires_at=EXPIRES, now=NOW
    )
    header, _payload, sig = token.split(".")
    claims = _claims(token)
    claims["scope"] = "condor:/ADMINISTRATOR"
    forged = _b64(json.dumps(claims, separators=(",", ":")).encode())
    with pytest.raises(tokens.TokenInvalid, match="signature"):
        tokens.verify_idtoken(f"{header}.{forged}.{sig}", signing_key=b"k", now=NOW)


def test_verify_rejects_the_wrong_key():
    token = tokens.mint_idtoken(
        signing_key=b"k", issuer="td", subject="s@td", scopes=["READ"], expires_at=EXPIRES, now=NOW
    )
    with pytest.raises(tokens.TokenInvalid, match="signature"):
        tokens.verify_idtoken(token, signing_key=b"other", now=NOW)


def test_verify_rejects_an_expired_token():
    token = tokens.mint_idtoken(
        signing_key=b"k", issuer="td", subject="s@td", scopes=["READ"], expires_at=EXPIRES, now=NOW
    )
    with pytest.raises(tokens.TokenInvalid, match="expired"):
        tokens.verify_idtoken(token, signing_key=b"k", now=EXPIRES)


def test_minting_refuses_an_expiry_in_the_past():
    with pytest.raises(InvalidInput):
        tokens.mint_idtoken(
            signing_key=b"k", issuer="td", subject="s", scopes=["READ"], expires_at=NOW, now=NOW
        )


# --- annex_token: the sources in order ----------------------------------------------------------


@pytest.fixture
def no_condor_env(tmp_path):
    """An environment with no HTCondor tools on PATH and no HTCondor config."""
    env = {"PATH": str(tmp_path / "empty-bin"), "HOME": str(tmp_path), "CONDOR_CONFIG": "/dev/null"}
    (tmp_path / "empty-bin").mkdir()
    return env


def _future() -> datetime:
    return datetime.now(timezone.utc) + timedelta(minutes=50)


def test_token_file_is_used_first(tmp_path, no_condor_env):
    path = tmp_path / "annex.token"
    path.write_text("# from condor_token_fetch\nh.c.s\n")
    path.chmod(0o600)
    got = tokens.annex_token(
        annex_name="a1", expires_at=_future(), token_file=path, env=no_condor_env
    )
    assert got == "h.c.s"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_token_file_readable_by_others_is_refused_with_chmod_hint(tmp_path, mode):
    path = tmp_path / "annex.token"
    path.write_text("h.c.s\n")
    path.chmod(mode)
    with pytest.raises(InvalidInput, match=f"chmod 600 {path}"):
        tokens.annex_token(annex_name="a1", expires_at=_future(), token_file=path)


def _fake_token_create(bin_dir: Path, log: Path) -> None:
    script = bin_dir / "condor_token_create"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {log}\necho fake.token.fromtool\n')
    script.chmod(0o755)


def test_condor_token_create_is_used_when_on_path(tmp_path, no_condor_env):
    log = tmp_path / "argv"
    _fake_token_create(tmp_path / "empty-bin", log)
    expires = _future()
    got = tokens.annex_token(
        annex_name="a1", expires_at=expires, trust_domain="pool.example.org", env=no_condor_env
    )
    assert got == "fake.token.fromtool"
    argv = log.read_text().split("\n")
    assert argv[argv.index("-identity") + 1] == "condor_pool@pool.example.org"
    authz = [argv[i + 1] for i, a in enumerate(argv) if a == "-authz"]
    assert authz == list(contract.ANNEX_TOKEN_AUTHZ)
    lifetime = int(argv[argv.index("-lifetime") + 1])
    assert 50 * 60 - 5 <= lifetime <= 50 * 60
    assert argv[argv.index("-key") + 1] == "POOL"


def test_condor_token_create_failure_does_not_echo_stdout(tmp_path, no_condor_env):
    script = tmp_path / "empty-bin" / "condor_token_create"
    script.write_text("#!/bin/sh\necho secret.leaked.token\necho 'no key POOL' >&2\nexit 1\n")
    script.chmod(0o755)
    with pytest.raises(Exception, match="no key POOL") as info:
        tokens.annex_token(
            annex_name="a1", expires_at=_future(), trust_domain="td", env=no_condor_env
        )
    assert "secret.leaked.token" not in str(info.value)


def test_minted_in_process_from_signing_key_when_no_tools(tmp_path, no_condor_env):
    key_file = tmp_path / "POOL"
    key_file.write_bytes(_scramble(KEYS["random"]))
    key_file.chmod(0o600)
    expires = _future()
    token = tokens.annex_token(
        annex_name="a1",
        expires_at=expires,
        signing_key_file=key_file,
        trust_domain="pool.example.org",
        env=no_condor_env,
    )
    claims = tokens.verify_idtoken(token, signing_key=KEYS["random"])
    assert claims["exp"] == int(expires.timestamp())
    assert claims["iss"] == "pool.example.org"
    assert claims["sub"] == "condor_pool@pool.example.org"
    assert claims["scope"] == tokens.scope_claim(contract.ANNEX_TOKEN_AUTHZ)


def test_signing_key_file_and_trust_domain_come_from_htcondor_config(tmp_path, no_condor_env):
    key_file = tmp_path / "keys" / "POOL"
    key_file.parent.mkdir()
    key_file.write_bytes(_scramble(KEYS["ascii"]))
    key_file.chmod(0o600)
    config = tmp_path / "condor_config"
    config.write_text(
        f"SEC_TOKEN_POOL_SIGNING_KEY_FILE = {key_file}\nTRUST_DOMAIN = cm.example.org\n"
    )
    env = {**no_condor_env, "CONDOR_CONFIG": str(config)}
    token = tokens.annex_token(annex_name="a1", expires_at=_future(), env=env)
    claims = tokens.verify_idtoken(token, signing_key=KEYS["ascii"])
    assert claims["iss"] == "cm.example.org"


def test_world_readable_signing_key_is_refused(tmp_path, no_condor_env):
    key_file = tmp_path / "POOL"
    key_file.write_bytes(_scramble(KEYS["ascii"]))
    key_file.chmod(0o644)
    with pytest.raises(InvalidInput, match="chmod 600"):
        tokens.annex_token(
            annex_name="a1",
            expires_at=_future(),
            signing_key_file=key_file,
            trust_domain="td",
            env=no_condor_env,
        )


def test_minting_without_a_trust_domain_says_what_to_set(tmp_path, no_condor_env):
    key_file = tmp_path / "POOL"
    key_file.write_bytes(_scramble(KEYS["ascii"]))
    key_file.chmod(0o600)
    with pytest.raises(InvalidInput, match="TRUST_DOMAIN"):
        tokens.annex_token(
            annex_name="a1", expires_at=_future(), signing_key_file=key_file, env=no_condor_env
        )


def test_check_private_file_accepts_owner_only_modes(tmp_path):
    path = tmp_path / "secret"
    path.write_text("x")
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    tokens.check_private_file(path, what="secret")
