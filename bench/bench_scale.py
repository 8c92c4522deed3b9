"""Scale: a thousand instances booting at once under the real API throttles.

Every instance is its own process (forked by `bench/launcher.py`) with its own metadata
endpoint and credentials, all started together. The local AWS throttles like AWS does:

* IAM: 20 requests/s for the account (token bucket, capacity 20, refill 20/s);
* EC2 `DescribeInstances` and `DescribeSpotFleetRequests`: the published bucket of non-mutating
  actions, capacity 100 and refill 20/s, one bucket per API ("Request throttling for the Amazon
  EC2 API", https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html).

Reported: configured instances, failures, total time against the throttles' lower bound (the
least time in which the admitted calls fit through the buckets), throttled answers, and the
same for the old script's call sequence (fewer instances: it needs seven IAM calls each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

from bench import world
from bench.harness import REPO_ROOT, Context, Result, plt, save_figure
from bench.stats import Bucket, format_ratio, ratio, summarize, throttled_lower_bound

BUCKETS = (
    Bucket("iam", None, capacity=20, refill_per_second=20),
    Bucket("ec2", "DescribeInstances", capacity=100, refill_per_second=20),
    Bucket("ec2", "DescribeSpotFleetRequests", capacity=100, refill_per_second=20),
)


def apply_throttles(aws: world.RemoteAws) -> None:
    """Fresh (full) buckets for every throttled API."""
    control = aws.control
    control.clear_throttles()
    for bucket in BUCKETS:
        control.throttle(
            bucket.service,
            bucket.operation,
            capacity=bucket.capacity,
            refill_per_second=bucket.refill_per_second,
        )


MAX_IN_FLIGHT = 100
"""Instances booting at the same moment. EC2 brings a large launch up over a while, and the
local AWS (one werkzeug process, listen backlog 128) refuses connections beyond a few hundred
simultaneous ones, which AWS would not: the rest of the thousand queue behind these."""


def launch_all(
    jobs: list[dict[str, Any]], timeout: float, max_in_flight: int = MAX_IN_FLIGHT
) -> tuple[float, list[dict[str, Any]]]:
    """Start the launcher, hand it every job at once; (t0, one result per job)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.launcher", "--max-in-flight", str(max_in_flight)], cwd=REPO_ROOT, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    ready = process.stdout.readline()
    if "ready" not in ready:
        process.kill()
        raise RuntimeError(f"launcher did not start: {ready!r}")
    payload = "".join(json.dumps(job) + "\n" for job in jobs)
    t0 = time.time()

    def feed() -> None:
        assert process.stdin is not None
        process.stdin.write(payload)
        process.stdin.close()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    results: list[dict[str, Any]] = []
    killer = threading.Timer(timeout, process.kill)
    killer.start()
    try:
        for line in process.stdout:
            results.append(json.loads(line))
    finally:
        killer.cancel()
        process.wait()
        writer.join(timeout=5)
    return t0, results


def prepare(
    aws: world.RemoteAws, imds: Any, setup: world.Setup, annex: str, count: int
) -> dict[str, str]:
    """Launch `count` instances of `annex` and serve their metadata: instance id → endpoint."""
    world.upload_tarball(aws, setup, annex)
    ids = world.launch_on_demand(aws, setup, annex, count)
    endpoints: dict[str, str] = world.register_instances(aws, imds, ids)
    return endpoints


def boot_wave(
    aws: world.RemoteAws,
    endpoints: dict[str, str],
    *,
    kind: str,
    throttled: bool = True,
    timeout: float = 900,
) -> dict[str, Any]:
    """Boot every instance in `endpoints` (at most MAX_IN_FLIGHT at a time), throttles on or off."""
    ids = list(endpoints)
    count = len(ids)
    base = world.scratch_dir(f"scale-{kind}")
    jobs = [
        {"id": i, "kind": kind, "root": str(base / i), "env": aws.instance_env(endpoints[i])}
        for i in ids
    ]
    aws.control.clear_calls()
    if throttled:
        apply_throttles(aws)
    t0, results = launch_all(jobs, timeout)
    aws.control.clear_throttles()
    calls = aws.control.calls()
    from annex_sandbox.local_aws import FAKE_ACCESS_KEY_ID

    mine = [c for c in calls if c.access_key_id != FAKE_ACCESS_KEY_ID]
    admitted = Counter((c.service, c.operation) for c in mine if not c.throttled)
    refused = Counter(f"{c.service}:{c.operation}" for c in mine if c.throttled)
    by_id = {r["id"]: r for r in results}
    finish = [by_id[i]["end"] - t0 for i in ids if i in by_id]
    failures = [i for i in ids if i not in by_id or by_id[i]["rc"] != 0]
    unconfigured = [
        i for i in ids if not (base / i / "etc/condor/config.d/50-annex.config").exists()
    ]
    total = max(finish) if finish else float("nan")
    bound, binding = throttled_lower_bound(BUCKETS, admitted)
    first_errors = []
    for instance_id in failures[:3]:
        log = base / instance_id / "boot.log"
        text = log.read_text() if log.exists() else ""
        errors = [line for line in text.splitlines() if "error" in line.lower()]
        old = base / instance_id / "old-tool-result.json"
        if old.exists():
            errors.append(old.read_text()[-300:])
        first_errors.append(
            f"{instance_id}: {(errors or text.splitlines() or ['(empty log)'])[-1]}"
        )
    iam_calls = sum(n for (service, _), n in admitted.items() if service == "iam")
    cpu = [by_id[i]["cpu"] for i in ids if i in by_id]
    cpu_floor = sum(cpu) / (os.cpu_count() or 1)
    return {
        "kind": kind,
        "throttled": throttled,
        "instances": count,
        "configured": count - len(set(failures) | set(unconfigured)),
        "failures": len(failures),
        "unconfigured": len(unconfigured),
        "failure_examples": first_errors,
        "total_s": total,
        "lower_bound_s": bound,
        "binding_bucket": binding,
        "total_over_bound": total / bound if bound else None,
        "time_to_configured": summarize(finish).as_dict() if finish else None,
        "cpu_per_boot": summarize(cpu).as_dict() if cpu else None,
        "cpu_floor_s": cpu_floor,
        "max_in_flight": MAX_IN_FLIGHT,
        "finish_times_s": sorted(round(f, 3) for f in finish),
        "admitted_calls": {f"{s}:{o}": n for (s, o), n in sorted(admitted.items())},
        "throttled_answers": dict(refused),
        "iam_calls": iam_calls,
        "iam_calls_per_instance": iam_calls / count,
        "aws_calls_per_instance": sum(admitted.values()) / count,
    }


