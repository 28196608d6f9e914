"""benchmarks/peers.py: argument handling, the skip messages and the JSON, with tapsc alone
(no test needs CTRAIN or the authors' code installed, and none checks a timing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _peers(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for name in ("TAPSC_CTRAIN_PYTHON", "TAPSC_AUTHORS_DIR", "TAPSC_AUTHORS_PYTHON"):
        monkeypatch.delenv(name, raising=False)
    sys.modules.pop("peers", None)
    import peers

    return peers


def test_absent_peers_are_skipped_with_the_reason(monkeypatch):
    peers = _peers(monkeypatch)
    args = peers.argparse.Namespace(ctrain_python=None, authors_dir=None, authors_python=None, batch=4, eps=0.1,
                                    steps="2", methods="ibp", width=4, threads=1)
    found = {p.name: p for p in peers.peers_from(args)}
    assert found["tapsc"].command and not found["tapsc"].skipped
    assert "--ctrain-python" in found["CTRAIN"].skipped and "TAPSC_CTRAIN_PYTHON" in found["CTRAIN"].skipped
    assert "--authors-dir" in found["authors"].skipped
    monkeypatch.setenv("TAPSC_CTRAIN_PYTHON", "/nowhere/bin/python")
    monkeypatch.setenv("TAPSC_AUTHORS_DIR", str(BENCHMARKS))  # a folder, but not an eth-sri/TAPS checkout
    found = {p.name: p for p in peers.peers_from(args)}
    assert "/nowhere/bin/python does not exist" in found["CTRAIN"].skipped
    assert "not an eth-sri/TAPS checkout" in found["authors"].skipped


def test_quick_run_times_tapsc_and_skips_a_peer_that_cannot_start(tmp_path, monkeypatch):
    peers = _peers(monkeypatch)
    out = tmp_path / "peers.json"
    # tapsc's own python has no CTRAIN: its driver starts, fails to import, and is skipped
    result = peers.main(["--quick", "--methods", "natural,taps", "--ctrain-python", sys.executable,
                         "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert set(result["implementations"]) == {"tapsc"}
    assert "did not start" in result["skipped"]["CTRAIN"] and "authors" in result["skipped"]
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["ibp", "natural", "taps_steps2"]  # the IBP baseline is always timed
    for row in rows.values():
        assert row["implementation"] == "tapsc" and "error" not in row, row
        assert row["median_cpu_s"] > 0 and row["peak_mib"] > 0 and row["ratio_to_tapsc"] == 1.0
    assert rows["ibp"]["ratio_to_own_ibp"] == 1.0


# ---------------------------------------------------------------- the trained workload


def _tiny_workload(peers, batch: int = 4):
    """A TrainedWorkload of the quickstart's small network (not trained: BatchNorm statistics and
    weights made up, so a wrong copy shows in the logits) on random 8x8 images."""
    import torch
    from trained_workload import TrainedWorkload

    from tapsc.compile import compile_network
    from tapsc.language.spec import load_spec

    spec = load_spec(BENCHMARKS.parent / "specs" / "quickstart.taps")
    torch.manual_seed(0)
    network = compile_network(spec)
    with torch.no_grad():
        for name, tensor in network.named_buffers():
            if name.endswith("running_mean"):
                tensor.uniform_(-0.5, 0.5)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
    x = torch.rand((batch, *spec.model.input_shape), generator=torch.Generator().manual_seed(1))
    source = {"run_dir": "/nowhere/run", "dataset": "digits", "command": None, "images": f"first {batch} training "
              "images", "batch": batch, "eps_target": 0.1, "spec": "specs/quickstart.taps"}
    return TrainedWorkload(spec, network.train(), x, torch.arange(batch) % 10, 0.1, source)


def test_workload_file_round_trip_and_refusals(tmp_path, monkeypatch):
    import pytest
    import torch

    peers = _peers(monkeypatch)
    monkeypatch.syspath_prepend(str(BENCHMARKS / "peer_drivers"))
    from protocol import (
        WorkloadMismatch,
        load_tensors,
        logit_difference,
        ordered_tensors,
        read_workload,
        snapshot,
    )

    from tapsc.compile import compile_network

    workload = _tiny_workload(peers)
    path = tmp_path / "workload.pt"
    summary = peers.write_workload_file(workload, path)
    assert workload.network.training  # the writer's eval pass puts the mode back
    content = read_workload(path)
    # weight and bias of 2 convs and 2 linears; weight, bias, running mean and variance of 3 batchnorms
    assert summary["file_tensors"] == len(content["tensors"]) == 4 * 2 + 3 * 4
    assert content["names"][:6] == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"]
    assert (content["width"], content["linear_size"], content["classes"]) == (16, 100, 10)
    assert content["normalize"] is None and content["input_shape"] == [1, 8, 8] and content["eps"] == 0.1

    torch.manual_seed(5)  # another initialisation: only the copy makes the logits agree
    fresh = compile_network(workload.spec)
    load_tensors(torch.nn.ModuleList(fresh.layers), content, "fresh")
    fresh.eval()
    with torch.no_grad():
        assert logit_difference(fresh(content["x"]), content, "fresh") == 0.0
        restore = snapshot(fresh)
        fresh.layers[0].weight.add_(0.5)
        with pytest.raises(WorkloadMismatch, match="differ from the reference"):
            logit_difference(fresh(content["x"]), content, "fresh")
        restore()
        assert logit_difference(fresh(content["x"]), content, "fresh") == 0.0

    wrong = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8))
    with pytest.raises(WorkloadMismatch, match=r"has 6 parameter and BatchNorm tensors"):
        load_tensors(wrong, content, "wrong")
    content["tensors"] = content["tensors"][:6]
    content["names"] = content["names"][:6]
    with pytest.raises(WorkloadMismatch, match=r"wrong's 0\.weight has shape \(8, 1, 3, 3\), the workload file's "
                                               r"0\.weight \(16, 1, 3, 3\)"):
        load_tensors(wrong, content, "wrong")
    with pytest.raises(WorkloadMismatch, match="holds"):  # a parameter the exchange would leave out
        module = torch.nn.Linear(2, 2)
        module.scale = torch.nn.Parameter(torch.ones(2))
        ordered_tensors(module)


def test_trained_quick_run_times_tapsc_on_the_workload_file(tmp_path, monkeypatch):
    peers = _peers(monkeypatch)
    import trained_workload

    calls = []

    def fake(device, spec_path, run_dir, batch, quick, log=print):
        calls.append((spec_path, run_dir, batch, quick))
        return _tiny_workload(peers, batch)

    monkeypatch.setattr(trained_workload, "trained_workload", fake)
    out = tmp_path / "peers.json"
    result = peers.main(["--workload", "trained", "--quick", "--methods", "natural,taps", "--json", str(out)])
    assert calls == [(peers.TRAINED_SPEC, None, 4, True)]
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    workload = result["workload"]
    assert workload["kind"] == "trained" and workload["run_dir"] == "/nowhere/run" and workload["batch"] == 4
    assert workload["logit_max_abs_diff"] == {"tapsc": {"network": 0.0}}
    assert result["settings"]["eps"] == 0.1 and "workload_file" not in result["settings"]
    info = result["implementations"]["tapsc"]
    assert info["workload"] == "trained" and info["batch"] == 4 and info["splits"]["taps_steps2"] > 0
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["ibp", "natural", "taps_steps2"]
    for row in rows.values():
        assert "error" not in row and row["median_cpu_s"] > 0, row
    assert "trained workload: quickstart.taps" in peers.title(workload, result["settings"])


def test_trained_flags_need_the_trained_workload(monkeypatch):
    import pytest

    peers = _peers(monkeypatch)
    with pytest.raises(SystemExit):
        peers.main(["--trained-run", "/nowhere"])
