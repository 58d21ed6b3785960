"""Fixtures live in tests/fixtures/ and are registered here."""

pytest_plugins = [
    "tests.fixtures.cluster",
    "tests.fixtures.pki",
    "tests.fixtures.chain_pki",
    "tests.fixtures.proxy",
    "tests.fixtures.daemon",
    "tests.fixtures.fake_backend",
    "tests.fixtures.logs",
]
