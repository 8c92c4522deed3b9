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
from tests.reliability.conftest import check_refused, claim_left, cli, left_behind, od_args

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
    return str(env.admin.ec2.run_instances(**kwargs)["Instances"][0]["InstanceId"])


def _state(env: AnnexEnv, instance_id: str) -> str:
    reservations = env.admin.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(reservations[0]["Instances"][0]["State"]["Name"])


def _cleanup(env: AnnexEnv, *ids: str) -> None:
    env.admin.ec2.terminate_instances(InstanceIds=list(ids))


@pytest.mark.parametrize(
    "token_of, tags_of, says",
    [
        pytest.param(
            lambda name: f"{name}_{uuid.uuid4()}",
            lambda name: {},
            "client token says web, tag htcondor:AnnexName says nothing; not touched",
            marks=mark(
                AREA, "`off web`: foreign instance whose client token is `web_<GUID>`, no tags"
            ),
            id="token-only",
        ),
        pytest.param(
            lambda name: None,
            lambda name: {contract.TAG_ANNEX_NAME: name, **_ANNEX_TAGS},
            "client token says no annex, tag htcondor:AnnexName says web; not touched",
            marks=mark(AREA, "`off web`: instance carrying web's annex tags but no annex token"),
            id="tag-only",
        ),
    ],
)
def test_off_leaves_a_one_sided_match_alone_and_says_so(
    env: AnnexEnv, observed: Any, token_of: Any, tags_of: Any, says: str
) -> None:
    name = "web"
    before = env.leftovers()
    assert cli(env, *od_args(env, name)).code == 0
    foreign = _launch(env, token=token_of(name), tags=tags_of(name))
    before["instances"].append(foreign)
    try:
        off = cli(env, "off", "-annex-name", name)
        state = _state(env, foreign)
        left = left_behind(env, before)
        observed.equal("off exit {}", off.code, 0)
        observed.equal("the foreign instance is {}", state, "running")
        observed.check(f"off reports it: `{says}`", f"{foreign}: {says}" in off.out, off.out)
        claim_left(observed, left)  # the annex's own instance is gone
    finally:
        _cleanup(env, foreign)


@mark(AREA, "lease function for `web`: a foreign `web_<GUID>` instance is not terminated")
def test_lease_function_ends_only_what_the_annex_owns(env: AnnexEnv, observed: Any) -> None:
    name = "web"
    before = env.leftovers()
    assert cli(env, *od_args(env, name)).code == 0
    foreign = _launch(env, token=f"{name}_{uuid.uuid4()}", tags={})
    before["instances"].append(foreign)
    try:
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
        observed.equal(
            "terminated {} instance (the annex's own)", len(result.terminated_instances), 1
        )
        observed.check("not the foreign one", foreign not in result.terminated_instances, result)
        observed.equal("the foreign instance is {}", state, "running")
        claim_left(observed, left)
    finally:
        _cleanup(env, foreign)


@mark(AREA, "create `web` while a foreign `web_<GUID>` instance runs: refused, naming it")
def test_foreign_token_blocks_a_create_of_that_name(env: AnnexEnv, observed: Any) -> None:
    name = "web"
    foreign = _launch(env, token=f"{name}_{uuid.uuid4()}", tags={})
    try:
        check_refused(
            env, observed, od_args(env, name), 2, "already exists", foreign, "not touched"
        )
        observed.equal("the foreign instance is {}", _state(env, foreign), "running")
    finally:
        _cleanup(env, foreign)
