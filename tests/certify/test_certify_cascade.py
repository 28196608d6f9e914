"""The cascade's verdicts: never certified and falsified at once; reports; merging verifier results."""

from __future__ import annotations

import torch
from certify_nets import random_network
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tapsc.certify.cascade import Cascade, SampleVerdict, select_indices
from tapsc.certify.merge import Checked, MergedFile, combine
from tapsc.certify.report import read_verdicts, summarize, write_results
from tapsc.language import ir

ATTACK = ir.InputAttack(steps=10, restarts=1, loss="margin")


@st.composite
def small_layers(draw):
    width = draw(st.integers(2, 4))
    layers = [ir.Conv(out_channels=width, kernel=3, padding=draw(st.sampled_from([0, 1])))]
    if draw(st.booleans()):
        layers.append(ir.BatchNorm())
    layers.append(ir.ReLU())
    block = draw(st.sampled_from(["none", "residual", "maxpool", "avgpool"]))
    if block == "residual":
        layers.append(ir.Residual(body=(ir.Conv(out_channels=width, kernel=3, padding=1), ir.ReLU())))
    elif block == "maxpool":
        layers.append(ir.MaxPool(kernel=2, stride=1))
    elif block == "avgpool":
        layers.append(ir.AvgPool(kernel=2))
    layers += [ir.Flatten(), ir.Linear(out_features=draw(st.integers(3, 8))), ir.ReLU(),
               ir.Linear(out_features=3)]
    return tuple(layers)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=small_layers(), seed=st.integers(0, 10_000), eps=st.sampled_from([0.002, 0.02, 0.1, 0.3]))
def test_no_sample_is_both_certified_and_falsified(layers, seed, eps):
    network = random_network(seed, layers=layers)
    x = torch.rand((8, *network.input_shape), generator=torch.Generator().manual_seed(seed))
    labels = network(x).argmax(1)
    labels[:2] = (labels[:2] + 1) % 3
    torch.manual_seed(seed)
    # check_all: every bound method also runs on every falsified / misclassified sample
    verdicts = Cascade(network, eps, ATTACK).run(x, labels, list(range(8)))
    for v in verdicts:
        assert v.verdict in ("misclassified", "falsified", "certified", "unknown")
        if v.verdict == "certified":
            assert v.method in ("ibp", "crown_ibp", "crown") and v.margin_bound > 0 and v.attack_margin < 0
        if v.verdict == "falsified":
            assert v.attack_margin >= 0 and v.method is None
    assert [v.verdict for v in verdicts[:2]] == ["misclassified", "misclassified"]


def test_tiny_eps_certifies_and_methods_run_cheapest_first():
    network = random_network(20)
    x = torch.rand((6, *network.input_shape), generator=torch.Generator().manual_seed(0))
    labels = network(x).argmax(1)
    verdicts = Cascade(network, 1e-6, ATTACK).run(x, labels, list(range(6)))
    assert all(v.verdict == "certified" and v.method == "ibp" for v in verdicts)
    only_crown = Cascade(network, 1e-6, ATTACK, methods=("crown",)).run(x, labels, list(range(6)))
    assert all(v.method == "crown" for v in only_crown)


def test_select_indices():
    assert select_indices(10) == list(range(10))
    assert select_indices(10, first=3) == [0, 1, 2]
    assert select_indices(10, span=(4, 8)) == [4, 5, 6, 7]
    picked = select_indices(100, random=5, seed=3)
    assert len(set(picked)) == 5 and picked == sorted(picked) and picked == select_indices(100, random=5, seed=3)
    assert picked != select_indices(100, random=5, seed=4)


def verdict(index, kind, method=None):
    return SampleVerdict(index=index, label=1, prediction=1 if kind != "misclassified" else 0, verdict=kind,
                         method=method, margin_bound=0.5 if method else -0.1, attack_margin=-1.0, time=0.01)


