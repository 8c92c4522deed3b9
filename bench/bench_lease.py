"""Lease enforcement: time from the lease function's invocation to every instance terminated,
and Lambda invocations per annex lifetime, against the old design.

Ours: one EventBridge Scheduler schedule per annex fires once, at the expiry (`at(...)`,
FlexibleTimeWindow OFF), into the lease function; a shared sweep runs every 15 minutes as a
safety net. The local AWS does not run Lambda on a schedule here, so the lease function's core
(`lambda/lease/handler.py: end_lease`) is invoked in-process against it, exactly as the Lambda
handler calls it, and timed until DescribeInstances shows every instance shutting down or gone,
the tarball deleted and the schedule removed.

Old design: a CloudWatch Events rule per annex fires every 5 minutes for the whole lease; the
function ends the annex at the first firing after expiry. Its enforcement latency after expiry is
uniform in [0, 5 min) plus the function's own run time (we credit it with ours).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import Any

from bench import world
from bench.harness import REPO_ROOT, Context, Result, Skipped, plt, save_figure
from bench.stats import format_ratio, ratio

OLD_RULE_PERIOD_S = 5 * 60
SWEEP_PERIOD_S = 15 * 60
LEASE_DURATIONS_MIN = (50, 120, 480)
"""50 minutes is the reference's default lease."""


