"""Lambda code assets: `lambda/<function>/` plus the shared contract, bundled locally.

The functions import `condor_annex.contract` (and `condor_annex.aws` for clients), so the bundle
copies those modules beside the handler instead of keeping a hand-copied duplicate. Bundling is
plain Python (`ILocalBundling`), no Docker; the asset hash is taken from the bundled output, so a
change to the contract changes the deployed code and an unchanged tree deploys as a no-op.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

import condor_annex

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The setup app's root: the repository, or `condor_annex/setup_app` inside an installed wheel."""
LAMBDA_SOURCE_ROOT = REPO_ROOT / "lambda"
PACKAGE_ROOT = Path(condor_annex.__file__).resolve().parent
"""The installed `condor_annex` package the functions' shared modules are copied from."""
SHARED_MODULES = ("__init__.py", "contract.py", "aws.py", "annex.py")
"""What the functions import from `condor_annex` (boto3 + stdlib only)."""

RUNTIME = lambda_.Runtime.PYTHON_3_14
"""The newest Python runtime in this aws-cdk-lib (a test fails when a newer one appears)."""


def _ignore(_: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))}


def stage_function(function: str, output_dir: Path) -> None:
    """Write the deployable tree of `lambda/<function>/` into `output_dir`."""
    shutil.copytree(LAMBDA_SOURCE_ROOT / function, output_dir, dirs_exist_ok=True, ignore=_ignore)
    package = output_dir / "condor_annex"
    package.mkdir(exist_ok=True)
    for module in SHARED_MODULES:
        shutil.copyfile(PACKAGE_ROOT / module, package / module)


@jsii.implements(ILocalBundling)
class _LocalBundler:
    def __init__(self, function: str) -> None:
        self.function = function

    def try_bundle(self, output_dir: str, options: Any) -> bool:
        stage_function(self.function, Path(output_dir))
        return True


def function_code(function: str) -> lambda_.Code:
    """The `Code` of `lambda/<function>/`, bundled with the shared modules."""
    return lambda_.Code.from_asset(
        str(LAMBDA_SOURCE_ROOT / function),
        asset_hash_type=AssetHashType.OUTPUT,
        bundling=BundlingOptions(
            # Never used: local bundling always succeeds. Required by the API.
            image=DockerImage.from_registry("local-bundling-only"),
            # jsii hands `try_bundle` the options struct positionally; the generated stub
            # declares them as keywords, so mypy cannot match the protocol.
            local=_LocalBundler(function),  # type: ignore[arg-type]
        ),
    )
