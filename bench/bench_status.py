"""`condor_annex status` on a 1,000-instance annex: DescribeInstances pages and time.

The region holds the annex (launched with its client token and tags) and a second annex of the
same size. Ours: the status verb (server-side `client-token`, fleet-tag and annex-tag filters),
in-process and as the `condor_annex status --json` command. Baseline: what a tool without
server-side filters does: page through every instance in the region and match client tokens
itself. Pages are counted from the local AWS's call log.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import world
from bench.harness import REPO_ROOT, Context, Result, Skipped, bar_pair
from bench.stats import format_ratio, ratio

CLI = REPO_ROOT / ".venv" / "bin" / "condor_annex"
REPEATS = 2


def _count(aws: world.RemoteAws, operation: str) -> int:
    return len(aws.control.calls("ec2", operation))


def baseline_status(ec2: Any, annex: str) -> int:
    """Every instance of the region, paged, matched client-side; returns the annex's count."""
    from condor_annex import contract

    found = 0
    for page in ec2.get_paginator("describe_instances").paginate():
        for reservation in page.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                if contract.token_belongs_to(instance.get("ClientToken"), annex):
                    found += 1
    return found


def one_pass_status(ec2: Any, annex: str) -> int:
    """The least an on-demand annex's status needs: one pass with the client-token filter."""
    from condor_annex import contract

    found = 0
    filters = [{"Name": "client-token", "Values": [contract.client_token_filter_value(annex)]}]
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                if contract.token_belongs_to(instance.get("ClientToken"), annex):
                    found += 1
    return found


def _cli_env(aws: world.RemoteAws, setup: world.Setup, home: Path) -> dict[str, str]:
    from condor_annex import contract
    from condor_annex.user_config import write_annex_macros

    config = home / ".condor" / "user_config"
    config.parent.mkdir(parents=True, exist_ok=True)
    macros = {
        contract.OUTPUT_CONFIG_BUCKET.macro: setup.bucket,
        contract.MACRO_AWS_REGION: aws.region,
    }
    write_annex_macros(config, macros)
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(home), **aws.admin_env()}


def run(ctx: Context) -> Result:
    result = Result("status")
    try:
        from condor_annex.annex_settings import AnnexClients, Settings
        from condor_annex.status import annex_status
    except ImportError as error:
        raise Skipped(f"the status verb is missing: {error}") from error
    count = ctx.pick(100, 1000)
    other = count // 2
    annex = "bench_status"
    with world.running_aws() as aws:
        setup = world.provision_setup(aws, world.scratch_dir("status-setup"))
        result.data["setup_source"] = setup.source
        world.launch_on_demand(aws, setup, annex, count)
        world.launch_on_demand(aws, setup, "other_annex", other)
        settings = Settings.from_outputs({"ConfigBucketName": setup.bucket}, region=aws.region)
        clients = AnnexClients(
            ec2=aws.client("ec2"), s3=aws.client("s3"), scheduler=aws.client("scheduler"),
            lambda_=aws.client("lambda"), region=aws.region,
        )  # fmt: skip
        ours_s, base_s, cli_s, min_s = [], [], [], []
        ours_pages = base_pages = 0
        ours_calls: dict[str, int] = {}
        for _ in range(REPEATS):
            aws.control.clear_calls()
            started = time.perf_counter()
            report = annex_status(settings=settings, clients=clients, annex_name=annex)
            ours_s.append(time.perf_counter() - started)
            ours_pages = _count(aws, "DescribeInstances")
            ours_calls = {}
            for call in aws.control.calls():
                key = f"{call.service}:{call.operation}"
                ours_calls[key] = ours_calls.get(key, 0) + 1
            shown = sum(len(a.instances) for a in report.annexes if a.annex_name == annex)
            if shown != count:
                result.fail(f"status shows {shown} instances of {annex}, launched {count}")
            aws.control.clear_calls()
            started = time.perf_counter()
            found = baseline_status(clients.ec2, annex)
            base_s.append(time.perf_counter() - started)
            base_pages = _count(aws, "DescribeInstances")
            if found != count:
                result.fail(f"baseline found {found} of {count}")
            started = time.perf_counter()
            one_pass_status(clients.ec2, annex)
            min_s.append(time.perf_counter() - started)
        if CLI.exists():
            env = _cli_env(aws, setup, world.scratch_dir("status-home"))
            for _ in range(REPEATS):
                started = time.perf_counter()
                done = subprocess.run(
                    [str(CLI), "status", "-annex-name", annex, "--json"], env=env,
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                cli_s.append(time.perf_counter() - started)
                if done.returncode != 0:
                    result.fail(
                        f"condor_annex status exited {done.returncode}: {done.stderr.strip()[-300:]}"
                    )
                    break
                try:
                    shown_cli = sum(
                        len(a.get("instances", []))
                        for a in json.loads(done.stdout).get("annexes", [])
                    )
                except (ValueError, AttributeError):
                    shown_cli = -1
                if shown_cli != count:
                    result.fail(
                        f"condor_annex status --json shows {shown_cli} of {count} instances"
                    )
                    break
    ours, base = statistics.median(ours_s), statistics.median(base_s)
    cli = statistics.median(cli_s) if cli_s else None
    least = statistics.median(min_s)
    result.say(
        f"{count} instances (+{other} of another annex): status verb {ours:.2f}s, "
        f"{ours_pages} DescribeInstances pages vs baseline {base:.2f}s, {base_pages} pages "
        f"({format_ratio(ratio(base, ours))} time, {format_ratio(ratio(base_pages, ours_pages))} pages)"
    )
    result.say(
        f"one client-token-filtered pass (the least an on-demand annex needs): {least:.2f}s, 1 page; "
        f"the status verb takes {ours / least:.1f}x that (it also reads the fleet-tag and annex-tag indexes)"
    )
    if cli is not None:
        result.say(
            f"`condor_annex status -annex-name {annex} --json` wall time: {cli:.2f}s (median of {len(cli_s)})"
        )
    result.data.update({
        "instances": count, "other_instances": other, "ours_s": ours_s, "baseline_s": base_s, "cli_s": cli_s,
        "ours_median_s": ours, "baseline_median_s": base, "one_pass_s": min_s, "one_pass_median_s": least, "cli_median_s": cli,
        "ours_describe_pages": ours_pages, "baseline_describe_pages": base_pages, "ours_calls": ours_calls,
    })  # fmt: skip
    bar_pair(ctx, result, "status", f"status on a {count}-instance annex (+{other} other instances)",
             ["seconds (median)", "DescribeInstances pages"],
             {"condor_annex status": [ours, ours_pages], "baseline: list all, match locally": [base, base_pages],
              "one filtered pass (floor)": [least, 1]},
             "value")  # fmt: skip
    return result
