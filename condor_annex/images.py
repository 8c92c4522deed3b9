"""Which image an annex boots, and the first-boot user data that makes a stock image annex-ready.

Without `-aws-on-demand-ami-id` (or `ANNEX_DEFAULT_ODI_IMAGE_ID`), an annex boots the region's
current Amazon Linux 2023 image, read from its public SSM parameter. That image lacks HTCondor
and the boot agent, so the launch's user data installs them at first boot (`first_boot_script`):
HTCondor from its official repository, the agent with pip, the image's config, units and
shutdown script from `image/`, then the agent and HTCondor are started in order. The user's own
`-aws-user-data` still reaches the instance: both parts travel as one multipart MIME document,
which cloud-init splits (`compose_user_data`).

An image is one of three kinds (`kind_of`, `condor_annex -check-image AMI`):
- `annex-ready`: tagged `htcondor:AnnexImage` (built with image/install-al2023.sh); nothing added;
- `stock-al2023`: Amazon's own AL2023 image; made ready at first boot;
- `other`: any other image; assumed annex-ready (an image you built), nothing added.
"""

from __future__ import annotations

import email.generator
import email.message
import email.mime.multipart
import email.mime.text
import io
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from botocore.exceptions import ClientError

from condor_annex import __version__
from condor_annex.errors import InvalidInput

DEFAULT_IMAGE_PARAMETERS: dict[str, str] = {
    "x86_64": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
    "arm64": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64",
}
"""Amazon's public SSM parameters naming the region's current AL2023 image, per architecture."""
AMAZON_OWNER_ALIAS = "amazon"
STOCK_IMAGE_NAME_PREFIX = "al2023-ami-"
READY_IMAGE_TAG = "htcondor:AnnexImage"
"""Set on images built with image/install-al2023.sh: they boot annex-ready."""
HTCONDOR_SERIES = "25.0"
AGENT_PIP_SPEC = f"condor-annex=={__version__}"
"""What the first boot installs the agent from with pip (PyPI, or the index in /etc/pip.conf)."""
# Installed from a wheel the image files are package data (setup.py copies them); in a checkout
# they are the repository's top-level image/ directory.
_PACKAGED_IMAGE_DIR = Path(__file__).resolve().parent / "image"
IMAGE_DIR = (
    _PACKAGED_IMAGE_DIR
    if _PACKAGED_IMAGE_DIR.is_dir()
    else Path(__file__).resolve().parents[1] / "image"
)
"""The image's files (units, HTCondor config, shutdown script) the first boot writes."""
MIME_BOUNDARY = "==condor-annex-user-data=="


class ImageKind(str, Enum):
    READY = "annex-ready"
    STOCK_AL2023 = "stock-al2023"
    OTHER = "other"

    @property
    def explanation(self) -> str:
        return {
            ImageKind.READY: "annex-ready (built with image/install-al2023.sh): used as it is",
            ImageKind.STOCK_AL2023: "Amazon Linux 2023 as Amazon ships it: made annex-ready at "
            "first boot by the launch's user data (HTCondor from its repository, the agent)",
            ImageKind.OTHER: "not known to be annex-ready: used as it is, so it must run the "
            "boot agent itself (condor-annex-ec2 check-image on the image says whether it does)",
        }[self]


def architecture_of(ec2: Any, instance_type: str) -> str:
    """`x86_64` or `arm64` for `instance_type` (x86_64 when EC2 does not say)."""
    try:
        found = ec2.describe_instance_types(InstanceTypes=[instance_type]).get("InstanceTypes", [])
    except ClientError:
        found = []
    supported = found[0].get("ProcessorInfo", {}).get("SupportedArchitectures", []) if found else []
    return "arm64" if supported and "x86_64" not in supported and "arm64" in supported else "x86_64"


