"""Bound losses: the combined TAPS*IBP gradient, IBP difference rows, SABR's small box."""

from __future__ import annotations

import pytest
import torch
from method_helpers import batch, build

from tapsc.language import ir
from tapsc.method.input_attack import input_box
from tapsc.method.losses import bound_ce, combine_scaled, ibp_margin_upper
from tapsc.method.regularizers import l1_penalty
from tapsc.method.sabr import sabr_box, sabr_loss


def _factors():
    theta = torch.tensor([0.3, -1.2, 0.7], requires_grad=True)
    l_taps = (theta ** 2).sum() + torch.sin(theta[0])
    l_ibp = torch.exp(theta[1]) + theta[2] * theta[0] + 3
    return theta, l_taps, l_ibp


def test_combined_loss_with_w1_is_the_plain_product():
    theta, l_taps, l_ibp = _factors()
    combine_scaled(l_taps, l_ibp, 1.0).backward()
    mine = theta.grad.clone()
    theta.grad = None
    theta2, l_taps2, l_ibp2 = _factors()
    (l_taps2 * l_ibp2).backward()
    torch.testing.assert_close(mine, theta2.grad)


@pytest.mark.parametrize("w", [0.0, 0.5, 5.0, 15.0])
def test_combined_loss_gradient_matches_appendix_a(w):
    a = w / (1 + w)
    theta, l_taps, l_ibp = _factors()
    value = combine_scaled(l_taps, l_ibp, w)
    assert value.item() == pytest.approx((l_taps * l_ibp).item())
    value.backward()
    got = theta.grad.clone()
    theta_t, l_taps_t, l_ibp_t = _factors()
    d_taps, = torch.autograd.grad(l_taps_t, theta_t)
    theta_i, l_taps_i, l_ibp_i = _factors()
    d_ibp, = torch.autograd.grad(l_ibp_i, theta_i)
    expected = 2 * a * d_taps * l_ibp_t.detach() + (2 - 2 * a) * d_ibp * l_taps_i.detach()
    torch.testing.assert_close(got, expected)
    if w != 1.0:
        theta_p, l_t, l_i = _factors()
        plain, = torch.autograd.grad(l_t * l_i, theta_p)
        assert not torch.allclose(got, plain)


def test_bound_ce_is_log_one_plus_sum_exp():
    upper = torch.tensor([[0.5, 7.0, -1.0], [2.0, -0.3, 9.0]])
    y = torch.tensor([1, 2])
    expected = torch.stack([torch.log(1 + torch.exp(torch.tensor(0.5)) + torch.exp(torch.tensor(-1.0))),
                            torch.log(1 + torch.exp(torch.tensor(2.0)) + torch.exp(torch.tensor(-0.3)))])
    torch.testing.assert_close(bound_ce(upper, y, reduction="none"), expected)


@pytest.mark.parametrize("train", [False, True])
def test_ibp_margins_are_sound_and_tighter_than_logit_intervals(train):
    network = build(split=1).train(train)
    x, y = batch(6)
    network(x)
    lo, hi = input_box(x, 0.05)
    upper = ibp_margin_upper(network, lo, hi, y)
    assert (upper.gather(1, y[:, None]) == 0).all()
    logit_lo, logit_hi = network.interval(lo, hi)
    loose = logit_hi - logit_lo.gather(1, y[:, None])
    mask = torch.ones_like(upper, dtype=torch.bool).scatter(1, y[:, None], False)
    assert (upper[mask] <= loose[mask] + 1e-5).all()
    generator = torch.Generator().manual_seed(0)
    with network.frozen_batchnorm():
        for _ in range(20):
            corner = torch.where(torch.rand(lo.shape, generator=generator) < 0.5, lo, hi)
            logits = network(corner)
            margins = logits - logits.gather(1, y[:, None])
            assert (margins <= upper + 1e-5).all()


def _sabr_setup(lam):
    network = build(split=1).eval()
    x, y = batch(8)
    x[0] = 0.0  # clipped at 0
    x[1, :, :3] = 1.0  # partly clipped at 1
    return network, x, y


@pytest.mark.parametrize("lam", [0.1, 0.4, 0.9])
def test_sabr_box_lies_in_the_eps_ball_with_radius_lambda_eps(lam):
    network, x, y = _sabr_setup(lam)
    eps = 0.1
    lo, hi = sabr_box(network, x, y, eps, lam, ir.InputAttack(steps=5))
    ball_lo, ball_hi = input_box(x, eps)
    assert (lo >= ball_lo).all() and (hi <= ball_hi).all() and (lo <= hi).all()
    assert ((hi - lo) <= 2 * lam * eps + 1e-6).all()
    assert ((hi - lo) >= torch.minimum(ball_hi - ball_lo, torch.tensor(2 * lam * eps)) - 1e-6).all()


def test_sabr_with_lambda_one_is_ibp():
    network, x, y = _sabr_setup(1.0)
    lo, hi = sabr_box(network, x, y, 0.1, 1.0, ir.InputAttack(steps=3))
    ball_lo, ball_hi = input_box(x, 0.1)
    torch.testing.assert_close(lo, ball_lo)
    torch.testing.assert_close(hi, ball_hi)
    ibp = bound_ce(ibp_margin_upper(network, ball_lo, ball_hi, y), y)
    torch.testing.assert_close(sabr_loss(network, x, y, 0.1, 1.0, ir.InputAttack(steps=3)), ibp)


def test_l1_is_mean_over_affine_layers():
    network = build(bn=False)
    layers = network.affine_layers()
    expected = sum(l.weight.abs().sum() + l.bias.abs().sum() for l in layers) / len(layers)
    torch.testing.assert_close(l1_penalty(network), expected)
