"""HTCondor IDTOKENs for annex execute nodes (docs/RULES.md, "Security tokens").

An annex token lets an execute node READ from the pool and advertise its startd and master
(`contract.ANNEX_TOKEN_AUTHZ`), and it expires with the annex's lease. Sources, in order:

1. a token file the admin passes (`-token-file`), refused unless only its owner can read it;
2. `condor_token_create` when the HTCondor tools are on PATH (it knows the pool's config);
3. minting in-process from the pool signing key, with the key and signature HTCondor uses
   (a real collector accepts these tokens; the header bytes differ from condor_token_create's):
   unscramble the key file (XOR with the repeating bytes DE AD BE EF), double the POOL key,
   HKDF-SHA256(salt b"htcondor", info b"master jwt", 32 bytes), HS256 over the JWT.

Tokens are secrets: nothing here logs one, and error messages never include one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from condor_annex import contract
from condor_annex.errors import AnnexError, InvalidInput, SetupIncomplete
from condor_annex.files import read_input_text
from condor_annex.user_config import condor_params

POOL_KEY_ID = "POOL"
"""HTCondor's key id for the pool signing key; only this key is doubled before HKDF."""
SCRAMBLE_BYTES = bytes((0xDE, 0xAD, 0xBE, 0xEF))
HKDF_SALT = b"htcondor"
HKDF_INFO = b"master jwt"
JWT_KEY_LENGTH = 32
DEFAULT_POOL_SIGNING_KEY_FILE = Path("/etc/condor/passwords.d/POOL")
TOKEN_CREATE_COMMAND = "condor_token_create"  # noqa: S105 (a program name)
SCOPE_PREFIX = "condor:/"

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


class TokenInvalid(AnnexError):
    """A token failed verification (bad signature, malformed, or expired)."""


# --- The recipe ---------------------------------------------------------------------------------


def unscramble(data: bytes) -> bytes:
    """HTCondor's `simple_scramble`: XOR with DE AD BE EF repeated (its own inverse)."""
    return bytes(b ^ SCRAMBLE_BYTES[i % len(SCRAMBLE_BYTES)] for i, b in enumerate(data))