def load_handler() -> ModuleType:
    path = REPO_ROOT / "lambda" / "lease" / "handler.py"
    if not path.exists():
        raise Skipped(f"{path} is missing")
    spec = importlib.util.spec_from_file_location("bench_lease_handler", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def invocations_per_lifetime(duration_s: float, concurrent_annexes: int = 1) -> dict[str, float]:
    """Lease-function invocations an annex costs over its lease, ours and the old design's.

    Old: one rule firing every 5 minutes from creation to the first firing at/after expiry.
    Ours: one schedule firing, plus this annex's share of the sweeps that ran meanwhile.
    """
    if duration_s <= 0 or concurrent_annexes < 1:
        raise ValueError("duration must be positive and at least one annex alive")
    old = float(-(-duration_s // OLD_RULE_PERIOD_S))  # ceil: the firing at or after expiry
    ours = 1.0 + (duration_s / SWEEP_PERIOD_S) / concurrent_annexes
    return {"old": old, "ours": ours}


def _annex(
    aws: world.RemoteAws, setup: world.Setup, name: str, count: int, spot: bool
) -> tuple[Any, list[str]]:
    from condor_annex import contract, lease

    world.upload_tarball(aws, setup, name)
    if spot:
        aws.control.set_fleet_tag_delay(0)
        _fleet, ids = world.launch_spot_fleet(aws, setup, name, count)
        ec2 = aws.client("ec2")
        token = ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[_fleet])["SpotFleetRequestConfigs"][0][
            "SpotFleetRequestConfig"]["ClientToken"]  # fmt: skip
        kind = contract.FLEET_KIND_SPOT_FLEET
    else:
        ids = world.launch_on_demand(aws, setup, name, count)
        token = aws.client("ec2").describe_instances(InstanceIds=ids[:1])["Reservations"][0][
            "Instances"
        ][0]["ClientToken"]
        kind = contract.FLEET_KIND_ON_DEMAND
    now = datetime.now(timezone.utc)
    record = contract.LeaseRecord.new(
        annex_name=name, bucket=setup.bucket, expires_at=now - timedelta(seconds=1),
        client_token=token, kind=kind, owner="bench", now=now - timedelta(minutes=50),
    )  # fmt: skip
    s3 = aws.client("s3")
    lease.put_lease_record(s3, record)
    lease.create_schedule(
        aws.client("scheduler"), record,
        lease_function_arn=setup.outputs.get(contract.OUTPUT_LEASE_FUNCTION_ARN.key,
                                             "arn:aws:lambda:us-east-1:123456789012:function:annex-lease"),
        scheduler_role_arn=setup.outputs.get(contract.OUTPUT_SCHEDULER_ROLE_ARN.key,
                                             "arn:aws:iam::123456789012:role/annex-lease-scheduler"),
    )  # fmt: skip
    return record, ids


def _all_gone(ec2: Any, ids: list[str]) -> int:
    """How many of `ids` are still live (not shutting-down/terminated)."""
    live = 0
    for start in range(0, len(ids), 500):
        for reservation in ec2.describe_instances(InstanceIds=ids[start : start + 500])[
            "Reservations"
        ]:
            live += sum(
                i["State"]["Name"] not in ("shutting-down", "terminated")
                for i in reservation["Instances"]
            )
    return live


def run(ctx: Context) -> Result:
    result = Result("lease")
    handler = load_handler()
    from condor_annex import contract, lease

    cases = [("on-demand", n, False) for n in ctx.pick((10, 100), (10, 100, 1000))] + [
        ("spot-fleet", 10, True)
    ]
    rows = []
    with world.running_aws() as aws:
        setup = world.provision_setup(aws, world.scratch_dir("lease-setup"))
        result.data["setup_source"] = setup.source
        s3, ec2, scheduler = aws.client("s3"), aws.client("ec2"), aws.client("scheduler")
        for index, (kind, count, spot) in enumerate(cases):
            name = f"lease{index}_{kind.replace('-', '')}"
            record, ids = _annex(aws, setup, name, count, spot)
            aws.control.clear_calls()
            started = time.perf_counter()
            outcome = handler.end_lease(record, s3=s3, ec2=ec2, scheduler=scheduler)
            returned = time.perf_counter() - started
            function_calls = len(aws.control.calls())
            live = _all_gone(ec2, ids)
            all_terminated = time.perf_counter() - started
            if live:
                result.fail(f"{kind} {count}: {live} instances still live after the lease function")
            if lease.get_schedule(scheduler, name) is not None:
                result.fail(f"{kind} {count}: schedule still present")
            if outcome.errors:
                result.fail(f"{kind} {count}: lease function errors {outcome.errors}")
            tarball_left = s3.list_objects_v2(
                Bucket=setup.bucket, Prefix=contract.config_key(name)
            ).get("KeyCount", 0)
            if tarball_left:
                result.fail(f"{kind} {count}: tarball still in the bucket")
            rows.append(
                {
                    "kind": kind,
                    "instances": count,
                    "function_s": returned,
                    "to_all_terminated_s": all_terminated,
                    "terminated": len(outcome.terminated_instances),
                    "cancelled_fleets": len(outcome.cancelled_fleets),
                    "aws_calls_by_function": function_calls,
                    "ours_latency_after_expiry_s": all_terminated,
                    "old_mean_latency_after_expiry_s": OLD_RULE_PERIOD_S / 2 + all_terminated,
                    "old_worst_latency_after_expiry_s": OLD_RULE_PERIOD_S + all_terminated,
                }
            )
            result.say(
                f"{kind} {count:5d} instances: lease function {returned:.2f}s, all terminated "
                f"{all_terminated:.2f}s after invocation ({function_calls} AWS calls); latency after "
                f"expiry ours {all_terminated:.1f}s vs old design mean {OLD_RULE_PERIOD_S / 2 + all_terminated:.0f}s "
                f"/ worst {OLD_RULE_PERIOD_S + all_terminated:.0f}s "
                f"({format_ratio(ratio(OLD_RULE_PERIOD_S / 2 + all_terminated, all_terminated))} sooner on average)"
            )
    lifetimes = []
    for minutes in LEASE_DURATIONS_MIN:
        for k in (1, 10):
            inv = invocations_per_lifetime(minutes * 60, k)
            lifetimes.append({"lease_minutes": minutes, "concurrent_annexes": k, **inv,
                              "ratio": ratio(inv["old"], inv["ours"])})  # fmt: skip
    for row in lifetimes:
        if row["concurrent_annexes"] == 1 or row["lease_minutes"] == 50:
            result.say(
                f"invocations per {row['lease_minutes']}-min lease ({row['concurrent_annexes']} annex(es) alive): "
                f"ours {row['ours']:.2f} vs old {row['old']:.0f} ({format_ratio(row['ratio'])} fewer)"
            )
    result.data.update({"rows": rows, "invocations": lifetimes, "old_rule_period_s": OLD_RULE_PERIOD_S,
                        "sweep_period_s": SWEEP_PERIOD_S})  # fmt: skip
    _plot(ctx, result, rows, lifetimes)
    return result


def _plot(
    ctx: Context, result: Result, rows: list[dict[str, Any]], lifetimes: list[dict[str, Any]]
) -> None:
    pyplot = plt()
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['kind']}\n{r['instances']}" for r in rows]
    x = list(range(len(rows)))
    a = left.bar(
        [i - 0.2 for i in x],
        [r["ours_latency_after_expiry_s"] for r in rows],
        0.4,
        label="ours: schedule at expiry",
    )
    b = left.bar([i + 0.2 for i in x], [r["old_mean_latency_after_expiry_s"] for r in rows], 0.4,
                 label="old: 5-min rule (mean)")  # fmt: skip
    left.bar_label(a, fmt="%.1f", fontsize=8)
    left.bar_label(b, fmt="%.0f", fontsize=8)
    left.set_xticks(x, labels, fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("seconds from expiry to all terminated (log)")
    left.set_title("Lease enforcement latency")
    left.legend(fontsize=8)
    ones = [r for r in lifetimes if r["concurrent_annexes"] == 1]
    xs = list(range(len(ones)))
    c = right.bar(
        [i - 0.2 for i in xs],
        [r["ours"] for r in ones],
        0.4,
        label="ours: 1 schedule + sweep share",
    )
    d = right.bar(
        [i + 0.2 for i in xs], [r["old"] for r in ones], 0.4, label="old: rule every 5 min"
    )
    right.bar_label(c, fmt="%.1f", fontsize=8)
    right.bar_label(d, fmt="%.0f", fontsize=8)
    right.set_xticks(xs, [f"{r['lease_minutes']} min" for r in ones])
    right.set_ylabel("lease-function invocations per annex")
    right.set_title("Invocations per annex lifetime (1 annex alive)")
    right.legend(fontsize=8)
    save_figure(ctx, result, figure, "lease")
