"""What `create` makes is what the boot agent finds: run the agent for one created instance."""

from __future__ import annotations

import dataclasses
from typing import Any

from condor_annex import contract
from condor_annex.annex_settings import AnnexClients, Settings
from condor_annex.create import create_annex
from tests.integration import test_agent_world as _world_fixtures
from tests.integration.annex_env import (
    POOL_KEY,
    TRUST_DOMAIN,
    Collector,
    load_connectivity_handler,
    write_scrambled_key,
)
from tests.integration.test_agent_world import AnnexWorld

world = _world_fixtures.world


def test_agent_on_a_created_instance_finds_and_unpacks_its_tarball(
    world: AnnexWorld, setup_outputs: dict[str, str], tmp_path: Any
) -> None:
    from condor_annex.create import CreateHooks, CreateRequest

    # The instance role and bucket are made by hand (world.setup): the local AWS stores the setup
    # stack's inline role policy as a Python repr, which the agent cannot parse (emulator gap,
    # see test_agent_boot's xfail). Everything else is the deployed setup stack's.
    world.setup()
    settings = dataclasses.replace(
        Settings.from_outputs(setup_outputs, region=world.aws.region),
        config_bucket=world.bucket,
        instance_profile_arn=world.profile_arn,
    )
    clients = AnnexClients.from_session(region=world.aws.region)
    key_file = tmp_path / "POOL"
    write_scrambled_key(key_file, POOL_KEY)
    collector = Collector()
    handler = load_connectivity_handler()
    try:
        result = create_annex(
            CreateRequest(
                annex_name="booted",
                collector=collector.address,
                count=2,
                ami_id=sorted(
                    i["ImageId"] for i in clients.ec2.describe_images(Owners=["amazon"])["Images"]
                )[0],
                owner="alice",
                signing_key_file=key_file,
                trust_domain=TRUST_DOMAIN,
            ),
            settings=settings,
            clients=clients,
            hooks=CreateHooks(connectivity_probe=lambda h, p: handler({"host": h, "port": p})),
        )
    finally:
        collector.close()

    world.instance_id = result.instance_ids[1]
    world._register(public_ip="203.0.113.20", tags_in_metadata=False)
    done = world.run_agent()
    assert done.returncode == 0, done.stderr
    assert "annex=booted" in done.stderr
    config = (world.config_dir / contract.TARBALL_CONFIG_FILE).read_text()
    assert f'{contract.ANNEX_NAME_ATTRIBUTE} = "booted"' in config
    token = (world.config_dir / contract.TARBALL_TOKEN_FILE).read_text().strip()
    assert token.count(".") == 2
    assert token not in done.stderr
    assert not world.powered_off
