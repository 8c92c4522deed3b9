"""Build hook: the setup app travels inside the wheel as package data.

`app.py`, `cdk.json`, `stacks/` and `lambda/` stay at the top of the repository, where the CDK
and the developers expect them; building the wheel copies them into `condor_annex/setup_app/`,
from where an installed `condor_annex -setup` runs them (`condor_annex.setup.default_project_dir`).
Of `package.json` only the CDK CLI pin travels: the other node packages are test tools and are
never shipped. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SETUP_APP_FILES = ("app.py", "cdk.json")
CDK_CLI_PACKAGE = "aws-cdk"
SETUP_APP_DIRS = ("stacks", "lambda")
SETUP_APP_PACKAGE_DIR = "condor_annex/setup_app"
# The image files a stock image installs at first boot (condor_annex.images) travel too.
IMAGE_DIR = "image"
IMAGE_PACKAGE_DIR = "condor_annex/image"


def _ignore(_: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))}


class BuildWithSetupApp(build_py):  # type: ignore[misc]  # setuptools has no type hints here
    """build_py, plus the setup app copied into the built package."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / SETUP_APP_PACKAGE_DIR
        target.mkdir(parents=True, exist_ok=True)
        for name in SETUP_APP_FILES:
            shutil.copyfile(ROOT / name, target / name)
        for name in SETUP_APP_DIRS:
            shutil.copytree(ROOT / name, target / name, dirs_exist_ok=True, ignore=_ignore)
        pins = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))["devDependencies"]
        package = {
            "name": "condor-annex-setup",
            "private": True,
            "description": "The AWS CDK CLI version the setup app is deployed with.",
            "devDependencies": {CDK_CLI_PACKAGE: pins[CDK_CLI_PACKAGE]},
        }
        (target / "package.json").write_text(json.dumps(package, indent=2) + "\n")
        shutil.copytree(
            ROOT / IMAGE_DIR, Path(self.build_lib) / IMAGE_PACKAGE_DIR, dirs_exist_ok=True
        )


setup(cmdclass={"build_py": BuildWithSetupApp})
