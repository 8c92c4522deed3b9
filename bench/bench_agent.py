"""Agent latency and AWS calls per boot, on-demand and Spot Fleet, against the old script.

Ours: the real `condor-annex-ec2` console script, one cold process per boot (interpreter start,
imports, IMDSv2, three or four AWS calls). Baseline: the old script's sequence, one process per
step (`bench/old_tool.py`). Both boot the same kind of instance of the same annex, one at a
time (latency without contention); calls are counted from the local AWS's call log.

The on-demand boot is the cold start the issue's goal is about (ours at least 8x faster than
the old script as a whole process): both are timed end to end in the same run, wall clock and
the CPU seconds of every process each side started (on a loaded machine the CPU ratio is the
steadier of the two).

Kinds: `on-demand`; `spot` (Spot Fleet already tagged the instance when it boots); `spot-late-tag`
(the tag appears `LATE_TAG_DELAY` s after boot: ours reads it from instance metadata tags,
the old script polled DescribeInstances).
"""

from __future__ import annotations

import resource
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import world
from bench.harness import REPO_ROOT, Context, Result, plt, save_figure
from bench.old_tool import ProcessCaller, old_tool_boot
from bench.stats import format_ratio, ratio, summarize

AGENT = REPO_ROOT / ".venv" / "bin" / "condor-annex-ec2"
COLD_START_KIND = "on-demand"
COLD_START_GOAL = 8.0
"""The speed-up over the old script the agent's cold start must reach (issue #12)."""
LATE_TAG_DELAY = 10.0
KINDS = ("on-demand", "spot", "spot-late-tag")


def instance_calls(aws: world.RemoteAws) -> list[str]:
    """Calls made with instance credentials (the IMDS emulator's AssumeRole is EC2's, not ours).

    The call log names an S3 GetObject `ListParts` (its REST route matcher picks the wrong one of
    the two operations on `GET /{Bucket}/{Key+}`): relabelled here.
    """
    from annex_sandbox.local_aws import FAKE_ACCESS_KEY_ID

    names = []
    for call in aws.control.calls():
        if call.access_key_id == FAKE_ACCESS_KEY_ID:
            continue
        operation = (
            "GetObject" if (call.service, call.operation) == ("s3", "ListParts") else call.operation
        )
        names.append(f"{call.service}:{operation}")
    return names


def _one_instance(
    aws: world.RemoteAws, imds: Any, setup: world.Setup, annex: str, kind: str
) -> tuple[str, str]:
    if kind == "on-demand":
        aws.control.set_fleet_tag_delay(0)
        instance_id = world.launch_on_demand(aws, setup, annex, 1)[0]
        tags_in_metadata = False
    else:
        late = kind == "spot-late-tag"
        aws.control.set_fleet_tag_delay(LATE_TAG_DELAY if late else 0.0)
        _fleet, ids = world.launch_spot_fleet(aws, setup, annex, 1)
        instance_id = ids[0]
        if not late:  # wait for the tag: this kind measures an already-tagged instance
            ec2 = aws.client("ec2")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                tags = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
                    "Instances"
                ][0].get("Tags", [])
                if any(t["Key"] == "aws:ec2spot:fleet-request-id" for t in tags):
                    break
                time.sleep(0.1)
        tags_in_metadata = late
    endpoint = world.register_instances(
        aws, imds, [instance_id], tags_in_metadata=tags_in_metadata
    )[instance_id]
    if kind == "spot-late-tag":
        # Tags in metadata follow the instance's tags: mirror them while the boot waits.
        _mirror_tags_later(aws, imds, instance_id)
    return instance_id, endpoint


def _mirror_tags_later(aws: world.RemoteAws, imds: Any, instance_id: str) -> None:
    import threading

    def mirror() -> None:
        ec2 = aws.client("ec2")
        deadline = time.monotonic() + LATE_TAG_DELAY + 30
        while time.monotonic() < deadline:
            tags = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
                "Instances"
            ][0].get("Tags", [])
            try:
                imds.instance(instance_id).tags = {t["Key"]: t["Value"] for t in tags}
            except KeyError:
                return
            if any(t["Key"] == "aws:ec2spot:fleet-request-id" for t in tags):
                return
            time.sleep(0.25)

    threading.Thread(target=mirror, daemon=True).start()


