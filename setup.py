"""Build hook: the setup app travels inside the wheel as package data.

`app.py`, `cdk.json`, `stacks/`, `lambda/` and `package.json` (which pins the CDK CLI) stay at the
top of the repository, where the CDK and the developers expect them; building the wheel copies
them into `condor_annex/setup_app/`, from where an installed `condor_annex -setup` runs them
(`condor_annex.setup.default_project_dir`). Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SETUP_APP_FILES = ("app.py", "cdk.json", "package.json", "package-lock.json")
SETUP_APP_DIRS = ("stacks", "lambda")
SETUP_APP_PACKAGE_DIR = "condor_annex/setup_app"


def _ignore(_: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))}


class BuildWithSetupApp(build_py):
    """build_py, plus the setup app copied into the built package."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / SETUP_APP_PACKAGE_DIR
        target.mkdir(parents=True, exist_ok=True)
        for name in SETUP_APP_FILES:
            shutil.copyfile(ROOT / name, target / name)
        for name in SETUP_APP_DIRS:
            shutil.copytree(ROOT / name, target / name, dirs_exist_ok=True, ignore=_ignore)


setup(cmdclass={"build_py": BuildWithSetupApp})
