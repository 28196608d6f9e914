"""Every bound rule, tested against sampled points; and proof that the tests catch a wrong
rule (mutants registered in a temporary entry must fail them).

The cases are generated from the registries: every tapsc layer kind (`tapsc.layers.LAYERS`,
its case in tests/layer_cases.py) and every plain torch class in the rule tables (its case in
`rule_checks.TORCH_CASES`; one without fails `test_every_rule_class_has_a_case`), so no rule
goes untested.
"""

from __future__ import annotations

import pytest
import torch
from layer_cases import LAYER_CASES
from rule_checks import (
    TORCH_CASES,
    build_case,
    check_backward_rule,
    check_interval,
    check_margin_bounds,
    random_box,
)
from torch import nn

from tapsc.certify import rules
from tapsc.layers import LAYERS

# tapsc kinds with a backward rule (every kind but the residual container, whose branches are
# bounded), then the torch classes in the table
RULE_KEYS = [kind for kind, cls in LAYERS.items() if hasattr(cls, "backward")] + list(rules.BACKWARD_RULES)
ALL_KEYS = sorted(LAYER_CASES) + list(TORCH_CASES)
RADII = [1e-3, 0.1, 1.0]


def _id(key) -> str:
    return key if isinstance(key, str) else f"torch.{key.__name__}"


def test_every_rule_class_has_a_case():
    missing = [_id(k) for k in RULE_KEYS if k not in LAYER_CASES and k not in TORCH_CASES]
    assert not missing, f"classes with bound rules but no soundness case: {missing}"


@pytest.mark.parametrize("key", RULE_KEYS, ids=_id)
def test_every_rule_class_has_interval_and_magnitude_rules(key):
    layer, in_shape = build_case(key, 0)
    lo, hi = random_box(in_shape, 2, 0.1, 0)
    out_lo, out_hi = rules.interval(layer, lo, hi)
    size = rules.magnitude(layer, torch.maximum(lo.abs(), hi.abs()))
    assert size.shape == out_lo.shape and (size >= 0).all()
    assert (size >= torch.maximum(out_lo.abs(), out_hi.abs()) - 1e-9).all(), "magnitude must bound |y|"


@pytest.mark.parametrize("radius", RADII)
@pytest.mark.parametrize("key", RULE_KEYS, ids=_id)
def test_backward_rule_is_sound(key, radius):
    for seed in range(3):
        layer, in_shape = build_case(key, seed)
        lo, hi = random_box(in_shape, 3, radius, seed)
        check_backward_rule(layer, lo, hi, seed=seed)


@pytest.mark.parametrize("radius", RADII)
@pytest.mark.parametrize("key", ALL_KEYS, ids=_id)
def test_interval_is_sound(key, radius):
    for seed in range(2):
        layer, in_shape = build_case(key, seed)
        lo, hi = random_box(in_shape, 3, radius, seed)
        check_interval(layer, lo, hi, seed=seed)


def _head(layer: nn.Module, in_shape, seed: int) -> list[nn.Module]:
    """The layer, then flatten and a random linear layer to 3 logits (float64)."""
    with torch.no_grad():
        out = layer(torch.zeros((1, *in_shape), dtype=torch.float64))
    torch.manual_seed(seed)
    return [layer, nn.Flatten().double(), nn.Linear(out[0].numel(), 3).double()]


@pytest.mark.parametrize("radius", RADII)
@pytest.mark.parametrize("key", ALL_KEYS, ids=_id)
def test_margin_bounds_of_every_method_are_sound(key, radius):
    for seed in range(2):
        layer, in_shape = build_case(key, seed)
        lo, hi = random_box(in_shape, 3, radius, seed)
        check_margin_bounds(_head(layer, in_shape, seed), lo, hi, torch.tensor([0, 1, 2]), seed=seed)


# ---------------------------------------------------------------- mutants: the checks must catch them


class _Mutant(nn.ReLU):
    """A ReLU whose rules are replaced by wrong ones in a temporary registry entry."""


def _relu_without_intercept(layer, A, lo, hi):
    A_in, _, error = rules.relu_backward(layer, A, lo, hi)
    return A_in, torch.zeros_like(error), error  # the upper line through the origin: too low


def _affine_bias_dropped(layer, A, lo, hi):
    A_in, _, error = rules.affine_backward(layer, A, lo, hi)
    return A_in, torch.zeros_like(error), error


def _maxpool_upper_lowered(layer, A, lo, hi):
    A_in, bias, error = rules.maxpool_backward(layer, A, lo, hi)
    return A_in, bias + 0.05 * A.abs().flatten(2).sum(-1), error


def _interval_shrunk(layer, lo, hi):
    out_lo, out_hi = layer(lo), layer(hi)
    return out_lo + 0.1 * (out_hi - out_lo), out_hi


class _LeakyMutant(nn.LeakyReLU):
    pass


def _leaky_as_relu(layer, A, lo, hi):
    return rules.relu_backward(layer, A, lo, hi)  # lower slope 0 below leak: too high for dead neurons


def _leaky_upper_through_zero(layer, A, lo, hi):
    A_in, bias, error = rules.leaky_relu_backward(layer, A, lo, hi)
    return A_in, torch.zeros_like(bias), error  # the upper line's intercept dropped


class _LinearMutant(nn.Linear):
    pass


class _PoolMutant(nn.MaxPool2d):
    pass


