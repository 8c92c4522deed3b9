"""The old condor_annex's options, through `main` against the local AWS: owners, -no-owner,
-config-dir, ANNEX_DEFAULT_* defaults (flag > per-region macro > macro > built-in), and a Spot
Fleet config on stdin or from ANNEX_DEFAULT_SFR_CONFIG_FILE."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import classad2
import pytest

from condor_annex import contract
from condor_annex.cli.main import CliContext, main
from condor_annex.errors import InvalidInput
from tests.integration import annex_env as _annex_env
from tests.integration.annex_env import AnnexEnv, htcondor_params, tarball_members

minimal_annex_env = _annex_env.minimal_annex_env


def _cli(env: AnnexEnv, *argv: str, config_file: Path | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    ctx = CliContext(
        stdout=out,
        stderr=err,
        clients=lambda region, profile: env.clients,
        create_hooks=env.hooks(progress=None),
    )
    common = env.cli_args()
    if config_file is not None:
        common[common.index("-config-file") + 1] = str(config_file)
    code = main([*argv, *common], ctx)
    return code, out.getvalue(), err.getvalue()


def _user_config(env: AnnexEnv, tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "user_config"
    path.write_text(env.config_file.read_text() + extra)
    return path


def _config_d(env: AnnexEnv, annex: str, tmp_path: Path) -> Path:
    body = env.clients.s3.get_object(
        Bucket=env.settings.config_bucket, Key=contract.config_key(annex)
    )["Body"].read()
    config_d = tmp_path / f"{annex}-config.d"
    config_d.mkdir()
    for name, content in tarball_members(body).items():
        if "/" not in name:
            (config_d / name).write_bytes(content)
    return config_d


def _starts(start: str, annex: str, owner: str, wanted: str | None = None) -> bool:
    """Does START on a node of `annex` admit a job of `owner` asking for `wanted` (or `annex`)?"""
    machine = classad2.ClassAd({contract.ANNEX_NAME_ATTRIBUTE: annex})
    job = classad2.ClassAd({"Owner": owner, contract.JOB_TARGET_ANNEX_ATTRIBUTE: wanted or annex})
    return classad2.ExprTree(start).eval(machine, job) is True


def test_man_page_owner_list_lets_each_listed_owner_and_nobody_else_start_jobs(
    minimal_annex_env: AnnexEnv, tmp_path: Path
) -> None:
    env = minimal_annex_env
    code, _, err = _cli(
        env, "-count", "2", "-annex-name", "MySecondAnnex", "-aws-on-demand-ami-id", env.ami_id,
        "-aws-on-demand-instance-type", "g4dn.xlarge", "-owner", "big, little",
    )  # fmt: skip
    assert code == 0, err
    instances = env.live_instances("MySecondAnnex")
    assert {i["InstanceType"] for i in instances} == {"g4dn.xlarge"}
    tags = {t["Key"]: t["Value"] for t in instances[0]["Tags"]}
    assert tags[contract.TAG_ANNEX_OWNER] == "big,little"
    start = htcondor_params(_config_d(env, "MySecondAnnex", tmp_path), ["START"])["START"]
    assert start is not None
    assert _starts(start, "MySecondAnnex", "big")
    assert _starts(start, "MySecondAnnex", "little")
    assert not _starts(start, "MySecondAnnex", "mallory")
    assert not _starts(start, "MySecondAnnex", "big", "SomeOtherAnnex")  # only jobs asking for it


def test_no_owner_lets_anyones_jobs_start(minimal_annex_env: AnnexEnv, tmp_path: Path) -> None:
    env = minimal_annex_env
    code, _, err = _cli(
        env, "-count", "1", "-annex-name", "shared", "-aws-ami-id", env.ami_id, "-no-owner"
    )
    assert code == 0, err
    start = htcondor_params(_config_d(env, "shared", tmp_path), ["START"])["START"]
    assert start is not None and "Owner" not in start
    assert _starts(start, "shared", "anyone")
    code, _, err = _cli(env, "-count", "1", "-annex-name", "x", "-owner", "a", "-no-owner")
    assert code == InvalidInput.exit_code and "not allowed with" in err


def test_config_dir_files_land_after_the_annex_config_and_win(
    minimal_annex_env: AnnexEnv, tmp_path: Path
) -> None:
    env = minimal_annex_env
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "site.config").write_text("STARTD_NOCLAIM_SHUTDOWN = 4242\nSITE_NAME = hep\n")
    (custom / "site.config~").write_text("BACKUP = 1\n")  # HTCondor skips editor backups
    code, _, err = _cli(
        env, "-count", "1", "-annex-name", "custom", "-aws-ami-id", env.ami_id,
        "-config-dir", str(custom),
    )  # fmt: skip
    assert code == 0, err
    config_d = _config_d(env, "custom", tmp_path)
    assert sorted(p.name for p in config_d.iterdir()) == [
        contract.TARBALL_CONFIG_FILE,
        "60-site.config",
    ]
    params = htcondor_params(config_d, ["STARTD_NOCLAIM_SHUTDOWN", "SITE_NAME"])
    assert params == {"STARTD_NOCLAIM_SHUTDOWN": 4242, "SITE_NAME": "hep"}


@pytest.mark.parametrize(
    ("make", "mention"),
    [
        (lambda d: (d / "bad.config").write_text("if true\nA = 1\n"), "bad.config"),
        (lambda d: (d / "sub").mkdir(), "subdirectory"),
        (lambda d: (d / "link.config").symlink_to("/etc/passwd"), "symbolic link"),
        (lambda d: (d / "big.config").write_text("A = 1\n" * 20000), "at most 65536"),
    ],
    ids=["syntax", "subdirectory", "symlink", "too-big"],
)
def test_bad_config_dir_is_refused_before_anything_is_made(
    minimal_annex_env: AnnexEnv, tmp_path: Path, make: Any, mention: str
) -> None:
    env = minimal_annex_env
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "ok.config").write_text("A = 1\n")
    make(custom)
    before = env.leftovers()
    code, _, err = _cli(
        env, "-count", "1", "-annex-name", "badcfg", "-aws-ami-id", env.ami_id,
        "-config-dir", str(custom),
    )  # fmt: skip
    assert code == InvalidInput.exit_code, err
    assert mention in err and "-config-dir" in err
    assert env.leftovers() == before


def test_annex_default_macros_fill_in_flags_and_per_region_macros_win(
    minimal_annex_env: AnnexEnv, tmp_path: Path
) -> None:
    env = minimal_annex_env
    region = env.local.region.replace("-", "_")
    config = _user_config(
        env,
        tmp_path,
        "ANNEX_DEFAULT_ODI_INSTANCE_TYPE = m5.xlarge\n"
        f"{region}.ANNEX_DEFAULT_ODI_INSTANCE_TYPE = c5.large\n"
        f"{region}.ANNEX_DEFAULT_ODI_IMAGE_ID = {env.ami_id}\n"
        "ANNEX_DEFAULT_LEASE_DURATION = 7200\n"
        "ANNEX_DEFAULT_UNCLAIMED_TIMEOUT = 600\n",
    )
    code, out, err = _cli(
        env, "-count", "1", "-annex-name", "defaults", "--json", config_file=config
    )
    assert code == 0, err
    document = json.loads(out)
    (instance,) = env.live_instances("defaults")
    assert instance["InstanceType"] == "c5.large"  # per-region macro over plain macro
    assert instance["ImageId"] == env.ami_id  # the macro stood in for -aws-on-demand-ami-id
    record = json.loads(
        env.clients.s3.get_object(
            Bucket=env.settings.config_bucket, Key=contract.lease_key("defaults")
        )["Body"].read()
    )
    assert record["expires_at"] == document["expires_at"]
    idle = htcondor_params(_config_d(env, "defaults", tmp_path), ["STARTD_NOCLAIM_SHUTDOWN"])
    assert idle["STARTD_NOCLAIM_SHUTDOWN"] == 600
    # A flag beats every macro.
    code, _, err = _cli(
        env, "-count", "1", "-annex-name", "flagwins", "-aws-on-demand-instance-type",
        "m5.large", config_file=config,
    )  # fmt: skip
    assert code == 0, err
    assert env.live_instances("flagwins")[0]["InstanceType"] == "m5.large"


def test_spot_fleet_config_from_stdin_and_from_the_default_file_macro(
    minimal_annex_env: AnnexEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = minimal_annex_env
    fleet = {
        "IamFleetRole": "arn:aws:iam::123456789012:role/old-tool-fleet-role",
        "AllocationStrategy": "lowestPrice",
        "LaunchSpecifications": [{"ImageId": env.ami_id, "InstanceType": "m5.large"}],
    }
    raw = json.dumps(fleet).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    code, out, err = _cli(
        env, "-slots", "1", "-annex-name", "fromstdin", "-aws-spot-fleet-config-file", "-"
    )
    assert code == 0, err
    assert "role/old-tool-fleet-role replaced by the setup's" in out
    path = tmp_path / "fleet.json"
    path.write_bytes(raw)
    config = _user_config(env, tmp_path, f"ANNEX_DEFAULT_SFR_CONFIG_FILE = {path}\n")
    code, out, err = _cli(env, "-slots", "1", "-annex-name", "frommacro", config_file=config)
    assert code == 0, err
    assert "Spot Fleet request sfr-" in out
    assert str(path) in out  # the note names the file the default came from


def test_status_classad_prints_one_ad_per_instance_that_condor_status_reads(
    minimal_annex_env: AnnexEnv, htcondor_install: Any, tmp_path: Path
) -> None:
    env = minimal_annex_env
    code, _, err = _cli(env, "-count", "2", "-annex-name", "ads", "-aws-ami-id", env.ami_id)
    assert code == 0, err
    ids = sorted(i["InstanceId"] for i in env.live_instances("ads"))
    code, out, err = _cli(env, "-annex-name", "ads", "-status", "-classad")
    assert code == 0, err
    ads = list(classad2.parseAds(out))
    assert sorted(str(ad["EC2InstanceID"]) for ad in ads) == ids
    assert {str(ad["MyType"]) for ad in ads} == {"AnnexInstance"}
    assert {str(ad["AnnexName"]) for ad in ads} == {"ads"}
    # HTCondor's own condor_status reads them as ads, as the old tool's `status` fed it.
    (tmp_path / "ads").write_text(out)
    (tmp_path / "condor_config").write_text("")
    read = subprocess.run(
        [str(htcondor_install.program("condor_status")), "-ads", str(tmp_path / "ads"),
         "-af", "EC2InstanceID", "State"],
        env={"CONDOR_CONFIG": str(tmp_path / "condor_config"), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert read.returncode == 0, read.stderr
    assert sorted(line.split()[0] for line in read.stdout.splitlines()) == ids


def test_status_passes_arguments_after_double_dash_to_condor_status(
    minimal_annex_env: AnnexEnv,
) -> None:
    env = minimal_annex_env
    calls: list[list[str]] = []

    def condor_status(argv: list[str]) -> tuple[int, str, str]:
        calls.append(argv)
        return 3, "slot1@node i-0abc\n", ""

    out, err = io.StringIO(), io.StringIO()
    ctx = CliContext(
        stdout=out,
        stderr=err,
        clients=lambda region, profile: env.clients,
        run_condor_status=condor_status,
    )
    code = main(
        ["-annex-name", "ads", "status", *env.cli_args(), "--", "-af", "Name", "-compact"], ctx
    )
    assert code == 3  # condor_status's own exit status
    assert out.getvalue() == "slot1@node i-0abc\n"
    assert calls == [
        [
            "-pool",
            env.collector.address,
            "-constraint",
            f'{contract.ANNEX_NAME_ATTRIBUTE} =?= "ads"',
            "-af",
            "Name",
            "-compact",
        ]
    ]
    code, _, err_text = _cli(env, "-annex-name", "ads", "-count", "1", "--", "-af")
    assert code == InvalidInput.exit_code and "only `status` takes them" in err_text
