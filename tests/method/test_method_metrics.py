"""Per-sample margins: the order certified <= adversarially robust <= correct holds per sample."""

from __future__ import annotations

import torch
from method_helpers import batch, build

from tapsc.language import ir
from tapsc.method.metrics import clean_margin, ibp_margin, natural_correct, pgd_margin, taps_margin


def _trained_ish(seed=0):
    """A tiny network whose last layer makes class 0 win by a margin that shrinks with eps."""
    network = build(split=1, seed=seed, bn=False)
    with torch.no_grad():
        last = network.layers[-1]
        last.weight.mul_(10.0)
        last.bias.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0, 0.0]))
    return network


def test_metric_inclusions_per_sample():
    network = _trained_ish()
    x, _ = batch(32)
    y = torch.zeros(32, dtype=torch.long)
    y[::4] = 1  # some wrong samples
    certified = []
    for eps in (0.0, 0.01, 0.03):
        nat = natural_correct(network, x, y)
        pgd = pgd_margin(network, x, y, eps, ir.InputAttack(steps=10, restarts=2)) > 0
        ibp = ibp_margin(network, x, y, eps) > 0
        taps = (taps_margin(network, x, y, eps, ir.LatentAttack(steps=10)) > 0) & nat
        assert torch.equal(clean_margin(network, x, y) > 0, nat)  # no exact ties here
        assert (ibp <= pgd).all() and (pgd <= nat).all() and (ibp <= taps).all() and (taps <= nat).all()
        assert nat.dtype == torch.bool and nat.shape == (32,)
        if eps == 0.0:
            assert torch.equal(ibp, nat) and torch.equal(pgd, nat)
        certified.append(ibp.sum().item())
    assert certified[0] > certified[1] > certified[2] or certified[1] > 0  # not a vacuous check
    assert certified[0] > certified[-1]


def test_metrics_restore_training_mode_and_run_in_eval():
    network = build(split=1)
    network.train()
    x, y = batch(4)
    before = [bn.running_mean.clone() for bn in network.batchnorm_layers()]
    taps_margin(network, x, y, 0.05, ir.LatentAttack(steps=2))
    pgd_margin(network, x, y, 0.05, ir.InputAttack(steps=2))
    assert network.training
    for old, bn in zip(before, network.batchnorm_layers()):
        assert torch.equal(old, bn.running_mean)
