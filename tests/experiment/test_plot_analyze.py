"""`tapsc plot` and `tapsc analyze` on one short run: PNGs, and per-sample margin estimates
that respect the orders soundness guarantees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from experiment_helpers import invoke, write_spec

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    result = invoke("run", write_spec(folder), "--out", folder / "run", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return folder / "run"


def test_plot_writes_training_curves(run_dir: Path, tmp_path: Path):
    result = invoke("plot", run_dir)
    assert result.exit_code == 0, result.output
    assert (run_dir / "plots" / "training.png").read_bytes()[:8] == PNG
    assert invoke("plot", run_dir, "--out", tmp_path / "curves.png").exit_code == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG


def test_plot_and_analyze_refuse_what_is_not_a_run(tmp_path: Path):
    for args in (("plot", tmp_path / "missing"), ("plot", tmp_path), ("analyze", tmp_path)):
        result = invoke(*args)
        assert result.exit_code == 1 and "Traceback" not in result.output, args


def test_analyze_estimates_respect_the_soundness_order(run_dir: Path):
    # certify.json in the run adds its stored bounds and verdicts to the comparison
    assert invoke("certify", run_dir, "--samples", "24", "--methods", "ibp,crown", "--device", "cpu").exit_code == 0
    result = invoke("analyze", run_dir, "--samples", "32", "--device", "cpu")
    assert result.exit_code == 0, result.output
    folder = run_dir / "analysis"
    for name in ("margins.png", "margins_scatter.png"):
        assert (folder / name).read_bytes()[:8] == PNG
    report = json.loads((folder / "analysis.json").read_text())
    assert report["samples"] == 32 and report["stored"] == "certify.json"
    records = report["records"]
    assert len(records) == 32 and sum(1 for r in records if "verdict" in r) == 24
    tol = 1e-4
    for r in records:
        assert {"ibp", "crown_ibp", "crown", "sabr", "taps", "pgd"} <= r.keys()
        # IBP bounds the classifier anywhere in the latent box, the TAPS points included
        assert r["ibp"] <= r["taps"] + tol
        # a sound lower bound never exceeds a margin actually reached by an attack
        for bound in ("ibp", "crown_ibp", "crown"):
            assert r[bound] <= r["pgd"] + tol
            assert r[bound] <= r["tightest_sound"] + tol
        assert r["tightest_sound"] <= r["strongest_attack"] + tol
        if r.get("verdict") == "certified":
            assert r["tightest_sound"] > 0
        if r.get("verdict") in ("falsified", "misclassified"):
            assert r["strongest_attack"] <= 0
    summary = report["summary"]
    assert summary["soundness"]["ok"]
    accuracy = summary["accuracy"]
    assert accuracy["ibp"] <= accuracy["tightest_sound"] <= accuracy["pgd"] <= accuracy["natural"]
    assert set(summary["taps_correlation"]) >= {"pgd", "tightest_sound"}


def test_analyze_across_runs_correlates_taps_accuracy(run_dir: Path, tmp_path: Path):
    result = invoke("analyze", run_dir, run_dir, "--samples", "16", "--methods", "ibp,taps,pgd",
                    "--out", tmp_path, "--device", "cpu")
    assert result.exit_code == 0, result.output
    across = json.loads((tmp_path / "analysis_across_runs.json").read_text())
    assert len(across["runs"]) == 2 and "taps_vs_adversarial" in across
    assert invoke("analyze", run_dir, "--methods", "ibp,milp").exit_code == 1


def test_analyze_cuts_the_taps_estimate_at_another_split(run_dir: Path, tmp_path: Path):
    # The run trains with 1 ReLU in the classifier. Cut at 0 ReLUs, the classifier is the last
    # linear layer: the attack reaches the exact maximum over the latent box, which is IBP's bound.
    result = invoke("analyze", run_dir, "--samples", "16", "--methods", "ibp,taps", "--split", "0",
                    "--out", tmp_path / "zero", "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "zero" / "analysis.json").read_text())
    assert report["taps_split"] == {"relus_in_classifier": 0, "index": 6}
    assert all(abs(r["taps"] - r["ibp"]) <= 1e-4 * max(1.0, abs(r["ibp"])) for r in report["records"])
    default = invoke("analyze", run_dir, "--samples", "16", "--methods", "ibp,taps", "--out", tmp_path / "one",
                     "--device", "cpu")
    assert default.exit_code == 0, default.output
    again = json.loads((tmp_path / "one" / "analysis.json").read_text())
    assert again["taps_split"] == {"relus_in_classifier": 1, "index": 4}
    assert any(r["taps"] > r["ibp"] + 1e-4 for r in again["records"])  # one ReLU inside: IBP is looser
    bad = invoke("analyze", run_dir, "--split", "7", "--device", "cpu")
    assert bad.exit_code == 1 and "error[bad-split]" in bad.output and "valid: 0, 1, 2" in bad.output
