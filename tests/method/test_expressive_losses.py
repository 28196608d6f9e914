"""The mtl_ibp, cc_ibp, exp_ibp and crown_ibp losses against a hand computation on a tiny net.

The net: x in R^2, h = (x1 + x2, x1 - x2), r = relu(h), logits o = (r1, r2), label 0, so the
margin is o1 - o0 = r2 - r1. At x = (0.5, 0.5) with eps = 0.1 (box [0.4, 0.6]^2):

- IBP: r1 in [0.8, 1.2], r2 in [0, 0.2]; the difference row (-1, 1) gives -0.8 + 0.2 = -0.6.
- CROWN-IBP: h2 in [-0.2, 0.2] is unstable, so -r2 >= -(0.5 h2 + 0.1) (upper line through
  (-0.2, 0) and (0.2, 0.2)); r1 - r2 >= h1 - 0.5 h2 - 0.1 = 0.5 x1 + 1.5 x2 - 0.1 >= 0.7,
  so o1 - o0 <= -0.7.
- The worst point: r2 - r1 = -2 x2 where x1 >= x2 and -(x1 + x2) elsewhere, so the maximum
  is -0.8 (x2 = 0.4, x1 >= 0.4) and PGD's signed steps reach it from any start.
Every loss is a two-class CE of the pseudo-logits (0, z): softplus(z).
"""

from __future__ import annotations

import math

import pytest
import torch
from method_helpers import batch, build, make_spec

from tapsc.compile import compile_network
from tapsc.language import ir
from tapsc.method import phase_loss
from tapsc.method.crown_ibp import crown_ibp_margin_upper
from tapsc.method.input_attack import input_box
from tapsc.method.losses import ibp_margin_upper

Z_IBP, Z_CROWN_IBP, Z_ADV = -0.6, -0.7, -0.8
ATTACK = ir.InputAttack(steps=10, restarts=2)


def softplus(z: float) -> float:
    return math.log(1 + math.exp(z))


def tiny_net():
    network = compile_network(make_spec([ir.Linear(out_features=2), ir.ReLU(), ir.Linear(out_features=2)],
                                        input_shape=(2,)))
    first, _, last = network.layers
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        first.bias.zero_()
        last.weight.copy_(torch.eye(2))
        last.bias.zero_()
    return network.train()


X, Y = torch.tensor([[0.5, 0.5]]), torch.tensor([0])


