"""The deployed lease and sweep functions, invoked through Lambda as the schedule and rule do.

The local AWS runs the deployed code bundle in a child process with the function's environment
and its execution role's credentials, so this proves the bundle (handler + contract) works as
deployed and the sweep finds its bucket. The local AWS's IAM engine decides the functions' own
calls with their roles, and a firing schedule's invocation with the scheduler role.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from condor_annex import contract
from tests.integration.test_lease_enforcement import (
    Annex,
    assert_ended,
    assert_untouched,
    live_instances,
    objects,
    on_demand_annex,
    schedules,
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


def _fire_now(aws: Any, outputs: dict[str, str], annex: Annex) -> contract.LeaseRecord:
    """The annex's lease schedule moved to now, carrying an expired record (as a lease whose
    time has come): the local schedule clock fires it within its tick."""
    expired = _expire(aws, annex)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    aws.client("scheduler").update_schedule(
        Name=contract.schedule_name(expired.annex_name),
        ScheduleExpression=f"at({now})",
        FlexibleTimeWindow={"Mode": "OFF"},
        ActionAfterCompletion="DELETE",
        Target={
            "Arn": outputs[contract.OUTPUT_LEASE_FUNCTION_ARN.key],
            "RoleArn": outputs[contract.OUTPUT_SCHEDULER_ROLE_ARN.key],
            "Input": expired.to_json(),
        },
    )
    return expired


def _wait(condition: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return bool(condition())


def test_lease_schedule_fires_the_function_as_the_scheduler_role(aws, setup_outputs):
    """Scheduler invokes the target as the schedule's role: the deployed scheduler role holds
    lambda:InvokeFunction on the lease function, so the firing runs it and the annex ends."""
    annex = on_demand_annex(aws, setup_outputs, "fired")
    _fire_now(aws, setup_outputs, annex)

    # The function deletes the lease record last, after terminating: wait for both.
    assert _wait(
        lambda: (
            not live_instances(aws, annex.instance_ids)
            and contract.lease_key("fired") not in objects(aws, annex.record.bucket)
        )
    )
    assert aws.state.schedule_clock.refusals == []
    assert_ended(aws, annex)
    # The deployed trusts let the services in (aws:SourceAccount condition included): Scheduler
    # assumed the scheduler role, Lambda the lease function's role.
    lease_role = aws.client("lambda").get_function(
        FunctionName=setup_outputs[contract.OUTPUT_LEASE_FUNCTION_ARN.key]
    )["Configuration"]["Role"]
    assumed = {
        (principal, resource)
        for principal, action, resource, allowed in aws.state.authorizer.checks
        if action == "sts:AssumeRole" and allowed
    }
    assert {
        ("scheduler.amazonaws.com", setup_outputs[contract.OUTPUT_SCHEDULER_ROLE_ARN.key]),
        ("lambda.amazonaws.com", lease_role),
    } <= assumed


def test_lease_schedule_without_the_invoke_grant_fires_but_runs_nothing(aws, setup_outputs):
    """Without lambda:InvokeFunction the schedule still fires (and, ActionAfterCompletion=DELETE,
    completes), but the invocation is refused as AWS refuses it: the annex is left running."""
    role = setup_outputs[contract.OUTPUT_SCHEDULER_ROLE_ARN.key].rsplit("/", 1)[-1]
    iam = aws.client("iam")
    for policy in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        iam.delete_role_policy(RoleName=role, PolicyName=policy)
    annex = on_demand_annex(aws, setup_outputs, "refused")
    _fire_now(aws, setup_outputs, annex)

    clock = aws.state.schedule_clock
    assert _wait(lambda: bool(clock.refusals))
    [(_, target, why)] = clock.refusals
    assert target == setup_outputs[contract.OUTPUT_LEASE_FUNCTION_ARN.key]
    assert "lambda:InvokeFunction" in why
    assert contract.schedule_name("refused") not in schedules(aws)
    assert sorted(live_instances(aws, annex.instance_ids)) == sorted(annex.instance_ids)
    assert contract.lease_key("refused") in objects(aws, annex.record.bucket)
