"""Every path the agent reads or writes, relocatable under `--root` for tests and demos."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Root:
    """The filesystem root the agent works in (`/` on an instance, a temporary dir in tests)."""

    base: Path = Path("/")

    def path(self, absolute: str) -> Path:
        """`absolute` (an on-instance path such as `/etc/condor`) relocated under `base`."""
        relative = PurePosixPath(absolute).relative_to("/")
        return self.base / relative

    @property
    def relocated(self) -> bool:
        return self.base.resolve() != Path("/")

    @property
    def privileged(self) -> bool:
        """Running as root: files are chowned to root; otherwise only modes are set."""
        return os.geteuid() == 0

    @property
    def condor_dir(self) -> Path:
        return self.path("/etc/condor")

    @property
    def config_dir(self) -> Path:
        """HTCondor's LOCAL_CONFIG_DIR on an annex image; the tarball unpacks here."""
        return self.path("/etc/condor/config.d")

    @property
    def iptables_rules_file(self) -> Path:
        return self.path("/etc/sysconfig/iptables-annex")

    @property
    def ip6tables_rules_file(self) -> Path:
        return self.path("/etc/sysconfig/ip6tables-annex")

    @property
    def systemd_dir(self) -> Path:
        return self.path("/etc/systemd/system")

    @property
    def systemd_lib_dirs(self) -> tuple[Path, ...]:
        return (self.path("/usr/lib/systemd/system"), self.path("/lib/systemd/system"))
