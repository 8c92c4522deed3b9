"""Ownership beyond doubt: `off` and the lease function end an instance or fleet only when its
client token AND the tags condor_annex sets at launch both say it is the annex's.

A resource matching one of them only (someone launched with a token shaped `web_<GUID>`, or
copied the tags onto another instance) is reported by `off` and never touched.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

import pytest

from condor_annex import contract, lease
from tests.fixtures.cdk import load_lambda_module
from tests.integration.annex_env import AnnexEnv
from tests.reliability.conftest import cli, describe_left, left_behind, od_args

AREA = "ownership"
pytestmark = pytest.mark.xdist_group("reliability-ownership")
mark = pytest.mark.reliability
LATER = datetime.now(timezone.utc) + timedelta(days=30)
_ANNEX_TAGS = {contract.TAG_MANAGED_BY: contract.MANAGED_BY_VALUE}


def _launch(env: AnnexEnv, *, token: Optional[str], tags: dict[str, str]) -> str:
    """An instance launched outside condor_annex, with the given token and tags."""
    kwargs: dict[str, Any] = {
        "ImageId": env.ami_id,
        "InstanceType": "t3.micro",
        "MinCount": 1,
        "MaxCount": 1,
    }
    if token:
        kwargs["ClientToken"] = token
    if tags:
        kwargs["TagSpecifications"] = [
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
    return str(env.clients.ec2.run_instances(**kwargs)["Instances"][0]["InstanceId"])


def _state(env: AnnexEnv, instance_id: str) -> str:
    reservations = env.clients.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(reservations[0]["Instances"][0]["State"]["Name"])


def _cleanup(env: AnnexEnv, *ids: str) -> None:
    env.clients.ec2.terminate_instances(InstanceIds=list(ids))


@pytest.mark.parametrize(
    "token_of, tags_of, verdict",
    [
        pytest.param(
            lambda name: f"{name}_{uuid.uuid4()}",
            lambda name: {},
            contract.TOKEN_ONLY,
            marks=mark(
                AREA, "`off web`: foreign instance whose client token is `web_<GUID>`, no tags"
            ),
            id="token-only",
        ),
        pytest.param(
            lambda name: None,
            lambda name: {contract.TAG_ANNEX_NAME: name, **_ANNEX_TAGS},
            contract.TAG_ONLY,
            marks=mark(AREA, "`off web`: instance carrying web's annex tags but no annex token"),
            id="tag-only",
        ),
        pytest.param(
            lambda name: f"{name}_{uuid.uuid4()}",
            lambda name: {contract.TAG_ANNEX_NAME: name},
            contract.TOKEN_ONLY,
            marks=mark(
                AREA, "`off web`: annex token and name tag, but no condor_annex managed-by tag"
            ),
            id="token-and-name-tag",
        ),
    ],
)
def test_off_leaves_a_one_sided_match_alone_and_says_so(
    env: AnnexEnv, observed: Any, token_of: Any, tags_of: Any, verdict: str
) -> None:
    name = "web"
    foreign = _launch(env, token=token_of(name), tags=tags_of(name))
    before = env.leftovers()
    try:
        assert cli(env, *od_args(env, name)).code == 0
        off = cli(env, "off", "-annex-name", name)
        state = _state(env, foreign)
        left = left_behind(env, before)
        observed(
            f"off exit {off.code}; the foreign instance is {state}; off says "
            f"`{next((ln for ln in off.out.splitlines() if 'left alone' in ln), '')[:90]}`; "
            f"annex {describe_left(left)}"
        )
        assert off.code == 0, off.err
        assert state == "running"
        assert f"left alone: instance {foreign} ({verdict})" in off.out
        assert not any(left.values()), left  # the annex's own instance is gone
    finally:
        _cleanup(env, foreign)


@mark(AREA, "lease function for `web`: a foreign `web_<GUID>` instance is not terminated")
def test_lease_function_ends_only_what_the_annex_owns(env: AnnexEnv, observed: Any) -> None:
    name = "web"
    foreign = _launch(env, token=f"{name}_{uuid.uuid4()}", tags={})
    before = env.leftovers()
    try:
        assert cli(env, *od_args(env, name)).code == 0
        record = lease.read_lease_record(env.clients.s3, env.settings.config_bucket, name)
        assert record is not None
        result = load_lambda_module("lease").end_lease(
            record,
            s3=env.clients.s3,
            ec2=env.clients.ec2,
            scheduler=env.clients.scheduler,
            now=LATER,
        )
        state = _state(env, foreign)
        left = left_behind(env, before)
        observed(
            f"terminated {len(result.terminated_instances)} (the annex's); foreign instance "
            f"{state}; {describe_left(left)}"
        )
        assert foreign not in result.terminated_instances
        assert state == "running"
        assert len(result.terminated_instances) == 1
        assert not any(left.values()), left
    finally:
        _cleanup(env, foreign)


@mark(AREA, "create `web` while a foreign `web_<GUID>` instance runs (not counted as the annex)")
def test_foreign_token_does_not_block_or_join_a_create(env: AnnexEnv, observed: Any) -> None:
    name = "web"
    foreign = _launch(env, token=f"{name}_{uuid.uuid4()}", tags={})
    before = env.leftovers()
    try:
        run = cli(env, *od_args(env, name))
        status = cli(env, "status", "-annex-name", name, "-json")
        off = cli(env, "off", "-annex-name", name)
        left = left_behind(env, before)
        observed(
            f"create exit {run.code}; status lists the foreign instance: {foreign in status.out}; "
            f"off exit {off.code}; foreign instance {_state(env, foreign)}; {describe_left(left)}"
        )
        assert run.code == 0, run.err
        assert _state(env, foreign) == "running"
        assert not any(left.values()), left
    finally:
        _cleanup(env, foreign)
