"""VNN-LIB properties read back by an independent parser, checked against ONNX; the layout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from vnnlib_reader import read_property, unsafe

from tapsc.certify.attack import pgd_counterexamples
from tapsc.errors import UnsupportedExport
from tapsc.export.benchmark import Sample, capped_timeout, write_benchmark
from tapsc.export.vnnlib import property_text, write_property
from tapsc.language import ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "certify"))
from certify_nets import random_network  # noqa: E402

ort = pytest.importorskip("onnxruntime")
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "vnnlib"
MLP = (ir.Flatten(), ir.Linear(out_features=16), ir.ReLU(), ir.Linear(out_features=4))


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)[None]})[0][0]


def test_property_states_the_box_and_one_disjunction():
    x = np.random.default_rng(0).random((2, 3, 3), dtype=np.float32)
    prop = read_property(property_text(x, label=2, num_classes=5, eps=0.25))
    flat = x.astype(np.float64).reshape(-1)
    assert prop["inputs"] == 18 and prop["outputs"] == 5
    assert prop["lower"] == list(np.clip(flat - 0.25, 0, 1)) and prop["upper"] == list(np.clip(flat + 0.25, 0, 1))
    assert sorted(prop["disjuncts"]) == [[(">=", f"Y_{j}", "Y_2")] for j in (0, 1, 3, 4)]
    assert prop["top_level_output_asserts"] == 0


def test_non_linf_perturbation_is_a_clear_error():
    from io import StringIO

    with pytest.raises(UnsupportedExport, match="l2"):
        write_property(StringIO(), np.zeros(4), 0, 3, 0.1, norm="l2")


def find_counterexample_sample(network, eps):
    """A correctly classified input whose box PGD breaks (random nets: search a few)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((64, *network.input_shape), generator=generator)
    labels = network(x).argmax(1)
    torch.manual_seed(0)
    found, point, _ = pgd_counterexamples(network, x, labels, eps, ir.InputAttack(steps=30, restarts=2))
    assert found.any(), "no counterexample found to test with"
    i = int(found.nonzero()[0])
    return x[i], int(labels[i]), point[i], x[int((~found).nonzero()[0])] if (~found).any() else None


def test_exported_benchmark_agrees_with_onnx_and_a_pgd_counterexample(tmp_path):
    network = random_network(12, layers=MLP, input_shape=(1, 4, 4))
    eps = 0.3
    x, label, counterexample, _ = find_counterexample_sample(network, eps)
    report = write_benchmark(tmp_path, network, [Sample(5, x, label, "falsified")], eps, timeout=60)
    assert report.instances == 1
    prop = read_property((tmp_path / "vnnlib" / "prop_5.vnnlib").read_text())
    lower, upper = np.array(prop["lower"]), np.array(prop["upper"])
    assert np.allclose(lower, (x - eps).clamp(0, 1).flatten().numpy(), atol=1e-7)
    assert np.allclose(upper, (x + eps).clamp(0, 1).flatten().numpy(), atol=1e-7)
    onnx_path = tmp_path / "onnx" / "net.onnx"
    assert not unsafe(prop, run_onnx(onnx_path, x.numpy())), "the box centre must be on the robust side"
    point = counterexample.numpy().astype(np.float64).reshape(-1)
    assert (point >= lower - 1e-7).all() and (point <= upper + 1e-7).all()
    assert unsafe(prop, run_onnx(onnx_path, counterexample.numpy())), "a PGD counterexample must be unsafe"


def test_layout_instances_and_manifest(tmp_path):
    network = random_network(13, layers=MLP, input_shape=(1, 4, 4))
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    predicted = network(x).argmax(1)
    labels = predicted.clone()
    labels[0] = (labels[0] + 1) % 4  # misclassified: must be skipped
    samples = [Sample(10 + i, x[i], int(labels[i]), "unknown") for i in range(6)]
    report = write_benchmark(tmp_path, network, samples, 0.05, timeout=300)
    assert report.skipped_misclassified == [10]
    rows = (tmp_path / "instances.csv").read_text().splitlines()
    assert rows == [f"onnx/net.onnx,vnnlib/prop_{10 + i}.vnnlib,300" for i in range(1, 6)]
    for row in rows:
        onnx_file, vnnlib_file, _ = row.split(",")
        assert (tmp_path / onnx_file).is_file() and (tmp_path / vnnlib_file).is_file()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [(m["index"], m["label"], m["verdict"]) for m in manifest["instances"]] == [
        (10 + i, int(labels[i]), "unknown") for i in range(1, 6)]


def test_summed_timeouts_are_capped_at_six_hours():
    assert capped_timeout(10, 300) == (300, None)
    timeout, warning = capped_timeout(100, 300)
    assert timeout * 100 == pytest.approx(6 * 3600) and "6-hour" in warning


def test_vnnlib_package_reads_the_same_property():
    compat = pytest.importorskip("vnnlib.compat")
    x = np.random.default_rng(1).random((1, 2, 2), dtype=np.float32)
    text = property_text(x, label=1, num_classes=3, eps=0.1)
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".vnnlib", delete=False) as handle:
        handle.write(text)
    ((box, specs),) = compat.read_vnnlib_simple(handle.name, 4, 3)
    ours = read_property(text)
    assert [list(b) for b in box] == [[lo, hi] for lo, hi in zip(ours["lower"], ours["upper"])]
    # each disjunct is mat @ y <= rhs; "Y_j >= Y_1" is y_1 - y_j <= 0, a row with +1 at 1 and -1 at j
    rows = sorted(tuple(mat[0]) for mat, rhs in specs)
    assert rows == sorted([(-1.0, 1.0, 0.0), (0.0, 1.0, -1.0)]) and all(rhs[0] == 0 for _, rhs in specs)


def test_golden_property_of_a_tiny_network(tmp_path, update_goldens):
    """A 2x2 single-channel input, 3 classes: the whole exported property text."""
    network = random_network(14, layers=(ir.Flatten(), ir.Linear(out_features=3)), input_shape=(1, 2, 2),
                             normalize=False)
    with torch.no_grad():
        network.layers[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 1.0]]))
        network.layers[1].bias.zero_()
    x = torch.tensor([[[0.05, 0.5], [0.25, 0.875]]])
    write_benchmark(tmp_path, network, [Sample(3, x, 2)], eps=0.1, timeout=60)
    text = (tmp_path / "vnnlib" / "prop_3.vnnlib").read_text()
    golden = GOLDEN / "tiny_linear.vnnlib"
    if update_goldens:
        golden.write_text(text)
    assert text == golden.read_text()
