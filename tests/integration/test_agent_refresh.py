"""`condor-annex-ec2 refresh` against the local AWS: what the timer does between boots.

Under IAM enforcement with only the instance role's policy (s3:GetObject on config-*.tar.gz):
refresh needs no permission the boot did not. An unchanged tarball costs one conditional GetObject
(304) and touches nothing; a re-uploaded tarball with the same content rewrites nothing and does
not reconfigure HTCondor; a new token is installed 0600 and HTCondor is reconfigured once.
"""

from __future__ import annotations

import gzip
import stat
import subprocess
from pathlib import Path

from condor_annex import contract
from condor_annex.agent.exits import Exit
from tests.integration import test_agent_world as _world_fixtures
from tests.integration.test_agent_world import AGENT, TOKEN, AnnexWorld, tarball

world = _world_fixtures.world


def _refresh(world: AnnexWorld, marker: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(AGENT),
            "refresh",
            "--root",
            str(world.root),
            "--reconfig-command",
            f"sh -c 'echo reconfig >> {marker}'",
        ],
        env=world.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _snapshot(config_dir: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(config_dir)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(config_dir.rglob("*"))
        if p.is_file()
    }


def test_refresh_installs_only_a_changed_tarball_and_reconfigures_only_then(
    world: AnnexWorld, tmp_path: Path
) -> None:
    marker = tmp_path / "reconfigs"
    world.setup()
    world.upload("fresh")
    world.launch_on_demand("fresh")
    world.prefetch_credentials()
    world.aws.enforce_iam(True)
    boot = world.run_agent()
    assert boot.returncode == 0, boot.stderr
    booted = _snapshot(world.config_dir)

    unchanged = _refresh(world, marker)
    assert unchanged.returncode == 0, unchanged.stderr
    assert "step=refresh result=unchanged" in unchanged.stderr
    assert _snapshot(world.config_dir) == booted
    assert not marker.exists()

    # Same members, different bytes (another gzip level): a new ETag, nothing to install.
    world.upload("fresh", gzip.compress(gzip.decompress(tarball("fresh")), compresslevel=1))
    same = _refresh(world, marker)
    assert "step=refresh result=same-content" in same.stderr, same.stderr
    assert _snapshot(world.config_dir) == booted
    assert not marker.exists()

    new_token = TOKEN.replace(b"c2ln", b"bmV3")
    data = tarball("fresh")
    world.upload("fresh", _with_token(data, new_token))
    installed = _refresh(world, marker)
    assert installed.returncode == 0, installed.stderr
    assert f"files={contract.TARBALL_TOKEN_FILE}" in installed.stderr
    token_path = world.config_dir / contract.TARBALL_TOKEN_FILE
    assert token_path.read_bytes() == new_token
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    assert marker.read_text() == "reconfig\n"
    assert "step=refresh result=unchanged" in _refresh(world, marker).stderr
    assert marker.read_text() == "reconfig\n"
    assert not world.powered_off


def _with_token(data: bytes, token: bytes) -> bytes:
    import io
    import tarfile

    raw = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as source,
        tarfile.open(fileobj=raw, mode="w") as target,
    ):
        for info in source.getmembers():
            content = source.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == contract.TARBALL_TOKEN_FILE:
                content = token
            info.size = len(content)
            target.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue())


def test_refresh_without_a_boot_never_powers_off(world: AnnexWorld, tmp_path: Path) -> None:
    world.setup()
    world.launch_on_demand("never")
    done = _refresh(world, tmp_path / "reconfigs")
    assert done.returncode == Exit.TARBALL_MISSING, done.stderr
    assert "step=refresh result=error" in done.stderr
    assert not world.powered_off
