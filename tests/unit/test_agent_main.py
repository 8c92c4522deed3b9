"""Small pieces of the agent's main module: macros, log lines, power-off, usage."""

from __future__ import annotations

from pathlib import Path

import pytest

from condor_annex import contract
from condor_annex.agent import log
from condor_annex.agent.exits import Exit
from condor_annex.agent.main import Options, instance_macros, main, power_off
from condor_annex.agent.root import Root


def test_instance_macros_quote_the_id_and_leave_the_ip_bare() -> None:
    text = instance_macros("i-0abc12345678", "192.0.2.1")
    assert f'{contract.MACRO_INSTANCE_ID} = "i-0abc12345678"' in text
    assert f"{contract.MACRO_PUBLIC_IP} = 192.0.2.1" in text


def test_instance_macros_omit_the_ip_without_one() -> None:
    assert contract.MACRO_PUBLIC_IP not in instance_macros("i-0abc12345678", None)


def test_step_logs_duration_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    with log.step("demo") as record:
        record.note(annex="a b")
    assert capsys.readouterr().err.startswith("step=demo result=ok ms=")


def test_failed_step_logs_reason_and_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(log.StepFailed), log.step("demo"):
        raise log.StepFailed(Exit.NO_BUCKET, "nothing found")
    err = capsys.readouterr().err
    assert "step=demo result=error" in err and 'reason="nothing found"' in err
    assert f"exit_code={int(Exit.NO_BUCKET)}" in err


def test_power_off_runs_the_configured_command(tmp_path: Path) -> None:
    marker = tmp_path / "off"
    power_off(Options(poweroff_command=f"touch {marker}"), "test")
    assert marker.exists()


def test_dry_run_never_powers_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "off"
    power_off(Options(dry_run=True, poweroff_command=f"touch {marker}"), "test")
    assert not marker.exists()
    assert "step=poweroff result=skipped reason=dry-run" in capsys.readouterr().err


def test_unknown_option_is_a_usage_error() -> None:
    assert main(["--no-such-option"]) == Exit.USAGE


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--root" in capsys.readouterr().out


def test_exit_codes_are_distinct() -> None:
    values = [int(e) for e in Exit]
    assert len(values) == len(set(values))


def test_root_relocates_absolute_paths(tmp_path: Path) -> None:
    assert Root(tmp_path).config_dir == tmp_path / "etc/condor/config.d"
    assert Root().config_dir == Path("/etc/condor/config.d")


def test_check_image_subcommand_exit_code(tmp_path: Path) -> None:
    assert main(["check-image", "--root", str(tmp_path)]) == Exit.CHECK_FAILED


def test_firewall_dry_run_prints_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["firewall", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "iptables -w -I OUTPUT 1 -d 169.254.169.254" in out
    assert "ip6tables -w -I FORWARD 1 -d fd00:ec2::254 -j REJECT" in out
