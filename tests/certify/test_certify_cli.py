"""`tapsc certify` and `tapsc export` end to end on a small digits network trained in the test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from cli_helpers import invoke
from tiny_run import SPEC, make_run

from tapsc.train import rundir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory holding a briefly trained network (plain CE, a few hundred steps)."""
    return make_run(tmp_path_factory.mktemp("run") / "run")


def test_certify_writes_json_and_csv(run_dir):
    result = invoke("certify", run_dir, "--samples", 40, "--device", "cpu")
    assert result.exit_code == 0, result.output
    document = json.loads((run_dir / "certify.json").read_text())
    counts = document["summary"]["counts"]
    assert counts["samples"] == 40 and counts["natural"] >= 30
    assert counts["certified"] + counts["unknown"] + counts["falsified"] + counts["misclassified"] == 40
    rows = list(csv.DictReader((run_dir / "certify.csv").open()))
    assert len(rows) == 40 and {r["verdict"] for r in rows} <= {"certified", "unknown", "falsified", "misclassified"}
    assert "certified" in result.output


def test_export_then_merge_round_trip(run_dir, tmp_path):
    assert invoke("certify", run_dir, "--range", "0:40", "--device", "cpu").exit_code == 0
    out = tmp_path / "bench"
    result = invoke("export", run_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert "onnxruntime" in result.output
    rows = (out / "instances.csv").read_text().splitlines()
    assert len(rows) == 30 and rows[0].startswith("onnx/net.onnx,vnnlib/prop_")
    assert rows[0].endswith(",720")  # 30 x 2000 s is over 6 hours: capped to 720 s
    manifest = json.loads((out / "manifest.json").read_text())
    verdicts = {s["index"]: s["verdict"] for s in json.loads((run_dir / "certify.json").read_text())["samples"]}
    assert all(m["verdict"] == verdicts[m["index"]] for m in manifest["instances"])
    # a verifier proving the certified and unknown samples robust (a sat without a witness never counts)
    answers = {"certified": "unsat", "unknown": "unsat", "falsified": "sat"}
    results = tmp_path / "results.csv"
    results.write_text("".join(f"{m['vnnlib']},{answers[m['verdict']]}\n" for m in manifest["instances"]))
    merged = invoke("certify", run_dir, "--merge", results, "--benchmark", out, "--tool", "neuralsat")
    assert merged.exit_code == 0, merged.output
    combined = json.loads((run_dir / "certify.json").read_text())
    assert not combined["conflicts"]
    assert len(combined["problems"]) == sum(m["verdict"] == "falsified" for m in manifest["instances"])
    unknown_in_bench = sum(m["verdict"] == "unknown" for m in manifest["instances"])
    before = sum(v == "certified" for v in verdicts.values())
    assert combined["summary"]["counts"]["certified"] == before + unknown_in_bench
    assert combined["summary"]["certified_by"]["neuralsat"] == unknown_in_bench
    assert [m["tool"] for m in combined["merges"]] == ["neuralsat"]
    # a verifier proving a sample the attack falsified is a loud conflict
    falsified = [m for m in manifest["instances"] if m["verdict"] == "falsified"]
    if falsified:
        results.write_text(f"{falsified[0]['vnnlib']},unsat\n")
        conflict = invoke("certify", run_dir, "--merge", results, "--benchmark", out)
        assert conflict.exit_code == 2 and "SOUNDNESS CONFLICT" in conflict.output


def test_several_radii_keep_one_result_each(run_dir, tmp_path):
    out = tmp_path / "radii"
    result = invoke("certify", run_dir, "--samples", 20, "--eps", "0.02,0.1", "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    spec_eps = json.loads((out / "certify.json").read_text())  # the spec's eps (0.02) keeps certify.json
    other = json.loads((out / "certify-eps0.1.json").read_text())
    assert spec_eps["settings"]["eps"] == 0.02 and other["settings"]["eps"] == 0.1
    assert (out / "certify.csv").is_file() and (out / "certify-eps0.1.csv").is_file()
    assert spec_eps["summary"]["counts"]["certified"] >= other["summary"]["counts"]["certified"]
    kept = (out / "certify-eps0.1.json").read_bytes()
    again = invoke("certify", run_dir, "--samples", 10, "--eps", 0.02, "--device", "cpu", "--out", out)
    assert again.exit_code == 0, again.output
    assert (out / "certify-eps0.1.json").read_bytes() == kept  # another radius is left untouched
    assert json.loads((out / "certify.json").read_text())["summary"]["counts"]["samples"] == 10
    bad = invoke("certify", run_dir, "--eps", "0.1,x", "--device", "cpu", "--out", out)
    assert bad.exit_code == 1 and "bad-eps" in bad.output and "Traceback" not in bad.output


def test_export_only_unknown(run_dir, tmp_path):
    assert invoke("certify", run_dir, "--samples", 40, "--eps", 0.05, "--device", "cpu").exit_code == 0
    verdicts = json.loads((run_dir / "certify-eps0.05.json").read_text())["samples"]
    unknown = [s["index"] for s in verdicts if s["verdict"] == "unknown"]
    result = invoke("export", run_dir, "--vnnlib", "--onnx", "--only-unknown", "--eps", 0.05, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [m["index"] for m in manifest["instances"]] == unknown
    mismatch = invoke("export", run_dir, "--only-unknown", "--eps", 0.1, "--out", tmp_path)
    assert mismatch.exit_code == 1 and "eps-mismatch" in mismatch.output


def test_export_only_unknown_with_nothing_unknown_writes_nothing(run_dir, tmp_path):
    out = tmp_path / "results"
    assert invoke("certify", run_dir, "--samples", 20, "--eps", 0, "--device", "cpu", "--out", out).exit_code == 0
    verdicts = json.loads((out / "certify-eps0.json").read_text())["samples"]
    assert not any(s["verdict"] == "unknown" for s in verdicts)  # eps 0: every correct sample is certified
    bench = tmp_path / "bench"
    result = invoke("export", run_dir, "--only-unknown", "--eps", 0, "--certify-results", out, "--out", bench)
    assert result.exit_code == 0, result.output
    assert "no sample unknown at eps 0" in result.output and "nothing to export" in result.output
    assert not bench.exists()


def test_spec_with_checkpoint_and_user_errors(run_dir, tmp_path):
    spec_file = tmp_path / "net.taps"
    spec_file.write_text(SPEC)
    checkpoint = rundir.checkpoint_path(run_dir, "best")
    out = tmp_path / "out"
    result = invoke("certify", spec_file, "--checkpoint", checkpoint, "--samples", 8, "--methods", "ibp,crown-ibp",
                    "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "certify.json").read_text())["settings"]["methods"] == ["ibp", "crown_ibp"]
    missing = invoke("certify", spec_file)
    assert missing.exit_code == 1 and "--checkpoint" in missing.output and "Traceback" not in missing.output
    bad_range = invoke("certify", run_dir, "--range", "9:3")
    assert bad_range.exit_code == 1 and "bad-range" in bad_range.output
    bad_method = invoke("certify", run_dir, "--methods", "deeppoly")
    assert bad_method.exit_code == 1 and "unknown-method" in bad_method.output
