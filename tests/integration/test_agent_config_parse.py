"""Every HTCondor config file the agent and image/ produce, parsed together by the real bindings.

A syntax error makes HTCondor's C library exit the process, so the parse runs in a subprocess.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from condor_annex import contract
from condor_annex.agent.main import instance_macros
from condor_annex.agent.root import Root
from condor_annex.agent.spot_watcher import SpotWatcher
from condor_annex.tarball import AnnexConfig, build_config_tarball
from tests.integration import test_agent_world as _world_fixtures
from tests.integration.test_agent_world import AnnexWorld

# The fixture shared by the agent integration modules.
world = _world_fixtures.world


IMAGE = Path(__file__).resolve().parents[2] / "image"
PARAMS = (
    contract.MACRO_INSTANCE_ID,
    contract.MACRO_PUBLIC_IP,
    "TCP_FORWARDING_HOST",
    "STARTD_NOCLAIM_SHUTDOWN",
    "DEFAULT_MASTER_SHUTDOWN_SCRIPT",
    "STARTD_ATTRS",
    "MASTER_ATTRS",
    "SEC_DEFAULT_INTEGRITY",
    "SEC_DEFAULT_ENCRYPTION",
    "ENCRYPT_EXECUTE_DIRECTORY",
    "SEC_TOKEN_DIRECTORY",
    "START",
    contract.ANNEX_NAME_ATTRIBUTE,
)
_PARSE = """
import json, sys
import classad2, htcondor2
out = {}
for name in sys.argv[1:]:
    out[name] = htcondor2.param.get(name)
instance_id = classad2.ExprTree(out["EC2InstanceID"]).eval() if out["EC2InstanceID"] else None
out["_instance_id_classad"] = instance_id
print(json.dumps(out))
"""


def parse(config_dir: Path, tmp_path: Path) -> dict[str, Any]:
    top = tmp_path / "condor_config"
    top.write_text(f"LOCAL_CONFIG_DIR = {config_dir}\n")
    done = subprocess.run(
        [sys.executable, "-c", _PARSE, *PARAMS],
        env={"CONDOR_CONFIG": str(top), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _image_only(config_dir: Path, public_ip: Optional[str]) -> None:
    config_dir.mkdir(parents=True)
    shutil.copy(IMAGE / "condor/config.d/10-annex-image.config", config_dir)
    macros = instance_macros("i-0123456789abcdef0", public_ip)
    (config_dir / contract.INSTANCE_MACROS_FILE).write_text(macros)


def test_image_config_with_public_ip_sets_forwarding_host(tmp_path: Path) -> None:
    config_dir = tmp_path / "config.d"
    _image_only(config_dir, "198.51.100.20")
    params = parse(config_dir, tmp_path)
    assert params["TCP_FORWARDING_HOST"] == "198.51.100.20"
    assert params["_instance_id_classad"] == "i-0123456789abcdef0"
    assert contract.INSTANCE_ID_ATTRIBUTE in params["STARTD_ATTRS"].split()
    assert contract.INSTANCE_ID_ATTRIBUTE in params["MASTER_ATTRS"].split()
    assert params["STARTD_NOCLAIM_SHUTDOWN"] == contract.IDLE_DEFAULT_SECONDS
    assert params["SEC_DEFAULT_INTEGRITY"] == "REQUIRED"
    assert params["SEC_DEFAULT_ENCRYPTION"] == "REQUIRED"
    assert params["ENCRYPT_EXECUTE_DIRECTORY"] is True
    assert params["DEFAULT_MASTER_SHUTDOWN_SCRIPT"] == "/usr/libexec/condor-annex/master-shutdown"


def test_image_config_without_public_ip_leaves_forwarding_host_unset(tmp_path: Path) -> None:
    config_dir = tmp_path / "config.d"
    _image_only(config_dir, None)
    params = parse(config_dir, tmp_path)
    assert params["TCP_FORWARDING_HOST"] is None
    assert params[contract.MACRO_PUBLIC_IP] is None


def test_agent_unpacked_cli_tarball_parses_with_the_image_config(
    world: AnnexWorld, tmp_path: Path
) -> None:
    world.setup()
    cfg = AnnexConfig(
        annex_name="parsed_annex",
        owner="alice",
        collector_host="cm.example.org:9618",
        idle_seconds=1200,
        lease_expires_at=datetime.now(timezone.utc) + timedelta(hours=1),
        token="eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln",
    )
    world.upload("parsed_annex", build_config_tarball(cfg))
    world.launch_on_demand("parsed_annex")
    world.config_dir.mkdir(parents=True)
    shutil.copy(IMAGE / "condor/config.d/10-annex-image.config", world.config_dir)
    done = world.run_agent()
    assert done.returncode == 0, done.stderr
    # The spot watcher's drain file joins the same directory when a notice arrives.
    SpotWatcher(imds=None, root=Root(world.root), reconfig_command="true").stop_new_matches(  # type: ignore[arg-type]
        "test"
    )
    params = parse(world.config_dir, tmp_path)
    assert params["_instance_id_classad"] == world.instance_id
    assert params["TCP_FORWARDING_HOST"] == "203.0.113.10"
    assert params["STARTD_NOCLAIM_SHUTDOWN"] == 1200  # the annex's -idle wins over the image
    assert params["SEC_TOKEN_DIRECTORY"] == f"{world.config_dir}/{contract.TARBALL_TOKEN_DIR}"
    assert params["START"] == "False"  # the drain file sorts last
    attrs = params["STARTD_ATTRS"].split()
    assert {contract.INSTANCE_ID_ATTRIBUTE, contract.ANNEX_NAME_ATTRIBUTE} <= set(attrs)