def test_the_tiny_net_bounds_are_the_hand_computed_ones():
    network = tiny_net()
    lo, hi = input_box(X, 0.1)
    torch.testing.assert_close(ibp_margin_upper(network, lo, hi, Y), torch.tensor([[0.0, Z_IBP]]))
    torch.testing.assert_close(crown_ibp_margin_upper(network, lo, hi, Y), torch.tensor([[0.0, Z_CROWN_IBP]]))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_mtl_ibp_is_the_weighted_sum_of_the_losses(alpha):
    loss, terms = phase_loss(tiny_net(), ir.MTLIBPPhase(alpha=alpha, attack=ATTACK), X, Y, 0.1, 0.1)
    expected = alpha * softplus(Z_IBP) + (1 - alpha) * softplus(Z_ADV)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert terms["adv"] == pytest.approx(softplus(Z_ADV), rel=1e-5)
    assert terms["ibp"] == pytest.approx(softplus(Z_IBP), rel=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_cc_ibp_is_the_loss_of_the_combined_margins(alpha):
    loss, _ = phase_loss(tiny_net(), ir.CCIBPPhase(alpha=alpha, attack=ATTACK), X, Y, 0.1, 0.1)
    assert loss.item() == pytest.approx(softplus((1 - alpha) * Z_ADV + alpha * Z_IBP), rel=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_exp_ibp_is_the_geometric_combination(alpha):
    loss, _ = phase_loss(tiny_net(), ir.ExpIBPPhase(alpha=alpha, attack=ATTACK), X, Y, 0.1, 0.1)
    assert loss.item() == pytest.approx(softplus(Z_ADV) ** (1 - alpha) * softplus(Z_IBP) ** alpha, rel=1e-5)


@pytest.mark.parametrize("phase, eps_target, beta", [
    (ir.CROWNIBPPhase(), 0.1, 0.0),  # the ramp is done: plain IBP
    (ir.CROWNIBPPhase(), 0.2, 0.5),  # halfway up the ramp to 0.2
    (ir.CROWNIBPPhase(), 0.4, 0.75),
    (ir.CROWNIBPPhase(beta_start=1.0, beta_end=1.0), 0.1, 1.0),  # plain CROWN-IBP
])
def test_crown_ibp_mixes_the_bounds_by_beta_along_the_ramp(phase, eps_target, beta):
    loss, terms = phase_loss(tiny_net(), phase, X, Y, 0.1, eps_target)
    assert terms["beta"] == pytest.approx(beta)
    assert loss.item() == pytest.approx(softplus(beta * Z_CROWN_IBP + (1 - beta) * Z_IBP), rel=1e-5)


@pytest.mark.parametrize("phase, eps_target, kappa, beta", [
    (ir.CROWNIBPPhase(kappa_start=0.3, kappa_end=0.3), 0.1, 0.3, 0.0),  # constant kappa, plain IBP
    (ir.CROWNIBPPhase(kappa_start=1.0, kappa_end=0.5), 0.2, 0.75, 0.5),  # both halfway up the ramp
    (ir.CROWNIBPPhase(beta_end=1.0, kappa_start=1.0, kappa_end=0.5), 0.1, 0.5, 1.0),
])
def test_crown_ibp_weights_the_clean_loss_by_kappa_along_the_ramp(phase, eps_target, kappa, beta):
    loss, terms = phase_loss(tiny_net(), phase, X, Y, 0.1, eps_target)
    clean = softplus(0.0 - 1.0)  # o = (1, 0) at x, label 0
    assert (terms["kappa"], terms["beta"]) == (pytest.approx(kappa), pytest.approx(beta))
    assert terms["ce"] == pytest.approx(clean, rel=1e-5)
    robust = softplus(beta * Z_CROWN_IBP + (1 - beta) * Z_IBP)
    assert loss.item() == pytest.approx(kappa * clean + (1 - kappa) * robust, rel=1e-5)


@pytest.mark.parametrize("phase", [ir.MTLIBPPhase(), ir.CCIBPPhase(), ir.ExpIBPPhase(), ir.CROWNIBPPhase(),
                                   ir.CROWNIBPPhase(kappa_start=0.5, kappa_end=0.2)],
                         ids=lambda p: p.kind)
def test_zero_eps_is_the_clean_cross_entropy(phase):
    network = tiny_net()
    loss, _ = phase_loss(network, phase, X, Y, 0.0, 0.1)
    assert loss.item() == pytest.approx(softplus(0.0 - 1.0), rel=1e-5)  # o = (1, 0) at x


def test_crown_ibp_is_sound_and_no_looser_than_ibp_on_a_cnn_with_batchnorm():
    network = build(split=1).train()
    x, y = batch(8)
    network(x)  # the clean forward records BatchNorm's batch statistics
    lo, hi = input_box(x, 0.03)
    crown = crown_ibp_margin_upper(network, lo, hi, y)
    with network.frozen_batchnorm():
        ibp = ibp_margin_upper(network, lo, hi, y)
        worst = torch.full_like(crown, float("-inf"))
        for _ in range(64):
            o = network(lo + torch.rand_like(lo) * (hi - lo))
            worst = torch.maximum(worst, o - o.gather(1, y[:, None]))
    assert (crown >= worst - 1e-5).all() and (crown <= ibp + 1e-5).all()
    crown.sum().backward()  # differentiable in every weight
    assert all(p.grad is not None for p in network.parameters())


def test_the_conv_and_linear_fast_paths_equal_the_autograd_transpose():
    from tapsc.method.crown_ibp import TRANSPOSES, _affine_back

    network = build(split=1).eval()
    x, _ = batch(3)
    inputs = [x]
    for layer in network.layers:
        inputs.append(layer(inputs[-1]))
    checked = set()
    for layer, before, after in zip(network.layers, inputs, inputs[1:]):
        if type(layer) in TRANSPOSES:
            A = torch.randn((3, 5, *after.shape[1:]))
            fast, slow = TRANSPOSES[type(layer)](layer, A, before), _affine_back(layer, A, before)
            torch.testing.assert_close(fast[0], slow[0])
            torch.testing.assert_close(fast[1], slow[1])
            checked.add(type(layer))
    assert checked == set(TRANSPOSES)


def test_exp_ibp_over_ranks_has_the_value_and_gradient_of_one_process():
    from tapsc.method.losses import exp_ibp_over_ranks

    alpha = 0.3
    adv = torch.tensor([0.7, 1.9], requires_grad=True)  # two ranks' batch means
    ibp = torch.tensor([2.5, 4.1], requires_grad=True)
    global_loss = adv.mean() ** (1 - alpha) * ibp.mean() ** alpha
    want = torch.autograd.grad(global_loss, (adv, ibp))
    shares = [exp_ibp_over_ranks(alpha, adv[r], ibp[r], adv.mean().detach(), ibp.mean().detach()) for r in (0, 1)]
    got = torch.autograd.grad(sum(shares) / 2, (adv, ibp))  # the all-reduce averages the ranks' gradients
    for share in shares:
        assert share.item() == pytest.approx(global_loss.item(), rel=1e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