def read_pool_signing_key(path: Path) -> bytes:
    """The unscrambled POOL signing key stored (scrambled) at `path`."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SetupIncomplete(
            f"the pool signing key {path} does not exist",
            next_step="pass -token-file FILE, or run on the central manager "
            "(where SEC_TOKEN_POOL_SIGNING_KEY_FILE lives)",
        ) from None
    except PermissionError:
        raise AnnexError(
            f"cannot read the pool signing key {path}: permission denied",
            next_step="run as root (or the condor user), or pass -token-file FILE",
        ) from None
    except OSError as exc:
        raise InvalidInput(
            f"-pool-signing-key-file: cannot read the pool signing key {path}: "
            f"{exc.strerror or exc}",
            next_step="give the path of the key file (SEC_TOKEN_POOL_SIGNING_KEY_FILE)",
        ) from None
    if not data:
        raise SetupIncomplete(
            f"the pool signing key {path} is empty",
            next_step="create one with `condor_store_cred -c add` or pass -token-file FILE",
        )
    return unscramble(data)


def _hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256 (extract, then expand)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes((counter,)), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _jwt_key(signing_key: bytes, key_id: str) -> bytes:
    # HTCondor doubles the POOL key (and only that key) before deriving the JWT key.
    material = signing_key + signing_key if key_id == POOL_KEY_ID else signing_key
    return _hkdf_sha256(material, salt=HKDF_SALT, info=HKDF_INFO, length=JWT_KEY_LENGTH)


def derive_jwt_key(pool_key: bytes) -> bytes:
    """The HS256 key for tokens signed with the (unscrambled) POOL key."""
    return _jwt_key(pool_key, POOL_KEY_ID)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_segment(obj: Mapping[str, Any], *, sort: bool) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":"), sort_keys=sort).encode("utf-8"))


def _epoch(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("token times must be timezone-aware")
    return int(moment.timestamp())


def scope_claim(authz: Sequence[str]) -> str:
    """`condor:/READ condor:/ADVERTISE_STARTD ...` for the given authorization levels."""
    return " ".join(f"{SCOPE_PREFIX}{level}" for level in authz)


def mint_idtoken(
    *,
    signing_key: bytes,
    issuer: str,
    subject: str,
    scopes: Sequence[str],
    expires_at: datetime,
    now: Optional[datetime] = None,
    key_id: str = POOL_KEY_ID,
    jti: Optional[str] = None,
) -> str:
    """An HS256 IDTOKEN signed with `signing_key` (the unscrambled key named `key_id`).

    `scopes` are authorization levels (`READ`) or full scopes (`condor:/READ`).
    """
    if not issuer or not subject:
        raise InvalidInput("a token needs an issuer (TRUST_DOMAIN) and a subject (identity)")
    issued = _epoch(now or datetime.now(timezone.utc))
    expires = _epoch(expires_at)
    if expires <= issued:
        raise InvalidInput("the token would already be expired: choose a later lease expiry")
    levels = [s[len(SCOPE_PREFIX) :] if s.startswith(SCOPE_PREFIX) else s for s in scopes]
    header = {"alg": "HS256", "typ": "JWT", "kid": key_id}
    claims = {
        "exp": expires,
        "iat": issued,
        "iss": issuer,
        "jti": jti or secrets.token_hex(16),
        "scope": scope_claim(levels),
        "sub": subject,
    }
    signing_input = f"{_json_segment(header, sort=False)}.{_json_segment(claims, sort=True)}"
    signature = hmac.new(
        _jwt_key(signing_key, key_id), signing_input.encode("ascii"), hashlib.sha256
    ).digest()
    return f"{signing_input}.{_b64url(signature)}"


def verify_idtoken(
    token: str, *, signing_key: bytes, now: Optional[datetime] = None
) -> dict[str, Any]:
    """The claims of `token` after checking its HS256 signature and expiry; else TokenInvalid."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise TokenInvalid("the token is not a JWT (expected header.claims.signature)")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
        signature = _b64url_decode(parts[2])
    except ValueError:
        raise TokenInvalid("the token is not valid base64url JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenInvalid("the token's header and claims must be JSON objects")
    if header.get("alg") != "HS256":
        raise TokenInvalid(f"unsupported token algorithm {header.get('alg')!r}")
    key_id = str(header.get("kid", POOL_KEY_ID))
    expected = hmac.new(
        _jwt_key(signing_key, key_id),
        f"{parts[0]}.{parts[1]}".encode("ascii"),
        hashlib.sha256,
    ).digest()
    if not hmac.compare_digest(expected, signature):
        raise TokenInvalid("the token's signature does not match the signing key")
    exp = claims.get("exp")
    current = _epoch(now or datetime.now(timezone.utc))
    if not isinstance(exp, int) or exp <= current:
        raise TokenInvalid("the token has expired (or carries no expiry)")
    return claims


# --- Where the annex token comes from -----------------------------------------------------------


def check_private_file(path: Path, *, what: str) -> None:
    """Refuse a secret file that anyone but its owner can read or write."""
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        raise InvalidInput(f"the {what} {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InvalidInput(
            f"the {what} {path} is readable or writable by others (mode {stat.S_IMODE(mode):04o})",
            next_step=f"run `chmod 600 {path}` and retry",
        )


MAX_TOKEN_FILE_BYTES = 64 * 1024


def token_from_file(path: Path) -> str:
    """The first token in a token file that only its owner may read.

    A token file may hold comments or several tokens (condor_token_fetch appends); the first
    JWT-shaped line is the one used.
    """
    check_private_file(path, what="token file")
    text = read_input_text(
        path, flag="-token-file", what="token file", max_bytes=MAX_TOKEN_FILE_BYTES
    )
    for line in text.splitlines():
        candidate = line.strip()
        if candidate and not candidate.startswith("#") and candidate.count(".") == 2:
            return candidate
    raise InvalidInput(f"-token-file: the token file {path} holds no token")


_read_token_file = token_from_file


def unverified_claims(token: str) -> dict[str, Any]:
    """The header's `alg` and the claims of `token`, without checking the signature (which
    needs the pool's key); raises TokenInvalid when it is not a JWT at all."""
    parts = token.strip().split(".")
    if len(parts) != 3 or not all(parts):
        raise TokenInvalid("it is not a JWT (expected header.claims.signature)")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
    except (ValueError, UnicodeDecodeError):
        raise TokenInvalid("it is not a JWT (its parts are not base64url JSON)") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenInvalid("it is not a JWT (header and claims must be JSON objects)")
    return {**claims, "_alg": header.get("alg")}


def default_identity(trust_domain: str) -> str:
    """The identity annex daemons authenticate as: HTCondor's own `condor_pool@<domain>`."""
    return f"condor_pool@{trust_domain}"


def _seconds_until(expires_at: datetime) -> int:
    seconds = _epoch(expires_at) - _epoch(datetime.now(timezone.utc))
    if seconds <= 0:
        raise InvalidInput("the lease has already expired: choose a later -duration")
    return seconds


def _token_create(
    *,
    executable: str,
    identity: Optional[str],
    trust_domain: Optional[str],
    expires_at: datetime,
    runner: Runner,
    env: Optional[Mapping[str, str]],
) -> str:
    subject = identity or (default_identity(trust_domain) if trust_domain else None)
    if subject is None:
        params = condor_params(["TRUST_DOMAIN"], env=env)
        if params.get("TRUST_DOMAIN"):
            subject = default_identity(str(params["TRUST_DOMAIN"]))
    if subject is None:
        raise InvalidInput(
            "cannot tell which identity the annex token should carry",
            next_step="pass the pool's trust domain (TRUST_DOMAIN) or an identity",
        )
    command = [executable, "-identity", subject, "-key", POOL_KEY_ID]
    for level in contract.ANNEX_TOKEN_AUTHZ:
        command += ["-authz", level]
    command += ["-lifetime", str(_seconds_until(expires_at))]
    result = runner(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=None if env is None else dict(env),
    )
    if result.returncode != 0:
        # stderr of condor_token_create never contains the token; stdout might, so drop it.
        reason = (result.stderr or "").strip().splitlines()[-1:] or ["no message"]
        raise AnnexError(
            f"`{TOKEN_CREATE_COMMAND}` failed with exit code {result.returncode}: {reason[0]}",
            next_step="run it as root on the central manager, or pass -token-file FILE",
        )
    token = (result.stdout or "").strip()
    if token.count(".") != 2:
        raise AnnexError(f"`{TOKEN_CREATE_COMMAND}` printed no token")
    return token


def annex_token(
    *,
    annex_name: str,
    expires_at: datetime,
    token_file: Optional[Path] = None,
    signing_key_file: Optional[Path] = None,
    trust_domain: Optional[str] = None,
    identity: Optional[str] = None,
    runner: Runner = subprocess.run,
    env: Optional[Mapping[str, str]] = None,
) -> str:
    """The IDTOKEN an annex's execute nodes use, expiring at `expires_at` (the lease end)."""
    contract.validate_annex_name(annex_name)
    if token_file is not None:
        return token_from_file(token_file)

    executable = shutil.which(TOKEN_CREATE_COMMAND, path=(env or os.environ).get("PATH"))
    if executable is not None and signing_key_file is None:
        return _token_create(
            executable=executable,
            identity=identity,
            trust_domain=trust_domain,
            expires_at=expires_at,
            runner=runner,
            env=env,
        )

    needed = []
    if signing_key_file is None:
        needed.append("SEC_TOKEN_POOL_SIGNING_KEY_FILE")
    if trust_domain is None:
        needed.append("TRUST_DOMAIN")
    params = condor_params(needed, env=env) if needed else {}
    if signing_key_file is None:
        configured = params.get("SEC_TOKEN_POOL_SIGNING_KEY_FILE")
        signing_key_file = Path(configured) if configured else DEFAULT_POOL_SIGNING_KEY_FILE
    trust_domain = trust_domain or params.get("TRUST_DOMAIN")
    if not trust_domain:
        raise InvalidInput(
            "cannot mint an annex token: the pool's TRUST_DOMAIN is unknown",
            next_step="set TRUST_DOMAIN in the HTCondor config or pass the trust domain",
        )
    check_private_file(signing_key_file, what="pool signing key")
    key = read_pool_signing_key(signing_key_file)
    return mint_idtoken(
        signing_key=key,
        issuer=trust_domain,
        subject=identity or default_identity(trust_domain),
        scopes=contract.ANNEX_TOKEN_AUTHZ,
        expires_at=expires_at,
    )
