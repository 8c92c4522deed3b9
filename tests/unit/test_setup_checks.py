"""`setup_checks.recorded_target_problem`: which account and region a setup is recorded for."""

from __future__ import annotations

from typing import Any

from condor_annex import contract
from condor_annex.annex_settings import regional_name
from condor_annex.setup_checks import recorded_target_problem
from condor_annex.target import AwsTarget

RECORDED = {
    contract.MACRO_AWS_REGION: "us-east-1",
    contract.MACRO_AWS_ACCOUNT_ID: "111122223333",
    contract.OUTPUT_CONFIG_BUCKET.macro: "bucket-east",
    # A second region set up later: recorded under the old tool's per-region names.
    regional_name(contract.MACRO_AWS_ACCOUNT_ID, "us-west-2"): "111122223333",
    regional_name(contract.OUTPUT_CONFIG_BUCKET.macro, "us-west-2"): "bucket-west",
}


def _target(region: str, account: str = "111122223333") -> AwsTarget:
    session: Any = None  # never used: the check reads only the account and region
    return AwsTarget(session=session, account_id=account, region=region)


def test_the_recorded_region_and_a_region_set_up_later_match():
    assert recorded_target_problem(_target("us-east-1"), RECORDED, "cfg") is None
    assert recorded_target_problem(_target("us-west-2"), RECORDED, "cfg") is None


def test_a_region_without_a_setup_is_named_with_the_recorded_one():
    problem = recorded_target_problem(_target("eu-west-1"), RECORDED, "cfg")
    assert problem is not None
    assert problem.what == "no setup is recorded for eu-west-1: the setup in cfg is in us-east-1"
    assert "-aws-region us-east-1" in problem.next_step


def test_credentials_of_another_account_are_named_with_both_accounts():
    problem = recorded_target_problem(_target("us-west-2", "999988887777"), RECORDED, "cfg")
    assert problem is not None
    assert "999988887777" in problem.what and "111122223333" in problem.what
    assert "credentials of account 111122223333" in problem.next_step


def test_a_config_without_a_recorded_account_checks_only_the_region():
    older = {k: v for k, v in RECORDED.items() if contract.MACRO_AWS_ACCOUNT_ID not in k}
    assert recorded_target_problem(_target("us-east-1", "999988887777"), older, "cfg") is None