def children_cpu_seconds() -> float:
    """User + system CPU of this process's finished children (the local AWS runs on, unseen)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def boot_ours(aws: world.RemoteAws, endpoint: str, root: Path) -> tuple[float, int, str]:
    env = aws.instance_env(endpoint)
    started = time.perf_counter()
    done = subprocess.run(
        [str(AGENT), "--root", str(root), "--no-firewall", "--no-poweroff", "--fleet-tag-timeout", "120"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return time.perf_counter() - started, done.returncode, done.stderr


def run(ctx: Context) -> Result:
    result = Result("agent")
    if not AGENT.exists():
        from bench.harness import Skipped

        raise Skipped(f"{AGENT} is not installed (make installs the package's console scripts)")
    boots = {"on-demand": ctx.pick(2, 5), "spot": ctx.pick(1, 3), "spot-late-tag": 1}
    samples: dict[str, dict[str, list[float]]] = {k: {"ours": [], "baseline": []} for k in KINDS}
    cpu: dict[str, dict[str, list[float]]] = {k: {"ours": [], "baseline": []} for k in KINDS}
    calls: dict[str, dict[str, list[str]]] = {k: {} for k in KINDS}
    processes: dict[str, dict[str, int]] = {k: {} for k in KINDS}
    metadata_requests: dict[str, dict[str, int]] = {k: {} for k in KINDS}
    with world.running_aws() as aws, world.running_imds() as imds:
        setup = world.provision_setup(aws, world.scratch_dir("agent-setup"))
        result.data["setup_source"] = setup.source
        annex = "bench_boot"
        world.upload_tarball(aws, setup, annex)
        # One warm-up boot each so neither side pays first-run disk caches in its numbers.
        for who in ("ours", "baseline"):
            instance_id, endpoint = _one_instance(aws, imds, setup, annex, "on-demand")
            if who == "ours":
                boot_ours(aws, endpoint, world.scratch_dir("warm"))
            else:
                old_tool_boot(
                    ProcessCaller(aws.instance_env(endpoint), endpoint), world.scratch_dir("warm")
                )
        for kind in KINDS:
            for _ in range(boots[kind]):
                for who in ("ours", "baseline"):
                    instance_id, endpoint = _one_instance(aws, imds, setup, annex, kind)
                    root = world.scratch_dir(f"{kind}-{who}")
                    aws.control.clear_calls()
                    before = len(imds.requests(instance_id))
                    cpu_before = children_cpu_seconds()
                    if who == "ours":
                        seconds, rc, log = boot_ours(aws, endpoint, root)
                        if rc != 0:
                            result.fail(
                                f"{kind}: agent exited {rc}: {log.strip().splitlines()[-1:]}"
                            )
                        nproc = 1
                    else:
                        caller = ProcessCaller(aws.instance_env(endpoint), endpoint)
                        try:
                            boot = old_tool_boot(caller, root)
                            seconds = boot.seconds
                        except Exception as error:
                            result.fail(f"{kind}: baseline failed: {error}")
                            continue
                        nproc = caller.processes
                    configured = (root / "etc/condor/config.d/50-annex.config").exists()
                    if not configured:
                        result.fail(f"{kind} {who}: no 50-annex.config under {root}")
                    samples[kind][who].append(seconds)
                    cpu[kind][who].append(children_cpu_seconds() - cpu_before)
                    calls[kind][who] = instance_calls(aws)
                    processes[kind][who] = nproc
                    metadata_requests[kind][who] = len(imds.requests(instance_id)) - before

    rows: list[dict[str, Any]] = []
    for kind in KINDS:
        ours, base = samples[kind]["ours"], samples[kind]["baseline"]
        if not ours or not base:
            continue
        so, sb = summarize(ours), summarize(base)
        cpu_ours, cpu_base = summarize(cpu[kind]["ours"]), summarize(cpu[kind]["baseline"])
        n_ours, n_base = len(calls[kind]["ours"]), len(calls[kind]["baseline"])
        iam_ours = sum(c.startswith("iam:") for c in calls[kind]["ours"])
        iam_base = sum(c.startswith("iam:") for c in calls[kind]["baseline"])
        rows.append(
            {
                "kind": kind,
                "boots": len(ours),
                "ours_median_s": so.median,
                "baseline_median_s": sb.median,
                "speedup": ratio(sb.median, so.median),
                "ours_cpu_median_s": cpu_ours.median,
                "baseline_cpu_median_s": cpu_base.median,
                "cpu_speedup": ratio(cpu_base.median, cpu_ours.median),
                "ours_calls": n_ours,
                "baseline_calls": n_base,
                "ours_iam_calls": iam_ours,
                "baseline_iam_calls": iam_base,
                "ours_processes": processes[kind]["ours"],
                "baseline_processes": processes[kind]["baseline"],
                "ours_metadata_requests": metadata_requests[kind]["ours"],
                "baseline_metadata_requests": metadata_requests[kind]["baseline"],
                "ours_call_list": dict(Counter(calls[kind]["ours"])),
                "baseline_call_list": dict(Counter(calls[kind]["baseline"])),
                "ours": so.as_dict(),
                "baseline": sb.as_dict(),
            }
        )
        result.say(
            f"{kind:13s} latency median ours {so.median:.2f}s vs baseline {sb.median:.2f}s "
            f"({format_ratio(ratio(sb.median, so.median))} faster); AWS calls {n_ours} vs {n_base} "
            f"(IAM {iam_ours} vs {iam_base}, {format_ratio(ratio(iam_base, iam_ours))} fewer); "
            f"processes {processes[kind]['ours']} vs {processes[kind]['baseline']}"
        )
    result.data["rows"] = rows
    cold = next((r for r in rows if r["kind"] == COLD_START_KIND), None)
    if cold is not None:
        result.data["cold_start"] = {
            "kind": COLD_START_KIND,
            "goal": COLD_START_GOAL,
            "speedup": cold["speedup"],
            "cpu_speedup": cold["cpu_speedup"],
            "ours_s": cold["ours_median_s"],
            "baseline_s": cold["baseline_median_s"],
            "ours_cpu_s": cold["ours_cpu_median_s"],
            "baseline_cpu_s": cold["baseline_cpu_median_s"],
        }
        result.say(
            f"cold start ({COLD_START_KIND}, whole process, same run): ours "
            f"{cold['ours_median_s']:.2f}s vs old script {cold['baseline_median_s']:.2f}s = "
            f"{format_ratio(cold['speedup'])}; CPU {cold['ours_cpu_median_s']:.2f}s vs "
            f"{cold['baseline_cpu_median_s']:.2f}s = {format_ratio(cold['cpu_speedup'])} "
            f"(goal {COLD_START_GOAL:.0f}x)"
        )
    result.data["late_tag_delay_s"] = LATE_TAG_DELAY
    if rows:
        _plot(ctx, result, rows)
    return result


def _plot(ctx: Context, result: Result, rows: list[dict[str, Any]]) -> None:
    pyplot = plt()
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(10, 4))
    labels = [r["kind"] for r in rows]
    x = range(len(rows))
    for axes, (o_key, b_key, title, unit) in zip(
        (left, right),
        (("ours_median_s", "baseline_median_s", "Boot latency (median)", "seconds"),
         ("ours_calls", "baseline_calls", "AWS calls per boot", "calls")),
    ):  # fmt: skip
        ours = axes.bar(
            [i - 0.2 for i in x], [r[o_key] for r in rows], 0.4, label="condor-annex-ec2"
        )
        base = axes.bar(
            [i + 0.2 for i in x], [r[b_key] for r in rows], 0.4, label="old script (baseline)"
        )
        axes.bar_label(ours, fmt="%.3g", fontsize=8)
        axes.bar_label(base, fmt="%.3g", fontsize=8)
        axes.set_xticks(list(x), labels)
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.legend(fontsize=8)
    save_figure(ctx, result, figure, "agent")
