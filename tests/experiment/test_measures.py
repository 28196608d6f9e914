"""The table of measures (tapsc/measures.py) is complete: every measure has its margin function,
its label and color, and a place in each list that shows it (IR, eval, sweep, display, plots,
analysis, certify). The tests iterate the table, so a measure added there without its rule,
or a place that keeps its own list, fails here."""

from __future__ import annotations

import inspect
import typing

import pytest
import torch

from tapsc import margins, measures
from tapsc.compile import compile_network
from tapsc.errors import TapscError
from tapsc.language import ir
from tapsc.measures import ANALYSIS, CERTIFY, EVAL, KINDS, MEASURES, PLACES, SWEEP

COMPUTED = [name for name, m in MEASURES.items() if m.computed]


def _spec(eps: float = 0.05) -> ir.Spec:
    layers = (ir.Flatten(), ir.Linear(out_features=12), ir.ReLU(), ir.Linear(out_features=8), ir.ReLU(),
              ir.Linear(out_features=4))
    return ir.Spec(data=ir.Data(dataset="mnist"), model=ir.Model(input_shape=(1, 3, 3), layers=layers),
                   split=ir.SplitByRelus(count=1), perturbation=ir.Perturbation(eps=eps),
                   method=ir.Method(phases=(ir.TAPSPhase(attack=ir.LatentAttack(steps=4)),)),
                   optimizer=ir.Optimizer(epochs=1),
                   eval=ir.Eval(attack=ir.InputAttack(steps=4, restarts=1, loss="margin")))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    spec = _spec()
    network = compile_network(spec).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand((16, 1, 3, 3), generator=generator)
    with torch.no_grad():
        y = network(x).argmax(1)  # mostly correct, so that robust verdicts are not all False
    y[:3] = (y[:3] + 1) % 4
    return spec, network, x, y


# ---------------------------------------------------------------- the table


@pytest.mark.parametrize("name", MEASURES)
def test_every_measure_has_a_label_a_kind_a_color_and_a_place(name):
    measure = MEASURES[name]
    assert measure.name == name and measure.label and measure.color
    assert measure.kind in KINDS and measure.shown and measure.shown <= set(PLACES)


def test_measures_are_told_apart_in_figures_and_tables():
    assert len({m.color for m in MEASURES.values()}) == len(MEASURES)
    assert len({m.label for m in MEASURES.values()}) == len(MEASURES)


def test_every_computed_measure_has_one_margin_function_and_no_other_does():
    missing, extra = set(COMPUTED) - set(margins.MARGINS), set(margins.MARGINS) - set(COMPUTED)
    assert not missing, f"no margin function registered in tapsc/margins.py for {sorted(missing)}"
    assert not extra, f"margin functions for {sorted(extra)}, which are not computed measures"
    # a measure read from a file (a complete verifier's verdicts) is shown by the sweep only
    assert all(m.shown == {SWEEP} for m in MEASURES.values() if not m.computed)


@pytest.mark.parametrize("name", COMPUTED)
def test_margin_functions_give_one_margin_per_sample(name, tiny):
    spec, network, x, y = tiny
    torch.manual_seed(0)
    margin_B = margins.margin(name, network, x, y, spec)
    assert margin_B.shape == (len(y),) and margin_B.dtype.is_floating_point and torch.isfinite(margin_B).all()


@pytest.mark.parametrize("name", [n for n in COMPUTED if EVAL in MEASURES[n].shown])
def test_verdicts_follow_the_kind(name, tiny):
    spec, network, x, y = tiny
    kind = MEASURES[name].kind
    torch.manual_seed(0)
    verdict_B = margins.robust(name, network, x, y, spec)
    torch.manual_seed(0)
    margin_B = margins.margin(name, network, x, y, spec)
    correct_B = network(x).argmax(1) == y
    assert verdict_B.dtype == torch.bool and verdict_B.shape == y.shape
    if kind == "attack":
        assert torch.equal(verdict_B, margin_B > 0)
    elif kind == "estimate":
        assert torch.equal(verdict_B, (margin_B > 0) & correct_B)
    elif kind == "clean":
        assert torch.equal(verdict_B, correct_B)
    else:  # certification: never a sample an attack falsifies
        torch.manual_seed(0)
        assert not (verdict_B & (margins.margin("pgd", network, x, y, spec) <= 0)).any()
    assert (verdict_B <= correct_B).all() and verdict_B.any() and not verdict_B.all()