VERDICTS = [verdict(0, "certified", "ibp"), verdict(1, "certified", "crown"), verdict(2, "unknown"),
            verdict(3, "unknown"), verdict(4, "falsified"), verdict(5, "misclassified"), verdict(6, "unknown")]


def test_summary_and_results_round_trip(tmp_path):
    summary = summarize(VERDICTS, ["ibp", "crown_ibp", "crown"])
    assert summary["counts"] == {"samples": 7, "natural": 6, "adversarial": 5, "certified": 2, "unknown": 3,
                                 "falsified": 1, "misclassified": 1}
    assert summary["certified_by"] == {"ibp": 1, "crown_ibp": 0, "crown": 1}
    json_path, csv_path = write_results(tmp_path, VERDICTS, summary, {"eps": 0.1})
    assert read_verdicts(json_path) == VERDICTS
    from_csv = read_verdicts(csv_path)
    assert [(v.index, v.verdict, v.method) for v in from_csv] == [(v.index, v.verdict, v.method) for v in VERDICTS]
    assert csv_path.read_text().splitlines()[0] == "index,label,prediction,verdict,method,source,margin_bound,time"


def answer(index, outcome, tool="v", word=None, rejected=False):
    return Checked(tool, "results.csv", index, "onnx/net.onnx", f"vnnlib/prop_{index}.vnnlib", word or outcome,
                   outcome, rejected=rejected, reason="bad witness" if rejected else None)


def test_combine_counts_checked_answers_and_reports_conflicts():
    """VERDICTS: 0, 1 certified; 2, 3, 6 unknown; 4 falsified; 5 misclassified."""
    files = [MergedFile("neuralsat", "a.csv", "h1", "bench", [
        answer(2, "unsat", "neuralsat"), answer(3, "sat", "neuralsat"), answer(6, "unknown", "neuralsat", "timeout"),
        answer(4, "unsat", "neuralsat"), answer(0, "sat", "neuralsat")]),
        MergedFile("marabou", "b.csv", "h2", "bench", [answer(3, "unsat", "marabou"),
                                                         answer(6, "unknown", "marabou", "sat", rejected=True)])]
    merged, problems, conflicts = combine(VERDICTS, files)
    assert [(v.index, v.verdict, v.method, v.source) for v in merged if v.index in (2, 3, 6)] == [
        (2, "certified", "neuralsat", "neuralsat"), (3, "falsified", None, "neuralsat"), (6, "unknown", None, None)]
    assert sorted((c.index, c.proved_by, c.falsified_by) for c in conflicts) == [
        (0, "tapsc (ibp)", "neuralsat (checked witness)"), (3, "marabou", "neuralsat (checked witness)"),
        (4, "neuralsat", "tapsc (falsified)")]
    assert [(p.tool, p.instance) for p in problems] == [("marabou", "vnnlib/prop_6.vnnlib")]
    summary = summarize(merged, ["ibp", "crown", "neuralsat"])
    assert summary["counts"]["certified"] == 3  # 2 in-house + 1 verifier; sample 0 keeps its verdict
    # a merged verdict goes back to unknown before the answers are combined again: no answers, no change
    again, _, _ = combine(merged, [])
    assert [(v.verdict, v.source) for v in again] == [(v.verdict, v.source) for v in VERDICTS]


def test_certified_metric_agrees_with_the_bounds():
    from tapsc.certify import certified, margin_lower_bounds

    network = random_network(21)
    x = torch.rand((10, *network.input_shape), generator=torch.Generator().manual_seed(2))
    labels = network(x).argmax(1)
    for eps in (1e-4, 0.01):
        ibp = certified(network, x, labels, eps, "ibp")
        assert torch.equal(ibp, margin_lower_bounds(network, x, labels, eps, "ibp") > 0)
        crown = certified(network, x, labels, eps, "crown")
        assert (crown >= certified(network, x, labels, eps, "crown_ibp")).all()
    assert crown.dtype == torch.bool and crown.shape == (10,)
