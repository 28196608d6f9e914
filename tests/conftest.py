"""Shared pytest options. `--update-goldens` rewrites golden files instead of comparing."""

import os

# Under pytest-xdist every worker is its own process; with torch's default of one thread per
# core, two workers on two cores oversubscribe and OpenMP barriers dominate small steps.
# One thread per worker (inherited by the subprocesses tests start, so in-process and
# subprocess runs still sum floats in the same order). Set before anything imports torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="rewrite tests/golden/* files from the current output instead of comparing")


@pytest.fixture
def update_goldens(request) -> bool:
    """True when the run should rewrite golden files."""
    return request.config.getoption("--update-goldens")