MUTANTS = {
    "relu: upper intercept 0": (_Mutant, lambda: _Mutant(), (6,), "backward", _relu_without_intercept),
    "linear: bias dropped": (_LinearMutant, lambda: _LinearMutant(6, 4), (6,), "backward", _affine_bias_dropped),
    "maxpool: upper line lowered": (_PoolMutant, lambda: _PoolMutant(2), (2, 4, 4), "backward",
                                    _maxpool_upper_lowered),
    "leaky_relu: relaxed as relu": (_LeakyMutant, lambda: _LeakyMutant(0.3), (6,), "backward", _leaky_as_relu),
    "leaky_relu: upper intercept 0": (_LeakyMutant, lambda: _LeakyMutant(0.3), (6,), "backward",
                                      _leaky_upper_through_zero),
    "relu: interval shrunk": (_Mutant, lambda: _Mutant(), (6,), "interval", _interval_shrunk),
}


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_a_wrong_rule_fails_the_checks(name, monkeypatch):
    cls, factory, in_shape, which, wrong = MUTANTS[name]
    base = cls.__mro__[1]
    monkeypatch.setitem(rules.BACKWARD_RULES, cls, wrong if which == "backward" else rules.BACKWARD_RULES[base])
    monkeypatch.setitem(rules.INTERVAL_RULES, cls, wrong if which == "interval" else rules.INTERVAL_RULES[base])
    monkeypatch.setitem(rules.MAGNITUDE_RULES, cls, rules.MAGNITUDE_RULES[base])
    if base in rules.RELAXED:
        monkeypatch.setattr(rules, "RELAXED", rules.RELAXED | {cls})
    torch.manual_seed(0)
    layer = factory().double().eval()
    lo, hi = random_box(in_shape, 3, 0.5, 0)
    with pytest.raises(AssertionError):
        if which == "backward":
            check_backward_rule(layer, lo, hi)
        else:
            check_interval(layer, lo, hi)
    # ... and the end-to-end margin check over a network holding it fails too
    with pytest.raises(AssertionError):
        methods = ("crown_ibp", "crown") if which == "backward" else ("ibp",)
        check_margin_bounds(_head(layer, in_shape, 0), lo, hi, torch.tensor([0, 1, 2]), methods=methods)


# ---------------------------------------------------------------- leaky relu: alpha and the exact lines


@pytest.mark.parametrize("key", ["leaky_relu", nn.LeakyReLU, "relu"], ids=_id)
def test_rectifier_rules_are_sound_for_every_alpha(key, monkeypatch):
    """alpha-CROWN's free lower slopes (any alpha, even outside [0, 1], as Adam may leave it
    between clamps) give sound bounds."""
    layer, in_shape = build_case(key, 0)
    rule = rules.backward_rule(layer)
    assert rule in rules.ALPHA_RULES
    generator = torch.Generator().manual_seed(1)

    def with_alpha(layer, A, lo, hi):
        alpha = torch.rand(A.shape, generator=generator, dtype=A.dtype) * 1.4 - 0.2
        return rule(layer, A, lo, hi, alpha)

    monkeypatch.setitem(rules.BACKWARD_RULES, type(layer), with_alpha)
    for seed, radius in enumerate(RADII):
        lo, hi = random_box(in_shape, 3, radius, seed)
        check_backward_rule(layer, lo, hi, seed=seed)


def test_leaky_relu_lines_follow_the_slope():
    """Upper line through (l, s l) and (u, u) up to rounding; lower slope 1 or s (adaptive),
    s + alpha (1 - s) with alpha; stable neurons exact."""
    s = 0.25
    lo = torch.tensor([-2.0, -1.0, 0.5, -3.0], dtype=torch.float64)
    hi = torch.tensor([1.0, 3.0, 2.0, -1.0], dtype=torch.float64)
    low, up, icpt = rules.relu_slopes(lo, hi, s)
    assert low.tolist() == [s, 1.0, 1.0, s]
    expected_up = ((hi - s * lo) / (hi - lo))[:2]
    torch.testing.assert_close(up[:2], expected_up)
    assert up[2:].tolist() == [1.0, s] and icpt[2:].tolist() == [0.0, 0.0]
    at_lo, at_hi = up[:2] * lo[:2] + icpt[:2], up[:2] * hi[:2] + icpt[:2]
    assert (at_lo >= s * lo[:2]).all() and (at_hi >= hi[:2]).all()
    torch.testing.assert_close(at_lo, s * lo[:2]) and torch.testing.assert_close(at_hi, hi[:2])
    layer = nn.LeakyReLU(s)
    A = torch.ones(1, 1, 4, dtype=torch.float64)
    alpha = torch.tensor([0.0, 0.5, 0.5, 0.5], dtype=torch.float64).reshape(1, 1, 4)
    A_in, _, _ = rules.leaky_relu_backward(layer, A, lo[None], hi[None], alpha)
    assert A_in.flatten().tolist() == [s, s + 0.5 * (1 - s), 1.0, s]


def test_alpha_crown_optimises_leaky_relu_slopes():
    """alpha-CROWN treats leaky relus like relus: its bound is at least CROWN's."""
    from tapsc.certify.linear import LinearBounds

    torch.manual_seed(3)
    layers = [nn.Linear(4, 8).double(), nn.LeakyReLU(0.1), nn.Linear(8, 8).double(), nn.LeakyReLU(0.1),
              nn.Linear(8, 3).double()]
    lo, hi = random_box((4,), 4, 0.5, 3)
    bounds = LinearBounds(layers)
    labels = torch.tensor([0, 1, 2, 0])
    crown = bounds.margin_lower_bounds(lo, hi, labels, "crown")
    alpha = bounds.margin_lower_bounds(lo, hi, labels, "alpha_crown")
    assert (alpha >= crown - 1e-12).all() and (alpha > crown + 1e-9).any()
    check_margin_bounds(layers, lo, hi, labels)
