"""`tapsc certify` and `tapsc export` end to end on a small digits network trained in the test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import invoke

from tapsc import rundir
from tapsc.compile import compile_network
from tapsc.data import load_dataset
from tapsc.spec import load_spec_text

SPEC = """\
data digits { batch 64; test_subset 40 }
model { input (1, 8, 8); conv(4, kernel = 3, padding = 1); batchnorm; relu; maxpool(kernel = 2)
        flatten; linear(24); relu; linear(10) }
perturbation linf { eps 0.02 }
method { phase natural }
optimizer adam { lr 1e-2; epochs 1 }
eval { attack pgd(steps = 8, restarts = 1, margin); batch 16 }
export { samples 30; timeout 2000 }
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory holding a briefly trained network (plain CE, a few hundred steps)."""
    folder = tmp_path_factory.mktemp("run") / "run"
    spec = load_spec_text(SPEC)
    torch.manual_seed(0)
    network = compile_network(spec)
    train = load_dataset(spec.data, train=True, shape=(1, 8, 8))
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.tensor([train[i][1] for i in range(len(train))])
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    for step in range(150):
        rows = torch.randint(0, len(y), (64,))
        loss = F.cross_entropy(network(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rundir.create(folder, spec, SPEC)
    rundir.save_checkpoint(rundir.checkpoint_path(folder, "best"), {"model": network.state_dict()})
    return folder


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
    # a verifier agreeing with every in-house verdict, and proving the unknown ones robust
    answers = {"certified": "unsat", "unknown": "unsat", "falsified": "sat"}
    results = tmp_path / "results.csv"
    results.write_text("".join(f"{m['vnnlib']},{answers[m['verdict']]}\n" for m in manifest["instances"]))
    merged = invoke("certify", run_dir, "--merge", results, "--benchmark", out)
    assert merged.exit_code == 0, merged.output
    combined = json.loads((run_dir / "merged.json").read_text())
    assert not combined["conflicts"]
    unknown_in_bench = sum(m["verdict"] == "unknown" for m in manifest["instances"])
    before = json.loads((run_dir / "certify.json").read_text())["summary"]["counts"]["certified"]
    assert combined["summary"]["counts"]["certified"] == before + unknown_in_bench
    # a verifier claiming a counterexample for a certified sample is a loud conflict
    certified = [m for m in manifest["instances"] if m["verdict"] == "certified"]
    if certified:
        results.write_text(f"{certified[0]['vnnlib']},sat\n")
        conflict = invoke("certify", run_dir, "--merge", results, "--benchmark", out)
        assert conflict.exit_code == 2 and "SOUNDNESS CONFLICT" in conflict.output


def test_export_only_unknown(run_dir, tmp_path):
    assert invoke("certify", run_dir, "--samples", 40, "--eps", 0.05, "--device", "cpu").exit_code == 0
    verdicts = json.loads((run_dir / "certify.json").read_text())["samples"]
    unknown = [s["index"] for s in verdicts if s["verdict"] == "unknown"]
    result = invoke("export", run_dir, "--vnnlib", "--onnx", "--only-unknown", "--eps", 0.05, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [m["index"] for m in manifest["instances"]] == unknown
    mismatch = invoke("export", run_dir, "--only-unknown", "--eps", 0.1, "--out", tmp_path)
    assert mismatch.exit_code == 1 and "eps-mismatch" in mismatch.output


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
