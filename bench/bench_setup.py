"""Synth time and `condor_annex -setup` wall time on the local AWS.

Synth: `python app.py` (CDK_OUTDIR, context via CDK_CONTEXT_JSON), against the CDK CLI's own
`cdk synth` of the same app (what `cdk deploy` pays before deploying).
Setup: `condor_annex -setup` on a fresh local AWS (first run: CDK bootstrap + deploy + user
config), then again (nothing to change), against the floor: the synthesized template created
directly through CloudFormation with its assets published (no CDK CLI).
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
from bench.harness import REPO_ROOT, Context, Result, Skipped, plt, save_figure
from bench.stats import format_ratio, ratio

CLI = REPO_ROOT / ".venv" / "bin" / "condor_annex"
CDK = REPO_ROOT / "node_modules" / ".bin" / "cdk"
SYNTH_CONTEXT = {"vpcId": "vpc-0a0a0a0a0a0a0a0a0", "poolCidrs": [world.POOL_CIDR]}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
            "CDK_DISABLE_VERSION_CHECK": "1", **extra}  # fmt: skip


def synth_app(outdir: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [str(REPO_ROOT / ".venv/bin/python"), "app.py"], cwd=REPO_ROOT, capture_output=True, text=True,
        env=_env(CDK_OUTDIR=str(outdir), CDK_CONTEXT_JSON=json.dumps(SYNTH_CONTEXT)), check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0 or not list(outdir.glob("*.template.json")):
        raise Skipped(f"`python app.py` failed: {done.stderr.strip().splitlines()[-1:]}")
    return seconds


def synth_cdk_cli(outdir: Path) -> float:
    context = ["-c", f"vpcId={SYNTH_CONTEXT['vpcId']}", "-c", f"poolCidrs={world.POOL_CIDR}"]
    started = time.perf_counter()
    done = subprocess.run(
        [str(CDK), "synth", "--app", f"{REPO_ROOT / '.venv/bin/python'} app.py", "-o", str(outdir), "-q", *context],
        cwd=REPO_ROOT, capture_output=True, text=True, env=_env(CI="true"), check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"cdk synth failed: {done.stderr.strip()[-300:]}")
    return seconds


def run_setup_cli(aws: world.RemoteAws, home: Path) -> tuple[float, int, str]:
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(home),
        **aws.admin_env(),
        # The CDK CLI must reach the emulator by name (docs/RULES.md, "Testing without AWS").
        "AWS_ENDPOINT_URL": aws.endpoint_url.replace("127.0.0.1", "localhost"),
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    }  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(
        [str(CLI), "-setup", "-aws-region", aws.region, "-pool-cidr", world.POOL_CIDR],
        cwd=home, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return time.perf_counter() - started, done.returncode, (done.stderr + done.stdout)[-600:]


def run(ctx: Context) -> Result:
    result = Result("setup")
    repeats = 1
    ours_synth = [synth_app(world.scratch_dir("synth")) for _ in range(repeats)]
    cli_synth: list[float] = []
    if CDK.exists():
        try:
            cli_synth = [synth_cdk_cli(world.scratch_dir("cdk-synth")) for _ in range(repeats)]
        except RuntimeError as error:
            result.say(f"cdk synth baseline unavailable: {error}")
    s_ours = statistics.median(ours_synth)
    line = f"synth `python app.py`: {s_ours:.1f}s"
    if cli_synth:
        s_cli = statistics.median(cli_synth)
        line += f" vs `cdk synth` {s_cli:.1f}s ({format_ratio(ratio(s_cli, s_ours))})"
    result.say(line)
    result.data.update({"synth_app_s": ours_synth, "synth_cdk_cli_s": cli_synth})

    setup_runs: dict[str, Any] = {}
    if not CLI.exists():
        result.say(f"SKIPPED -setup: {CLI} is not installed")
    else:
        with world.running_aws() as aws:
            home = world.scratch_dir("setup-home")
            for label in ("first", "again"):
                seconds, rc, tail = run_setup_cli(aws, home)
                setup_runs[label] = seconds
                if rc != 0:
                    result.fail(f"condor_annex -setup ({label}) exited {rc}: {tail}")
                    break
            config = home / ".condor" / "user_config"
            if rc == 0 and (
                not config.exists() or "ANNEX_DEFAULT_S3_BUCKET" not in config.read_text()
            ):
                result.fail("-setup wrote no ANNEX_DEFAULT_* macros")
        with world.running_aws() as aws:
            from tests.fixtures.cdk import deploy_setup

            synth = world.synthesized()
            started = time.perf_counter()
            deploy_setup(synth, aws)
            setup_runs["cloudformation_floor"] = time.perf_counter() - started
        floor = setup_runs["cloudformation_floor"]
        parts = [f"{k} {v:.1f}s" for k, v in setup_runs.items()]
        result.say("-setup wall time: " + ", ".join(parts))
        if "first" in setup_runs:
            result.say(
                f"-setup (first run, incl. CDK bootstrap) is {setup_runs['first'] / floor:.1f}x the direct "
                f"CloudFormation floor; a re-run costs {setup_runs.get('again', float('nan')) / floor:.1f}x"
            )
    result.data["setup_s"] = setup_runs
    _plot(ctx, result, s_ours, statistics.median(cli_synth) if cli_synth else None, setup_runs)
    return result


def _plot(
    ctx: Context, result: Result, synth: float, cli: float | None, runs: dict[str, float]
) -> None:
    pyplot = plt()
    figure, axes = pyplot.subplots(figsize=(8, 4))
    labels = ["synth: python app.py"] + (["synth: cdk synth"] if cli is not None else [])
    values = [synth] + ([cli] if cli is not None else [])
    names = {"first": "-setup (first, bootstrap)", "again": "-setup (re-run)",
             "cloudformation_floor": "CloudFormation create (floor)"}  # fmt: skip
    for key, value in runs.items():
        labels.append(names.get(key, key))
        values.append(value)
    bars = axes.barh(
        labels, values, color=["#4c72b0"] * (2 if cli is not None else 1) + ["#dd8452"] * len(runs)
    )
    axes.bar_label(bars, fmt="%.1fs", fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("seconds")
    axes.set_title("Synth and setup on the local AWS")
    save_figure(ctx, result, figure, "setup")
