"""Fixtures shared by the certify tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import invoke
from tiny_run import MERGE_EPS, SPEC, at_merge_eps, make_run


@pytest.fixture(scope="session")
def tiny_certified_run(tmp_path_factory) -> Path:
    """The tiny digits run certified on test samples 0..39 at `MERGE_EPS`, its spec's eps, so the
    results are its certify.json (read-only: copy it)."""
    run = make_run(tmp_path_factory.mktemp("tiny") / "run", at_merge_eps(SPEC))
    result = invoke("certify", run, "--range", "0:40", "--eps", MERGE_EPS, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return run