def default_image(ssm: Any, architecture: str = "x86_64") -> str:
    """The region's current AL2023 image for `architecture`, from Amazon's public parameter."""
    name = DEFAULT_IMAGE_PARAMETERS[architecture]
    try:
        value = str(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except ClientError as exc:
        raise InvalidInput(
            f"the default image could not be looked up ({name}: {exc})",
            next_step="pass -aws-on-demand-ami-id ami-... or set ANNEX_DEFAULT_ODI_IMAGE_ID",
        ) from exc
    if not value.startswith("ami-"):
        raise InvalidInput(f"the parameter {name} does not name an image: {value!r}")
    return value


def describe_image(ec2: Any, ami_id: str) -> Optional[dict[str, Any]]:
    try:
        images = ec2.describe_images(ImageIds=[ami_id]).get("Images", [])
    except ClientError:
        return None
    return dict(images[0]) if images else None


def kind_of(image: Mapping[str, Any]) -> ImageKind:
    tags = {t.get("Key"): t.get("Value") for t in image.get("Tags", []) or []}
    if READY_IMAGE_TAG in tags:
        return ImageKind.READY
    owned_by_amazon = image.get("ImageOwnerAlias") == AMAZON_OWNER_ALIAS
    if owned_by_amazon and str(image.get("Name", "")).startswith(STOCK_IMAGE_NAME_PREFIX):
        return ImageKind.STOCK_AL2023
    return ImageKind.OTHER


def _heredoc(path: str, content: str, mode: str) -> str:
    """Shell lines writing `content` to `$ROOT<path>` with `mode` (a quoted heredoc: no
    expansion inside)."""
    marker = "CONDOR_ANNEX_EOF"
    if marker in content:  # pragma: no cover - our own files never hold the marker
        raise ValueError(f"{path} holds the heredoc marker")
    body = content if content.endswith("\n") else content + "\n"
    return (
        f'install -d -m 0755 "$ROOT{Path(path).parent}"\n'
        f"cat > \"$ROOT{path}\" <<'{marker}'\n{body}{marker}\n"
        f'chmod {mode} "$ROOT{path}"\n'
    )


def first_boot_script(image_dir: Path = IMAGE_DIR) -> str:
    """The shell script that makes a stock AL2023 instance annex-ready and starts it.

    `ROOT=DIR DRY_RUN=1` (environment) writes the files under DIR and skips every package,
    systemctl and agent step: how the tests exercise it on a machine without dnf or systemd.
    """
    if not (image_dir / "systemd").is_dir():
        raise InvalidInput(
            f"the image files for a stock image's first boot are missing ({image_dir})",
            next_step="pass an annex-ready image with -aws-on-demand-ami-id, or install "
            "condor_annex from a checkout",
        )
    files = [
        (
            "/etc/condor/config.d/10-annex-image.config",
            "condor/config.d/10-annex-image.config",
            "0644",
        ),
        ("/usr/libexec/condor-annex/master-shutdown", "libexec/master-shutdown", "0755"),
    ]
    files += [
        (f"/etc/systemd/system/{unit.name}", f"systemd/{unit.name}", "0644")
        for unit in sorted((image_dir / "systemd").glob("*.*"))
        if unit.suffix in (".service", ".timer")
    ]
    writes = "".join(
        _heredoc(target, (image_dir / source).read_text(), mode) for target, source, mode in files
    )
    units = " ".join(
        Path(target).name for target, _, _ in files if target.endswith((".service", ".timer"))
    )
    return f"""#!/bin/bash
# condor_annex first boot: make this stock Amazon Linux 2023 instance annex-ready, then start it.
set -euo pipefail
ROOT="${{ROOT:-}}"
DRY_RUN="${{DRY_RUN:-0}}"
run() {{ if [ "$DRY_RUN" = 1 ]; then echo "would run: $*"; else "$@"; fi; }}
run dnf install -y python3 python3-pip python3-boto3 iptables-nft
run dnf install -y https://research.cs.wisc.edu/htcondor/repo/{HTCONDOR_SERIES}/htcondor-release-current.amzn2023.noarch.rpm
run dnf install -y condor
run python3 -m pip install --no-deps --prefix /usr/local '{AGENT_PIP_SPEC}'
{writes}run systemctl daemon-reload
run systemctl enable {units} condor.service
# In order: the firewall, the agent (configures HTCondor), then HTCondor itself.
run systemctl start condor-annex-firewall.service
run systemctl start condor-annex-ec2.service
run systemctl start condor.service condor-annex-spot-watcher.service condor-annex-refresh.timer
"""


def _part(text: str, subtype: str, filename: str) -> email.message.Message:
    """A text part sent as is (8bit): base64 would spend a third of EC2's 16 KB limit."""
    part = email.message.Message()
    part["Content-Type"] = f'text/{subtype}; charset="utf-8"'
    part["MIME-Version"] = "1.0"
    part["Content-Transfer-Encoding"] = "8bit"
    part["Content-Disposition"] = f'attachment; filename="{filename}"'
    part.set_payload(text)
    return part


def compose_user_data(first_boot: str, user_data: Optional[bytes]) -> bytes:
    """One multipart MIME document cloud-init runs part by part: our first-boot script, then
    the user's own user data unchanged (its type from its first line, as cloud-init reads it)."""
    message = email.mime.multipart.MIMEMultipart("mixed", boundary=MIME_BOUNDARY)
    message.attach(_part(first_boot, "x-shellscript", "condor-annex-first-boot.sh"))
    if user_data is not None:
        try:
            text = user_data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(
                "user data for a stock image must be text (it is combined with the first-boot "
                "script as multipart MIME)",
                next_step="pass text user data, or an annex-ready image with -aws-on-demand-ami-id",
            ) from None
        message.attach(_part(text, _user_data_subtype(user_data), "user-data"))
    out = io.StringIO()
    email.generator.Generator(out, mangle_from_=False).flatten(message)
    return out.getvalue().encode("utf-8")


def _user_data_subtype(user_data: bytes) -> str:
    """cloud-init's own content types, from the first line (cloud-init "User data formats")."""
    first = user_data.split(b"\n", 1)[0].strip()
    if first.startswith(b"#cloud-config"):
        return "cloud-config"
    if first.startswith(b"#!"):
        return "x-shellscript"
    if first.startswith(b"#include"):
        return "x-include-url"
    if first.startswith(b"#cloud-boothook"):
        return "cloud-boothook"
    return "plain"
