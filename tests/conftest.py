"""Shared fixtures live in tests/fixtures/, one module per concern."""

import os

# The tests' stand-in collector accepts connections and never answers (a pool that is down), so
# every pool query would wait HTCondor's default QUERY_TIMEOUT of 60 s. Tests shorten it the way
# an admin would, through HTCondor's own configuration (read when htcondor2 is first imported,
# hence before any plugin below); a real local collector answers in milliseconds.
os.environ.setdefault("_CONDOR_QUERY_TIMEOUT", "8")

pytest_plugins = [
    "tests.fixtures.aws",
    "tests.fixtures.imds",
    "tests.fixtures.cdk",
    "tests.fixtures.reliability",
    "tests.fixtures.htcondor",
    "tests.fixtures.htcondor_pool",
    "tests.fixtures.authz_coverage",
]