def run(ctx: Context) -> Result:
    result = Result("scale")
    ours_n = ctx.scale or ctx.pick(100, 1000)
    base_n = max(10, ours_n // 5)
    waves = []
    with world.running_aws() as aws, world.running_imds() as imds:
        setup = world.provision_setup(aws, world.scratch_dir("scale-setup"))
        result.data["setup_source"] = setup.source
        ours_instances = prepare(aws, imds, setup, "bench_scale", ours_n)
        base_instances = prepare(aws, imds, setup, "bench_old", base_n)
        plan = (
            ("condor-annex-ec2", "agent", ours_instances, True),
            (
                "condor-annex-ec2, no throttles (the machine's floor)",
                "agent",
                ours_instances,
                False,
            ),
            ("old script sequence", "old", base_instances, True),
        )
        for who, kind, instances, throttled in plan:
            wave = boot_wave(aws, instances, kind=kind, throttled=throttled)
            waves.append(wave)
            n = wave["instances"]
            result.say(
                f"{who}: {wave['configured']}/{n} configured, {wave['failures']} failed; total "
                f"{wave['total_s']:.1f}s"
                + (
                    f" vs throttle lower bound {wave['lower_bound_s']:.1f}s ({wave['binding_bucket']})"
                    if throttled
                    else ""
                )
                + f"; IAM calls/instance {wave['iam_calls_per_instance']:.2f}; "
                f"throttled answers {sum(wave['throttled_answers'].values())}"
            )
            if wave["cpu_per_boot"]:
                result.say(
                    f"  CPU per boot (median) {wave['cpu_per_boot']['median'] * 1000:.0f} ms; the boots' CPU "
                    f"alone needs {wave['cpu_floor_s']:.1f}s of this {os.cpu_count()}-CPU machine"
                )
            if wave["failures"] or wave["unconfigured"]:
                if kind == "agent":
                    result.fail(
                        f"{wave['failures']} of {n} agents failed: {wave['failure_examples']}"
                    )
                else:
                    result.say(f"  baseline failures (not ours): {wave['failure_examples']}")
    ours, floor, base = waves
    # The throttles cost ours at most the larger of their bound and what the machine needs anyway.
    expected = max(ours["lower_bound_s"], floor["total_s"])
    result.say(
        f"{ours_n} instances under the throttles: {ours['total_s']:.1f}s = "
        f"{ours['total_s'] / expected:.2f}x max(throttle bound {ours['lower_bound_s']:.1f}s, "
        f"unthrottled run {floor['total_s']:.1f}s)"
    )
    per_iam = ratio(base["iam_calls_per_instance"], ours["iam_calls_per_instance"])
    rate_ours = ours["configured"] / ours["total_s"] if ours["total_s"] else 0.0
    rate_base = base["configured"] / base["total_s"] if base["total_s"] else 0.0
    result.say(
        f"IAM calls per instance: {format_ratio(per_iam)} fewer; configured instances per second "
        f"under the throttles: {rate_ours:.1f} vs {rate_base:.1f} ({format_ratio(ratio(rate_ours, rate_base) if rate_base else float('inf'))})"
    )
    result.data.update(
        {
            "buckets": [b.__dict__ for b in BUCKETS],
            "ours": ours,
            "ours_unthrottled": floor,
            "baseline": base,
            "ours_over_expected": ours["total_s"] / expected,
            "iam_calls_ratio": per_iam,
            "configured_per_second": {"ours": rate_ours, "baseline": rate_base},
        }
    )
    _plot(ctx, result, ours, floor, base)
    return result


def _plot(
    ctx: Context, result: Result, ours: dict[str, Any], floor: dict[str, Any], base: dict[str, Any]
) -> None:
    pyplot = plt()
    figure, axes = pyplot.subplots(figsize=(8, 4.5))
    for wave, label in (
        (ours, "condor-annex-ec2"),
        (floor, "condor-annex-ec2, no throttles"),
        (base, "old script sequence"),
    ):
        times = wave["finish_times_s"]
        if not times:
            continue
        fraction = [(i + 1) / wave["instances"] for i in range(len(times))]
        axes.step(times, fraction, where="post", label=f"{label} ({wave['instances']} instances)")
        if wave["throttled"]:
            axes.axvline(wave["lower_bound_s"], linestyle=":", color=axes.lines[-1].get_color(),
                         label=f"{label}: throttle lower bound {wave['lower_bound_s']:.0f}s")  # fmt: skip
    axes.set_xlabel("seconds since all instances started booting")
    axes.set_ylabel("fraction of instances configured")
    axes.set_title("Time to configured, IAM 20 req/s, EC2 Describe* 100 + 20/s")
    axes.set_ylim(0, 1.02)
    axes.legend(fontsize=8, loc="lower right")
    save_figure(ctx, result, figure, "scale")
