"""Shared pytest options. `--update-goldens` rewrites golden files instead of comparing."""

import pytest


def pytest_addoption(parser):
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="rewrite tests/golden/* files from the current output instead of comparing")


@pytest.fixture
def update_goldens(request) -> bool:
    """True when the run should rewrite golden files."""
    return request.config.getoption("--update-goldens")
