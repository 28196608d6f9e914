"""Which certify results a command reads: one file per radius (tapsc.certify.report)."""

from __future__ import annotations

import json

import pytest

from tapsc.certify.report import find_results, pick_results, results_stem
from tapsc.errors import TapscError


def write(folder, name, eps):
    (folder / name).write_text(json.dumps({"settings": {"eps": eps}, "samples": []}))


def test_the_spec_eps_keeps_certify_json_other_radii_get_their_own_file():
    assert results_stem(0.02, 0.02) == "certify"
    assert results_stem(0.1, 0.02) == "certify-eps0.1"
    assert results_stem(1 / 255, 0.02) == "certify-eps0.00392157"


def test_find_and_pick(tmp_path):
    write(tmp_path, "certify-eps0.1.json", 0.1)
    assert find_results(tmp_path, 0.1) == tmp_path / "certify-eps0.1.json"
    assert find_results(tmp_path, 0.05) is None
    assert pick_results(tmp_path) == tmp_path / "certify-eps0.1.json"  # the only one
    write(tmp_path, "certify-eps0.2.json", 0.2)
    with pytest.raises(TapscError, match="several radii"):
        pick_results(tmp_path)
    write(tmp_path, "certify.json", 0.02)
    assert pick_results(tmp_path) == tmp_path / "certify.json"
    assert pick_results(tmp_path, 0.2) == tmp_path / "certify-eps0.2.json"
    assert find_results(tmp_path, 0.02) == tmp_path / "certify.json"
    with pytest.raises(TapscError, match="eps 0.3"):
        pick_results(tmp_path, 0.3)