# ---------------------------------------------------------------- every place reads it


def test_the_ir_accepts_exactly_the_eval_measures():
    from tapsc.language.spec import load_spec_text

    assert set(typing.get_args(ir.Metric)) == set(measures.names(EVAL))
    assert set(ir.Eval().metrics) <= set(measures.names(EVAL))
    text = ("data digits { batch 4 }\nmodel { flatten; linear(10) }\nperturbation { eps 0.1 }\n"
            "method { phase ibp }\noptimizer { epochs 1 }\neval { metrics (%s); select ibp }\n")
    spec = load_spec_text(text % ", ".join(measures.names(EVAL)), "<test>")  # the spec's keywords are the names
    assert spec.eval.metrics == measures.names(EVAL)
    for other in set(MEASURES) - set(measures.names(EVAL)):
        with pytest.raises(TapscError):
            load_spec_text(text % other, "<test>")


def test_eval_reports_every_eval_measure(tiny):
    from torch.utils.data import TensorDataset

    from tapsc.evaluate import evaluate
    from tapsc.train.display import results_table

    spec, network, x, y = tiny
    results = evaluate(network, TensorDataset(x, y), spec, measures.names(EVAL))
    assert list(results["metrics"]) == list(measures.names(EVAL)) and not results["skipped"]
    table = results_table(results)
    assert [cell for cell in table.columns[0].cells] == [MEASURES[n].accuracy_label for n in measures.names(EVAL)]


def test_sweep_shows_every_sweep_measure_with_a_name_and_a_color():
    from tapsc.experiments import plots, sweep
    from tapsc.train import display

    assert sweep.METRIC_COLUMNS == measures.names(SWEEP)
    columns = sweep.columns(sweep.Sweep(spec_path=None, sets=[], folder=None))
    assert [c for c in columns if c in MEASURES] == list(measures.names(SWEEP))
    for name in measures.names(SWEEP):
        assert display.METRIC_NAMES[name] == MEASURES[name].accuracy_label
        assert plots._color(name) == MEASURES[name].color
    assert sweep.CERTIFIED_ORDER == tuple(n for n in reversed(measures.names(SWEEP)) if MEASURES[n].kind == "sound")


def test_analysis_estimates_every_analysis_measure_sound_first(tiny):
    from tapsc.commands import experiment
    from tapsc.experiments import analysis, plots

    assert set(analysis.ESTIMATES) == set(measures.names(ANALYSIS))
    order = [KINDS.index(MEASURES[n].kind) for n in analysis.ESTIMATES]
    assert order == sorted(order)  # loosest sound bound first, the attack last
    option = inspect.signature(experiment.analyze_command).parameters["methods"].default
    assert option.default.split(",") == list(analysis.ESTIMATES)  # `tapsc analyze`'s default: every estimate
    spec, network, x, y = tiny
    torch.manual_seed(0)
    estimates = analysis.batch_estimates(network, x, y, spec, analysis.ESTIMATES)
    assert list(estimates) == list(analysis.ESTIMATES)
    for name in analysis.ESTIMATES:
        assert plots._label(name) == MEASURES[name].label and plots._color(name) == MEASURES[name].color


def test_certify_bounds_every_certify_measure(tiny):
    from tapsc.certify.linear import METHODS, LinearBounds
    from tapsc.certify.rounding import perturbation_box

    assert METHODS == measures.names(CERTIFY)
    assert all(MEASURES[n].kind == "sound" for n in METHODS)
    spec, network, x, y = tiny
    bounds = LinearBounds(network.layers)
    lo, hi = perturbation_box(x, spec.perturbation.eps, bounds.dtype)
    for name in METHODS:
        lower = bounds.margin_lower_bounds(lo, hi, y, name).min(1).values
        assert lower.shape == y.shape


def test_the_table_examples_hold():
    import doctest

    assert doctest.testmod(measures).failed == 0
