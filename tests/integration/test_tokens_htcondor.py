"""Annex tokens judged by HTCondor itself: its token tools and a real collector.

A collector (HTCondor 25.13 from `htcondor_install`, skipped with the reason where the daemons are
missing) accepts only IDTOKENs signed with its pool key. `condor_ping` asks it, with one token in
the client's token directory, whether that token authenticates and may `ADVERTISE_STARTD` /
`ADVERTISE_MASTER`: the collector's answer is the verdict on our minting. The other direction:
a token the real `condor_token_create` wrote, through `annex_token` (the CLI's own path), must
verify with `condor_annex.tokens`. The tampered-token cases show the collector check can fail.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from annex_sandbox.htcondor_dist import Distribution, condor_ids
from condor_annex import contract, tokens

TRUST_DOMAIN = "annex-tokens.example.org"
IDENTITY = f"condor_pool@{TRUST_DOMAIN}"
KEY = bytes.fromhex("9f3a61c4e2d8b07a55c1e9f04b3d2a7718e6c0fd2b94a1e3d7c5086f3e21b9ac")


@dataclass
class Collector:
    """A running collector that accepts only IDTOKENs signed with `key_file`'s key."""

    dist: Distribution
    config: Path
    key_file: Path
    address: str
    root: Path

    def client_env(self, token_dir: Path) -> dict[str, str]:
        """A client that authenticates only with the tokens in `token_dir`.

        It cannot read the pool key (a client that can may sign its own token), so only the
        token under test can get it in.
        """
        return {
            **os.environ,
            "CONDOR_CONFIG": str(self.config),
            "PATH": self.dist.path_env(),
            "_CONDOR_SEC_TOKEN_DIRECTORY": str(token_dir),
            "_CONDOR_SEC_TOKEN_POOL_SIGNING_KEY_FILE": str(self.root / "no-such-key"),
            "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS": "IDTOKENS",
        }

    def ping(self, token: str, level: str, tmp: Path) -> subprocess.CompletedProcess[str]:
        token_dir = tmp / f"tokens-{level}"
        token_dir.mkdir(mode=0o700, exist_ok=True)
        path = token_dir / "annex.token"
        path.write_text(token + "\n")
        path.chmod(0o600)
        return subprocess.run(
            [str(self.dist.program("condor_ping")), "-pool", self.address, "-type", "collector",
             "-verbose", level],
            env=self.client_env(token_dir), capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _scrambled(key: bytes) -> bytes:
    # How HTCondor stores a pool key file (docs/TOKENS.md): XOR with DE AD BE EF.
    pad = bytes.fromhex("deadbeef")
    return bytes(b ^ pad[i % 4] for i, b in enumerate(key))


@pytest.fixture(scope="module")
def collector(htcondor_install: Distribution) -> Iterator[Collector]:
    ids = condor_ids()
    # The daemons run as `condor`: every directory on the way must be traversable (a pytest
    # tmp_path is 0700), and the daemons' own directories theirs.
    root = Path(tempfile.mkdtemp(prefix="annex-tokens-"))
    root.chmod(0o755)
    local = root / "local"
    for sub in ("log", "spool", "lock", "run", "execute"):
        (local / sub).mkdir(parents=True)
    if os.geteuid() == 0:
        for path in [local, *local.iterdir()]:
            os.chown(path, ids.uid, ids.gid)
    key_file = root / "POOL"
    key_file.write_bytes(_scrambled(KEY))
    key_file.chmod(0o600)
    address = f"127.0.0.1:{_free_port()}"
    config = root / "condor_config"
    config.write_text(
        "\n".join(
            [
                *htcondor_install.config_lines(),
                f"LOCAL_DIR = {local}",
                "LOG = $(LOCAL_DIR)/log",
                "SPOOL = $(LOCAL_DIR)/spool",
                "LOCK = $(LOCAL_DIR)/lock",
                "RUN = $(LOCAL_DIR)/run",
                "EXECUTE = $(LOCAL_DIR)/execute",
                f"CONDOR_IDS = {ids.condor_ids}",
                "CONDOR_HOST = 127.0.0.1",
                f"COLLECTOR_HOST = {address}",
                "NETWORK_INTERFACE = 127.0.0.1",
                "USE_SHARED_PORT = False",
                "DAEMON_LIST = MASTER, COLLECTOR",
                f"TRUST_DOMAIN = {TRUST_DOMAIN}",
                f"UID_DOMAIN = {TRUST_DOMAIN}",
                f"SEC_TOKEN_POOL_SIGNING_KEY_FILE = {key_file}",
                f"SEC_TOKEN_DIRECTORY = {root / 'server-tokens.d'}",
                "SEC_DEFAULT_AUTHENTICATION = REQUIRED",
                "SEC_DEFAULT_AUTHENTICATION_METHODS = IDTOKENS",
                "ALLOW_READ = *",
                f"ALLOW_ADVERTISE_STARTD = {IDENTITY}",
                f"ALLOW_ADVERTISE_MASTER = {IDENTITY}",
                "ALLOW_ADMINISTRATOR = nobody@nowhere",
                "ALLOW_WRITE = nobody@nowhere",
                "",
            ]
        )
    )
    env = {**os.environ, "CONDOR_CONFIG": str(config), "CONDOR_IDS": ids.condor_ids}
    master = subprocess.Popen(
        [str(htcondor_install.program("condor_master")), "-f"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        log = local / "log" / "CollectorLog"
        deadline = time.monotonic() + 60  # a liveness guard, not a budget
        while not (log.exists() and "Inserting" in log.read_text(errors="replace")):
            if master.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the collector did not start (master exit {master.poll()})")
            time.sleep(0.2)
        yield Collector(htcondor_install, config, key_file, address, root)
    finally:
        master.send_signal(signal.SIGQUIT)  # HTCondor's fast shutdown
        try:
            master.wait(timeout=30)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _mint(key: bytes = KEY) -> str:
    return tokens.mint_idtoken(
        signing_key=key,
        issuer=TRUST_DOMAIN,
        subject=IDENTITY,
        scopes=contract.ANNEX_TOKEN_AUTHZ,
        expires_at=datetime.now(timezone.utc) + timedelta(hours=1),
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _accepted(done: subprocess.CompletedProcess[str]) -> bool:
    text = done.stdout + done.stderr
    return (
        done.returncode == 0
        and "Authorized:                  TRUE" in text
        and re.search(r"Authenticated using:\s+IDTOKENS", text) is not None
    )


@pytest.mark.parametrize("level", ["ADVERTISE_STARTD", "ADVERTISE_MASTER"])
def test_collector_accepts_the_token_we_mint(
    collector: Collector, tmp_path: Path, level: str
) -> None:
    done = collector.ping(_mint(), level, tmp_path)
    assert _accepted(done), done.stdout + done.stderr
    assert re.search(rf"Remote Mapping:\s+{re.escape(IDENTITY)}", done.stdout), done.stdout


def test_collector_refuses_our_token_with_its_header_changed(
    collector: Collector, tmp_path: Path
) -> None:
    # The mutation "a token header changed" (HTCondor's own header, not re-signed): the
    # signature covers the header bytes, so the collector must refuse it.
    _header, claims, signature = _mint().split(".")
    forged = ".".join([_b64(b'{"alg":"HS256","kid":"POOL"}'), claims, signature])
    done = collector.ping(forged, "ADVERTISE_STARTD", tmp_path)
    assert not _accepted(done)
    assert "Failed to authenticate" in done.stdout + done.stderr


def test_collector_refuses_our_token_signed_with_another_key(
    collector: Collector, tmp_path: Path
) -> None:
    done = collector.ping(_mint(key=KEY[:-1] + b"\x00"), "ADVERTISE_STARTD", tmp_path)
    assert not _accepted(done)


def test_condor_token_list_reads_the_token_we_mint(collector: Collector, tmp_path: Path) -> None:
    token = _mint()
    token_dir = tmp_path / "listed"
    token_dir.mkdir(mode=0o700)
    (token_dir / "annex.token").write_text(token + "\n")
    (token_dir / "annex.token").chmod(0o600)
    done = subprocess.run(
        [str(collector.dist.program("condor_token_list"))],
        env=collector.client_env(token_dir), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    payload = re.search(r"Payload: (\{.*?\}) File:", done.stdout)
    assert payload, done.stdout
    assert json.loads(payload.group(1)) == tokens.verify_idtoken(token, signing_key=KEY)


def test_token_from_real_condor_token_create_verifies_with_our_code(
    collector: Collector,
) -> None:
    # annex_token's second source: condor_token_create on PATH, reading the pool's config.
    expires = datetime.now(timezone.utc) + timedelta(minutes=50)
    token = tokens.annex_token(
        annex_name="real-tool",
        expires_at=expires,
        trust_domain=TRUST_DOMAIN,
        env={"PATH": collector.dist.path_env(), "CONDOR_CONFIG": str(collector.config)},
    )
    encoded = token.split(".")[0]
    header = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    assert "typ" not in header  # really HTCondor's token, not one minted by us
    claims = tokens.verify_idtoken(token, signing_key=KEY)
    assert claims["sub"] == IDENTITY and claims["iss"] == TRUST_DOMAIN
    assert claims["scope"] == " ".join(f"condor:/{a}" for a in contract.ANNEX_TOKEN_AUTHZ)
    assert abs(int(claims["exp"]) - int(expires.timestamp())) <= 60
    with pytest.raises(tokens.TokenInvalid, match="signature"):
        tokens.verify_idtoken(token, signing_key=KEY[:-1] + b"\x00")
