"""Shared fixtures live in tests/fixtures/, one module per concern."""

pytest_plugins = [
    "tests.fixtures.aws",
    "tests.fixtures.imds",
    "tests.fixtures.cdk",
    "tests.fixtures.reliability",
    "tests.fixtures.htcondor",
    "tests.fixtures.htcondor_pool",
    "tests.fixtures.authz_coverage",
]
