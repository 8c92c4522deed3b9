"""What the admin sees when something is wrong before AWS is even asked: one line, an exit code."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from typing import Any

import boto3
import pytest

from condor_annex import contract
from condor_annex.annex_settings import AnnexClients, Settings
from condor_annex.cli.main import CliContext, main
from condor_annex.create_request import CreateRequest, validate_request
from condor_annex.errors import InvalidInput, SetupIncomplete, SetupMissing
from condor_annex.target import AwsTarget


def _run(*argv: str, **ctx_kw) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def no_clients(region, profile):
        raise AssertionError("AWS must not be contacted")

    ctx_kw.setdefault("clients", no_clients)
    code = main(list(argv), CliContext(stdout=out, stderr=err, **ctx_kw))
    return code, out.getvalue(), err.getvalue()


def test_no_setup_in_the_user_config_exits_3_naming_the_setup_command(tmp_path):
    config = tmp_path / "user_config"
    config.write_text("MY_SETTING = 1\n")
    code, _, err = _run(
        "-annex-name", "a", "-count", "1", "-aws-on-demand-ami-id", "ami-1",
        "-collector", "cm.example.org", "-config-file", str(config), "-yes",
    )  # fmt: skip
    assert code == SetupMissing.exit_code == 3
    assert err.count("\n") == 1
    assert "condor_annex -setup" in err


def test_incomplete_setup_exits_3_naming_the_missing_macro(tmp_path):
    config = tmp_path / "user_config"
    config.write_text(f"{contract.OUTPUT_CONFIG_BUCKET.macro} = bucket\n")
    code, _, err = _run(
        "-annex-name", "a", "-count", "1", "-aws-on-demand-ami-id", "ami-1",
        "-collector", "cm.example.org", "-config-file", str(config), "-yes",
    )  # fmt: skip
    assert code == SetupIncomplete.exit_code
    assert contract.OUTPUT_INSTANCE_PROFILE_ARN.macro in err


def test_invalid_annex_name_exits_2(tmp_path):
    code, _, err = _run(
        "-annex-name", "9lives", "-count", "1", "-collector", "cm", "-yes",
        "-config-file", str(tmp_path / "none"),
    )  # fmt: skip
    assert code == InvalidInput.exit_code == 2
    assert "9lives" in err


def test_usage_error_exits_2_with_one_line():
    code, out, err = _run("-count")
    assert code == 2
    assert out == ""
    assert err.startswith("condor_annex: ")
    assert err.count("\n") == 1


def test_help_exits_0():
    assert _run("-help")[0] == 0


def test_declined_confirmation_starts_nothing(tmp_path):
    config = tmp_path / "user_config"
    config.write_text("".join(f"{o.macro} = x\n" for o in contract.STACK_OUTPUTS))
    questions: list[str] = []

    def target(region, profile, action):
        # Who the credentials are is asked before the question, so that it can name them.
        return AwsTarget(boto3.Session(region_name="us-east-1"), "111122223333", "us-east-1")

    code, _, err = _run(
        "-annex-name", "a", "-count", "2", "-collector", "cm", "-aws-ami-id", "ami-1",
        "-config-file", str(config), "-aws-region", "us-east-1",
        confirm=lambda question: bool(questions.append(question)),  # type: ignore[func-returns-value]
        target=target,
        # No client can answer: the cost preview says the price is unknown, nothing is called.
        clients=lambda region, profile: AnnexClients(None, None, None, None, region=region),
    )  # fmt: skip
    assert code == 1
    assert "nothing was started" in err
    assert "2 on-demand" in questions[0]
    assert "account 111122223333 in us-east-1" in questions[0]


def test_bad_duration_exits_2(tmp_path):
    code, _, err = _run("-annex-name", "a", "-count", "1", "-duration", "forever", "-yes")
    assert code == 2
    assert "forever" in err


def _request(**kw) -> CreateRequest:
    values: dict[str, Any] = {
        "annex_name": "a",
        "collector": "cm",
        "count": 1,
        "ami_id": "ami-1",
        "owner": "alice",
    }
    values.update(kw)
    return CreateRequest(**values)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"count": 0}, "-count"),
        ({"count": 100000}, "-count"),
        ({"count": None}, "-count"),
        ({"duration_seconds": 30}, "-duration"),
        ({"duration_seconds": contract.LEASE_MAX_SECONDS + 1}, "-duration"),
        ({"idle_seconds": 5}, "-idle"),
        ({"tags": (("aws:owner", "x"),)}, "reserved"),
        ({"tags": (("htcondor:AnnexName", "x"),)}, "reserved"),
        ({"tags": (("k", "1"), ("k", "2"))}, "twice"),
        ({"tags": (("cost center", "1"),)}, "letters"),
        ({"tags": (("a/b", "1"),)}, "letters"),
        ({"user_data": b"x" * 20000}, "user data"),
        ({"subnet_ids": ("sn-1",)}, "subnet"),
        ({"ami_id": "image-1"}, "AMI"),
        ({"annex_name": "a" * 40}, "characters"),
        ({"owner": ""}, "-owner"),
    ],
)
def test_request_validation_names_the_bad_value(change, named):
    with pytest.raises(InvalidInput) as caught:
        validate_request(_request(**change))
    assert named in str(caught.value)


def test_no_ami_is_valid_because_the_default_image_is_used():
    # Without an AMI the create resolves the region's Amazon Linux 2023 image (docs/AGENT.md).
    validate_request(_request(ami_id=None))


def test_spot_request_needs_types_or_a_file():
    with pytest.raises(InvalidInput, match="-aws-spot-instance-types"):
        validate_request(_request(count=None, slots=2))


def test_settings_from_macros_read_every_output():
    macros = {o.macro: f"value-{o.key}" for o in contract.STACK_OUTPUTS}
    macros[contract.OUTPUT_SECURITY_GROUP_IDS.macro] = "sg-1, sg-2"
    settings = Settings.from_macros(macros)
    assert settings.missing(contract.STACK_OUTPUTS) == []
    assert settings.security_group_ids == ("sg-1", "sg-2")
    assert settings.stack_name == contract.STACK_NAME
    assert Settings.from_macros({}).empty


def test_lease_schedule_expression_is_utc_without_zone_suffix():
    from condor_annex.lease import schedule_expression

    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert schedule_expression(moment) == "at(2030-01-02T03:04:05)"


def test_check_setup_without_any_setup_exits_3_naming_the_setup_command(tmp_path):
    config = tmp_path / "user_config"
    config.write_text("MY_SETTING = 1\n")
    code, out, err = _run("-check-setup", "-config-file", str(config), "-aws-region", "us-east-1")
    assert code == SetupMissing.exit_code
    assert "PROBLEM" in out
    assert "condor_annex -setup" in err


def test_setup_without_a_region_exits_2(tmp_path, monkeypatch):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = _run(
        "-setup", "-config-file", str(tmp_path / "none"), "-pool-cidr", "10.0.0.0/8"
    )
    assert code == InvalidInput.exit_code
    assert "-aws-region" in err


def test_status_without_any_setup_exits_3_before_contacting_aws(tmp_path):
    code, _, err = _run("status", "-config-file", str(tmp_path / "none"), "-collector", "cm")
    assert code == SetupMissing.exit_code
    assert "condor_annex -setup" in err


def test_off_without_any_setup_exits_3_before_contacting_aws(tmp_path):
    code, _, _ = _run(
        "off",
        "-annex-name",
        "a",
        "-yes",
        "-config-file",
        str(tmp_path / "none"),
        "-collector",
        "cm",
    )
    assert code == SetupMissing.exit_code
