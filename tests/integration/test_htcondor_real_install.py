"""The real HTCondor install the pool tests use runs here (skipped, with why, where it is absent)."""

from __future__ import annotations

import os
import pwd
import subprocess

from annex_sandbox import htcondor_dist


def test_real_install_runs_and_condor_user_exists(
    htcondor_install: htcondor_dist.Distribution,
) -> None:
    version = subprocess.run(
        [str(htcondor_install.program("condor_version"))],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert "$CondorVersion:" in version.stdout
    assert htcondor_install.program("condor_startd").is_file()
    assert (htcondor_install.libexec / htcondor_dist.REQUIRED_LIBEXEC).exists()
    ids = htcondor_dist.condor_ids()
    if pwd.getpwuid(ids.uid).pw_name != htcondor_dist.CONDOR_USER:
        # Not root: HTCondor runs everything as the invoking user.
        assert ids.uid == os.getuid()
