"""`condor_annex -annex-name N -count C` / `-slots S` end to end through `main`."""

from __future__ import annotations

import io
import json

from condor_annex import contract
from condor_annex.cli.main import CliContext, main
from condor_annex.errors import ConnectivityFailed, InvalidInput
from tests.integration import annex_env as _annex_env

shared_annex_env = _annex_env.shared_annex_env  # the fixture, shared by this module


def _cli(env, *argv: str, **hooks) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    ctx = CliContext(
        stdout=out,
        stderr=err,
        clients=lambda region, profile: env.clients,
        create_hooks=env.hooks(**{"progress": None, **hooks}),  # the CLI shows progress
    )
    code = main([*argv, *env.cli_args()], ctx)
    return code, out.getvalue(), err.getvalue()


def test_create_on_demand_from_the_command_line_prints_the_instances(shared_annex_env):
    env = shared_annex_env
    code, out, err = _cli(
        env, "-annex-name", "cli_od", "-count", "3", "-aws-on-demand-ami-id", env.ami_id,
        "-duration", "0.5", "-idle", "10m", "-tag", "team", "hep",
    )  # fmt: skip
    assert code == 0, err
    instances = env.live_instances("cli_od")
    assert len(instances) == 3
    for instance in instances:
        assert instance["InstanceId"] in out
        assert {"Key": "team", "Value": "hep"} in instance["Tags"]
    assert "launch: done" in err


def test_create_json_output_names_token_expiry_and_instances(shared_annex_env):
    env = shared_annex_env
    code, out, err = _cli(
        env, "-annex-name", "cli_json", "-count", "1", "-aws-ami-id", env.ami_id, "--json",
    )  # fmt: skip
    assert code == 0, err
    document = json.loads(out)
    assert contract.token_belongs_to(document["client_token"], "cli_json")
    assert document["instance_ids"] == [i["InstanceId"] for i in env.live_instances("cli_json")]
    assert document["config_key"] == contract.config_key("cli_json")
    assert err == ""  # --json: no progress chatter


def test_create_spot_fleet_from_command_line_types(shared_annex_env):
    env = shared_annex_env
    code, out, err = _cli(
        env, "-annex-name", "cli_spot", "-slots", "4", "-aws-ami-id", env.ami_id,
        "-aws-spot-instance-types", "m5.large:2,c5.xlarge:4",
    )  # fmt: skip
    assert code == 0, err
    assert "Spot Fleet request sfr-" in out


def test_creating_an_existing_annex_again_exits_2_and_launches_nothing(shared_annex_env):
    env = shared_annex_env
    args = ("-annex-name", "cli_twice", "-count", "1", "-aws-ami-id", env.ami_id)
    assert _cli(env, *args)[0] == 0
    before = env.live_instances("cli_twice")
    code, _, err = _cli(env, *args)
    assert code == InvalidInput.exit_code
    assert "already exists" in err
    assert "-duration" in err  # says how to extend instead
    assert env.live_instances("cli_twice") == before


def test_unreachable_collector_exits_7_and_leaves_nothing(shared_annex_env):
    env = shared_annex_env
    before = env.leftovers()

    def unreachable(host, port):
        return {
            "reachable": False,
            "host": host,
            "port": port,
            "address": None,
            "error": "timed out",
        }

    code, _, err = _cli(
        env, "-annex-name", "cli_cut", "-count", "1", "-aws-ami-id", env.ami_id,
        connectivity_probe=unreachable,
    )  # fmt: skip
    assert code == ConnectivityFailed.exit_code == 7
    assert "timed out" in err
    assert env.leftovers() == before


def test_unknown_ami_exits_2_before_anything_is_made(shared_annex_env):
    env = shared_annex_env
    before = env.leftovers()
    code, _, err = _cli(
        env, "-annex-name", "cli_noami", "-count", "1", "-aws-ami-id", "ami-0000dead"
    )
    assert code == 2
    assert "ami-0000dead" in err
    assert env.leftovers() == before


def test_unknown_instance_type_exits_2_before_anything_is_made(shared_annex_env):
    env = shared_annex_env
    before = env.leftovers()
    code, _, err = _cli(
        env, "-annex-name", "cli_notype", "-count", "1", "-aws-ami-id", env.ami_id,
        "-aws-on-demand-instance-type", "m5.gigantic",
    )  # fmt: skip
    assert code == 2, err
    assert "m5.gigantic" in err
    assert env.leftovers() == before
