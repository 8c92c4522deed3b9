"""The annex token against the real collector and schedd (IDTOKEN only, as from another host).

Every minting path (in-process, `condor_token_create`, `-token-file`) gives a token the collector
accepts for ADVERTISE_STARTD/ADVERTISE_MASTER and refuses for anything that writes or
administers — although the pool's ALLOW lists (HTCondor's recommended security) would let the
same identity do all of that: the token's scope is what refuses. An expired token, or one from
another trust domain, keeps the instance out.
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from annex_sandbox import htcondor_dist
from annex_sandbox.pool import CentralManager, ExecuteNode, install_image_config
from condor_annex import contract, tarball, tokens

ANNEX = "tokens11"
ALLOWED = ("ADVERTISE_STARTD", "ADVERTISE_MASTER")
REFUSED = ("WRITE", "ADMINISTRATOR", "DAEMON", "NEGOTIATOR", "CONFIG")
# Another host cannot use FS (a shared filesystem proof): only the token may authenticate.
TOKEN_ONLY = {"_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS": "IDTOKENS"}
INSTANCE = "i-0000000000000011a"


def _node_with_token(
    dist: htcondor_dist.Distribution, manager: CentralManager, root: Path, token: str
) -> ExecuteNode:
    """An instance root laid out as the agent leaves it (image config, annex config, token)."""
    install_image_config(root)
    config_d = root / "etc/condor/config.d"
    config = tarball.AnnexConfig(
        annex_name=ANNEX,
        owner="alice",
        collector_host=manager.address,
        idle_seconds=600,
        lease_expires_at=datetime.now(timezone.utc) + timedelta(hours=1),
        token=token,
        trust_domain=manager.trust_domain,
    )
    (config_d / contract.TARBALL_CONFIG_FILE).write_text(tarball.render_annex_config(config))
    (config_d / contract.TARBALL_TOKEN_DIR).mkdir(mode=0o700)
    token_file = config_d / contract.TARBALL_TOKEN_FILE
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    (config_d / contract.INSTANCE_MACROS_FILE).write_text(
        f'{contract.MACRO_INSTANCE_ID} = "{INSTANCE}"\n'
    )
    return ExecuteNode.create(dist, root, name=INSTANCE)


def _ping(node: ExecuteNode, manager: CentralManager, *levels: str) -> dict[str, tuple[str, str]]:
    """condor_ping -table at the collector: level -> (decision, identity)."""
    result = node.tool(
        "condor_ping",
        "-type",
        "collector",
        "-name",
        manager.address,
        "-table",
        *levels,
        env=TOKEN_ONLY,
    )
    rows: dict[str, tuple[str, str]] = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] in levels:
            rows[fields[0]] = (fields[4], fields[5])
    assert set(rows) == set(levels), result.stdout + result.stderr
    return rows


def _expiry() -> datetime:
    return datetime.now(timezone.utc) + timedelta(minutes=30)


def _in_process(manager: CentralManager, tmp: Path) -> str:
    return tokens.annex_token(
        annex_name=ANNEX,
        expires_at=_expiry(),
        signing_key_file=manager.key_file,
        trust_domain=manager.trust_domain,
    )


def _token_create(manager: CentralManager, tmp: Path) -> str:
    # The CLI finds condor_token_create on PATH and runs it with the pool's configuration.
    ran: list[str] = []

    def runner(command: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        ran.append(command[0])
        return subprocess.run(command, **kw)

    token = tokens.annex_token(
        annex_name=ANNEX,
        expires_at=_expiry(),
        trust_domain=manager.trust_domain,
        env=manager.env(),
        runner=runner,
    )
    assert ran == [str(manager.dist.program("condor_token_create"))]
    return token


def _token_file(manager: CentralManager, tmp: Path) -> str:
    minted = _token_create(manager, tmp)
    path = tmp / "admin.token"
    path.write_text(f"# the admin's own token\n{minted}\n")
    path.chmod(0o600)
    return tokens.annex_token(annex_name=ANNEX, expires_at=_expiry(), token_file=path)


@pytest.mark.parametrize(
    "mint",
    [_in_process, _token_create, _token_file],
    ids=["in-process", "condor_token_create", "token-file"],
)
def test_annex_token_advertises_and_reads_but_never_writes_or_administers(
    htcondor_install: htcondor_dist.Distribution,
    central_manager: CentralManager,
    tmp_path: Path,
    mint: Callable[[CentralManager, Path], str],
) -> None:
    token = mint(central_manager, tmp_path)
    node = _node_with_token(htcondor_install, central_manager, tmp_path / "root", token)
    identity = f"condor_pool@{central_manager.trust_domain}"
    rows = _ping(node, central_manager, "READ", *ALLOWED, *REFUSED)
    assert rows["READ"][0] == "ALLOW"
    for level in ALLOWED:
        assert rows[level] == ("ALLOW", identity), level
    for level in REFUSED:
        assert rows[level][0] != "ALLOW", (level, rows[level])


def test_the_pool_would_allow_that_identity_more_so_the_scope_is_what_refuses(
    htcondor_install: htcondor_dist.Distribution, central_manager: CentralManager, tmp_path: Path
) -> None:
    """Control: an unscoped token for the same identity gets WRITE and ADMINISTRATOR."""
    created = central_manager.tool(
        "condor_token_create",
        "-identity",
        f"condor_pool@{central_manager.trust_domain}",
        "-key",
        "POOL",
        "-lifetime",
        "600",
    )
    assert created.returncode == 0, created.stderr
    node = _node_with_token(
        htcondor_install, central_manager, tmp_path / "root", created.stdout.strip()
    )
    rows = _ping(node, central_manager, "WRITE", "ADMINISTRATOR")
    assert rows["WRITE"][0] == "ALLOW" and rows["ADMINISTRATOR"][0] == "ALLOW"


def _foreign_or_expired(manager: CentralManager, *, issuer: str, expired: bool) -> str:
    now = datetime.now(timezone.utc)
    return tokens.mint_idtoken(
        signing_key=tokens.read_pool_signing_key(manager.key_file),
        issuer=issuer,
        subject=f"condor_pool@{issuer}",
        scopes=contract.ANNEX_TOKEN_AUTHZ,
        expires_at=now - timedelta(minutes=1) if expired else now + timedelta(minutes=30),
        now=now - timedelta(hours=1) if expired else now,
    )


@pytest.mark.parametrize("case", ["expired", "other-trust-domain"])
def test_expired_or_foreign_token_keeps_the_instance_out(
    htcondor_install: htcondor_dist.Distribution,
    central_manager: CentralManager,
    tmp_path: Path,
    case: str,
) -> None:
    expired = case == "expired"
    issuer = central_manager.trust_domain if expired else "other.pool.example"
    token = _foreign_or_expired(central_manager, issuer=issuer, expired=expired)
    node = _node_with_token(htcondor_install, central_manager, tmp_path / "root", token)
    rows = _ping(node, central_manager, *ALLOWED)
    assert all(decision != "ALLOW" for decision, _ in rows.values()), rows

    node.start()
    try:
        # Wait for the startd's own attempt to be refused, then look: no ad got in.
        deadline = time.monotonic() + 60
        while "aborting command UPDATE_STARTD_AD" not in node.log_text("StartLog"):
            assert time.monotonic() < deadline, node.log_text("StartLog")[-2000:]
            time.sleep(0.3)
        assert central_manager.query("-startd", f'EC2InstanceID =?= "{INSTANCE}"') == []
        assert central_manager.query("-master", f'EC2InstanceID =?= "{INSTANCE}"') == []
    finally:
        node.stop()
