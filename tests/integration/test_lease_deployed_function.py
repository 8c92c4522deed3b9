"""The deployed lease and sweep functions, invoked through Lambda as the schedule and rule do.

The local AWS runs the deployed code bundle in a child process with the function's environment
and its execution role's credentials, so this proves the bundle (handler + contract) works as
deployed and the sweep finds its bucket. IAM is not enforced here: the local AWS authorizes Lambda,
Scheduler and EC2 calls against `*` and names Invoke `lambda:Invoke`, so the role's resource
scoping cannot be exercised yet (see docs/SETUP.md).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from condor_annex import contract
from tests.integration.test_lease_enforcement import (
    Annex,
    assert_ended,
    assert_untouched,
    on_demand_annex,
    spot_fleet_annex,
)


def _expire(aws: Any, annex: Annex) -> contract.LeaseRecord:
    expired = annex.record.with_expiry(datetime.now(timezone.utc) - timedelta(minutes=1))
    aws.client("s3").put_object(
        Bucket=expired.bucket,
        Key=contract.lease_key(expired.annex_name),
        Body=expired.to_json(),
    )
    return expired


def _invoke(aws: Any, function_arn: str, event: dict[str, Any]) -> dict[str, Any]:
    answer = aws.client("lambda").invoke(FunctionName=function_arn, Payload=json.dumps(event))
    payload: dict[str, Any] = json.loads(answer["Payload"].read())
    assert "FunctionError" not in answer, payload
    return payload


def test_deployed_lease_function_ends_the_annex_in_its_schedule_input(aws, setup_outputs):
    annex = on_demand_annex(aws, setup_outputs, "deployed")
    bystander = on_demand_annex(aws, setup_outputs, "deployed_too")
    expired = _expire(aws, annex)

    summary = _invoke(
        aws, setup_outputs[contract.OUTPUT_LEASE_FUNCTION_ARN.key], json.loads(expired.to_json())
    )

    assert summary["errors"] == [] and summary["changed"]
    assert_ended(aws, annex)
    assert_untouched(aws, bystander)


def test_deployed_sweep_function_ends_expired_annexes_in_its_bucket(aws, setup_outputs):
    fleet = spot_fleet_annex(aws, setup_outputs, "swept_fleet")
    young = on_demand_annex(aws, setup_outputs, "not_yet")
    _expire(aws, fleet)

    result = _invoke(aws, setup_outputs[contract.OUTPUT_SWEEP_FUNCTION_ARN.key], {})

    assert [r["annex_name"] for r in result["ended"]] == ["swept_fleet"]
    assert_ended(aws, fleet)
    assert_untouched(aws, young)
