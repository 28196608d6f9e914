"""phase_loss for every phase kind, and the registry completeness of the method."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from method_helpers import PHASE_CASES, SMALL_LATENT, batch, build

from tapsc.language import ir
from tapsc.layers import LAYERS
from tapsc.method import CONNECTORS, LOSSES, phase_loss
from tapsc.method.input_attack import input_box
from tapsc.method.losses import bound_ce, ibp_margin_upper

PHASES = PHASE_CASES


def test_registries_are_complete():
    assert set(ir.LAYER_KINDS) <= set(LAYERS)
    assert set(ir.PHASE_KINDS) == set(LOSSES) == {p.kind for p in PHASES}
    assert set(ir.CONNECTOR_CLASSES) == set(CONNECTORS)


@pytest.mark.parametrize("phase", PHASES, ids=lambda p: p.kind)
def test_phase_loss_trains_every_kind(phase):
    network = build(split=1).train()
    x, y = batch(8)
    loss, terms = phase_loss(network, phase, x, y, eps=0.05, eps_target=0.1, l1=1e-4)
    assert torch.isfinite(loss) and terms["loss"] == pytest.approx(loss.item())
    assert terms["count"] == 8 and 0 <= terms["nat_correct"] <= 8 and terms["l1"] > 0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in network.parameters())
    assert network.batchnorm_layers()[0].num_batches_tracked.item() == 1  # only the clean forward counted


def test_natural_and_zero_eps_ibp_are_clean_cross_entropy():
    network = build(split=1).train()
    x, y = batch(8)
    natural, _ = phase_loss(network, ir.NaturalPhase(), x, y, 0.0, 0.1)
    ibp, _ = phase_loss(network, ir.IBPPhase(), x, y, 0.0, 0.1)
    network.eval()
    with torch.no_grad():
        point_ibp = bound_ce(ibp_margin_upper(network, x, x, y), y)
        clean = F.cross_entropy(network(x), y)
    torch.testing.assert_close(point_ibp, clean, rtol=1e-5, atol=1e-5)
    assert natural.item() == pytest.approx(ibp.item())


def test_taps_loss_is_the_product_of_its_factors():
    network = build(split=1).train()
    x, y = batch(8)
    loss, terms = phase_loss(network, ir.TAPSPhase(attack=SMALL_LATENT), x, y, 0.05, 0.05)
    assert loss.item() == pytest.approx(terms["taps"] * terms["ibp"], rel=1e-5)
    assert terms["taps"] <= terms["ibp"] + 1e-5


def test_shi_regularizer_only_during_the_ramp():
    network = build(split=1).train()
    x, y = batch(8)
    phase = ir.IBPPhase(shi_regularizer=0.5)
    ramp, ramp_terms = phase_loss(network, phase, x, y, 0.05, 0.1)
    done, done_terms = phase_loss(network, phase, x, y, 0.1, 0.1)
    assert "reg" in ramp_terms and ramp_terms["reg"] > 0 and "reg" not in done_terms
    expected = ramp_terms["ibp"] + 0.5 * (1 - 0.05 / 0.1) * ramp_terms["reg"]
    assert ramp.item() == pytest.approx(expected, rel=1e-5)


def test_ibp_loss_uses_the_clipped_box():
    network = build(split=1).eval()
    x, y = batch(4)
    loss, terms = phase_loss(network, ir.IBPPhase(), x, y, 0.2, 0.2)
    with torch.no_grad():
        expected = bound_ce(ibp_margin_upper(network, *input_box(x, 0.2), y), y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
