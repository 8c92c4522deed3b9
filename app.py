#!/usr/bin/env python3
"""The CDK app: builds the condor_annex setup stack from `cdk.json` context, nothing else."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from stacks.settings import SettingsError
from stacks.setup_stack import build_setup_app


def main() -> None:
    cdk_json = Path(__file__).resolve().parent / "cdk.json"
    context = json.loads(cdk_json.read_text()).get("context", {}) if cdk_json.exists() else {}
    try:
        app, _ = build_setup_app(context)
    except SettingsError as error:
        # One line naming the bad context value and the fix, not a jsii/Python traceback.
        sys.exit(f"condor_annex setup: {error}")
    app.synth()


if __name__ == "__main__":
    main()
