#!/usr/bin/env python3
"""The CDK app: builds the condor_annex setup stack from `cdk.json` context, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

from stacks.setup_stack import build_setup_app


def main() -> None:
    cdk_json = Path(__file__).resolve().parent / "cdk.json"
    context = json.loads(cdk_json.read_text()).get("context", {}) if cdk_json.exists() else {}
    app, _ = build_setup_app(context)
    app.synth()


if __name__ == "__main__":
    main()
