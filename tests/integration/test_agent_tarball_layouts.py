"""The agent, as a process against the local AWS, installs the old tool's and the guide's tarballs."""

from __future__ import annotations

import stat
from pathlib import Path

from condor_annex import contract
from tests.integration import test_agent_world as _world_fixtures
from tests.integration.test_agent_world import AnnexWorld
from tests.unit.test_agent_tarball_layouts import (
    DYNAMIC_CONFIG,
    POOL_PASSWORD,
    TOKEN_NAME,
    guide_tarball,
    old_tool_tarball,
)

world = _world_fixtures.world


def test_agent_installs_an_old_tool_tarball_into_etc_condor(
    world: AnnexWorld, tmp_path: Path
) -> None:
    world.setup()
    world.upload("old", old_tool_tarball(tmp_path))
    world.launch_on_demand("old")
    done = world.run_agent()
    assert done.returncode == 0, done.stderr
    assert "layout=old-tool" in done.stderr
    etc = world.root / "etc/condor"
    assert (etc / "config.d/00ec2-dynamic.config").read_bytes() == DYNAMIC_CONFIG
    assert (etc / "passwords.d/POOL").read_bytes() == POOL_PASSWORD
    assert stat.S_IMODE((etc / "passwords.d/POOL").stat().st_mode) == 0o600
    assert stat.S_IMODE((etc / "tokens.d").stat().st_mode) == 0o700
    assert (etc / "tokens.d" / TOKEN_NAME).exists()
    # The agent's own instance macros still go to config.d, beside the old tool's file.
    assert (etc / "config.d" / contract.INSTANCE_MACROS_FILE).exists()
    assert POOL_PASSWORD.decode(errors="replace").strip() not in done.stderr
    assert not world.powered_off


def test_agent_installs_a_guide_tarball_into_config_d(world: AnnexWorld, tmp_path: Path) -> None:
    world.setup()
    world.upload("guide", guide_tarball(tmp_path))
    world.launch_on_demand("guide")
    done = world.run_agent()
    assert done.returncode == 0, done.stderr
    assert "layout=guide" in done.stderr
    assert sorted(p.name for p in world.config_dir.iterdir()) == [
        contract.INSTANCE_MACROS_FILE,
        "10-custom.config",
        "20-more.config",
    ]
    assert not world.powered_off
