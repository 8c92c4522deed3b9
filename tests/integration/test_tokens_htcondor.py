"""Annex tokens judged by HTCondor itself: its token tools and the test pool's real collector.

The central manager of the test pool (`central_manager`, annex_sandbox/pool.py; skipped with the
reason where the daemons are missing) takes startd and master ads only with IDTOKENs signed with
its pool key. `condor_ping` asks it, with one token as the client's only credential, whether that
token authenticates and may `ADVERTISE_STARTD` / `ADVERTISE_MASTER`: the collector's answer is
the verdict on our minting. The other direction: a token the real `condor_token_create` wrote,
through `annex_token` (the CLI's own path), must verify with `condor_annex.tokens`. The tampered
tokens show the collector check can fail.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from annex_sandbox.pool import CentralManager
from condor_annex import contract, tokens


@dataclass
class Judge:
    """Asks the pool's real collector and token tools about one token at a time."""

    manager: CentralManager
    workdir: Path

    @property
    def identity(self) -> str:
        return tokens.default_identity(self.manager.trust_domain)

    @property
    def key(self) -> bytes:
        return tokens.read_pool_signing_key(self.manager.key_file)

    def mint(self, key: bytes | None = None) -> str:
        return tokens.mint_idtoken(
            signing_key=self.key if key is None else key,
            issuer=self.manager.trust_domain,
            subject=self.identity,
            scopes=contract.ANNEX_TOKEN_AUTHZ,
            expires_at=datetime.now(timezone.utc) + timedelta(hours=1),
        )

    def client_env(self, token: str) -> dict[str, str]:
        """A client whose only credential is `token`.

        No FS authentication, no readable pool key (a client that can read it may sign its own
        token) and no other token directory, so only the token under test can get it in.
        """
        token_dir = Path(tempfile.mkdtemp(dir=self.workdir))
        (token_dir / "annex.token").write_text(token + "\n")
        (token_dir / "annex.token").chmod(0o600)
        nothing = Path(tempfile.mkdtemp(dir=self.workdir))
        return {
            "_CONDOR_SEC_TOKEN_DIRECTORY": str(token_dir),
            "_CONDOR_SEC_TOKEN_SYSTEM_DIRECTORY": str(nothing),
            "_CONDOR_SEC_PASSWORD_DIRECTORY": str(nothing),
            "_CONDOR_SEC_TOKEN_POOL_SIGNING_KEY_FILE": str(nothing / "POOL"),
            "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS": "IDTOKENS",
        }

    def ping(self, token: str, level: str) -> subprocess.CompletedProcess[str]:
        return self.manager.tool(
            "condor_ping", "-pool", self.manager.address, "-type", "collector", "-verbose", level,
            env=self.client_env(token),
        )  # fmt: skip


@pytest.fixture
def judge(central_manager: CentralManager, tmp_path: Path) -> Judge:
    return Judge(central_manager, tmp_path)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64_json(part: str) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def _accepted(done: subprocess.CompletedProcess[str]) -> bool:
    text = done.stdout + done.stderr
    return (
        done.returncode == 0
        and re.search(r"Authorized:\s+TRUE", text) is not None
        and re.search(r"Authenticated using:\s+IDTOKENS", text) is not None
    )


@pytest.mark.parametrize("level", ["ADVERTISE_STARTD", "ADVERTISE_MASTER"])
def test_collector_accepts_the_token_we_mint(judge: Judge, level: str) -> None:
    done = judge.ping(judge.mint(), level)
    assert _accepted(done), done.stdout + done.stderr
    assert re.search(rf"Remote Mapping:\s+{re.escape(judge.identity)}", done.stdout), done.stdout


def test_collector_refuses_our_token_with_its_header_changed(judge: Judge) -> None:
    # The mutation "a token header changed" (HTCondor's own header, not re-signed): the
    # signature covers the header bytes, so the collector must refuse it.
    _header, claims, signature = judge.mint().split(".")
    forged = ".".join([_b64(b'{"alg":"HS256","kid":"POOL"}'), claims, signature])
    done = judge.ping(forged, "ADVERTISE_STARTD")
    assert not _accepted(done)
    assert "Failed to authenticate" in done.stdout + done.stderr


def test_collector_refuses_our_token_signed_with_another_key(judge: Judge) -> None:
    done = judge.ping(judge.mint(key=judge.key[:-1] + b"\x00"), "ADVERTISE_STARTD")
    assert not _accepted(done)


def test_condor_token_list_reads_the_token_we_mint(judge: Judge) -> None:
    token = judge.mint()
    done = judge.manager.tool("condor_token_list", env=judge.client_env(token))
    assert done.returncode == 0, done.stderr
    payload = re.search(r"Payload: (\{.*?\}) File:", done.stdout)
    assert payload, done.stdout
    assert json.loads(payload.group(1)) == tokens.verify_idtoken(token, signing_key=judge.key)


def test_token_from_real_condor_token_create_verifies_with_our_code(judge: Judge) -> None:
    # annex_token's second source: condor_token_create on PATH, reading the pool's config.
    expires = datetime.now(timezone.utc) + timedelta(minutes=50)
    token = tokens.annex_token(
        annex_name="real-tool",
        expires_at=expires,
        trust_domain=judge.manager.trust_domain,
        env=judge.manager.env(),
    )
    assert "typ" not in _b64_json(token.split(".")[0])  # HTCondor's header, not one of ours
    claims = tokens.verify_idtoken(token, signing_key=judge.key)
    assert claims["sub"] == judge.identity and claims["iss"] == judge.manager.trust_domain
    assert claims["scope"] == " ".join(f"condor:/{a}" for a in contract.ANNEX_TOKEN_AUTHZ)
    assert abs(int(str(claims["exp"])) - int(expires.timestamp())) <= 60
    with pytest.raises(tokens.TokenInvalid, match="signature"):
        tokens.verify_idtoken(token, signing_key=judge.key[:-1] + b"\x00")
