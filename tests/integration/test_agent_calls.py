"""AWS calls the agent spends per path, counted with a botocore `before-call` hook (docs/RULES.md, "Fewest boot-time AWS calls")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import pytest

from condor_annex.agent.main import Options, run
from condor_annex.agent.root import Root
from condor_annex.agent.service_models import MODELS_DIR
from tests.integration import test_agent_world as _world_fixtures
from tests.integration.test_agent_world import AnnexWorld

# The fixture shared by the agent integration modules.
world = _world_fixtures.world


def _run_counting(
    world: AnnexWorld, monkeypatch: pytest.MonkeyPatch, data_paths: Optional[list[str]] = None
) -> tuple[int, list[str]]:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in world.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    calls: list[str] = []

    def hook(session: Any) -> None:
        def count(model: Any, **_: Any) -> None:
            calls.append(f"{model.service_model.service_name}:{model.name}")

        session.register("before-call", count)
        if data_paths is not None:
            data_paths.append(str(session.get_config_variable("data_path")))

    options = Options(root=Root(world.root), firewall=False, poweroff_command=None)
    return run(options, session_hook=hook), calls


def test_on_demand_path_spends_at_most_three_aws_calls(
    world: AnnexWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.setup()
    world.upload("counted")
    world.launch_on_demand("counted")
    data_paths: list[str] = []
    code, calls = _run_counting(world, monkeypatch, data_paths)
    assert code == 0
    assert calls == ["ec2:DescribeInstances", "iam:GetRolePolicy", "s3:GetObject"]
    # The clients parsed the agent's trimmed API models (its cold start), not botocore's.
    assert data_paths[0].split(os.pathsep)[0] == str(MODELS_DIR)


def test_fallback_path_calls_are_bounded_by_the_role_policies(
    world: AnnexWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.setup(inline=False)
    world.upload("scan")
    world.launch_on_demand("scan")
    code, calls = _run_counting(world, monkeypatch)
    assert code == 0
    assert calls == [
        "ec2:DescribeInstances",
        "iam:GetRolePolicy",
        "iam:GetInstanceProfile",
        "iam:ListRolePolicies",
        "iam:GetRolePolicy",
        "iam:ListAttachedRolePolicies",
        "iam:GetPolicy",
        "iam:GetPolicyVersion",
        "s3:GetObject",
    ]


def test_spot_fleet_with_metadata_tags_adds_only_the_fleet_lookup(
    world: AnnexWorld, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    world.aws.set_fleet_tag_delay(3.0)
    world.setup()
    world.upload("spotcount")
    world.launch_spot_fleet("spotcount", tags_in_metadata=True)
    code, calls = _run_counting(world, monkeypatch)
    assert code == 0
    assert calls == [
        "ec2:DescribeInstances",
        "ec2:DescribeSpotFleetRequests",
        "iam:GetRolePolicy",
        "s3:GetObject",
    ]


@pytest.mark.parametrize("tags_in_metadata", [True, False])
def test_ec2_fleet_instance_is_recognised_with_spot_fleets_call_budget(
    world: AnnexWorld, monkeypatch: pytest.MonkeyPatch, tags_in_metadata: bool
) -> None:
    """The `aws:ec2:fleet-id` tag, then one DescribeFleets for the fleet's client token."""
    world.aws.set_fleet_tag_delay(1.0)
    world.setup()
    world.upload("ec2fleet")
    world.launch_ec2_fleet("ec2fleet", tags_in_metadata=tags_in_metadata)
    code, calls = _run_counting(world, monkeypatch)
    assert code == 0
    polls = [c for c in calls if c == "ec2:DescribeInstances"]
    assert calls[len(polls) :] == ["ec2:DescribeFleets", "iam:GetRolePolicy", "s3:GetObject"]
    assert calls[: len(polls)] == polls
    if tags_in_metadata:
        assert polls == ["ec2:DescribeInstances"]  # the tag is read from instance metadata
