"""TAPS estimates: between the concrete margin and the IBP bound; exact for a linear classifier."""

from __future__ import annotations

import pytest
import torch
from method_helpers import batch, build

from tapsc.language import ir
from tapsc.method.input_attack import input_box
from tapsc.method.latent_attack import latent_attack, margins_at, taps_margins, wrong_classes
from tapsc.method.losses import ibp_margin_upper


def test_wrong_classes_skip_the_true_class():
    y = torch.tensor([0, 2, 4])
    expected = torch.tensor([[1, 2, 3, 4], [0, 1, 3, 4], [0, 1, 2, 3]])
    assert torch.equal(wrong_classes(y, 5), expected)


def _boxes(network, eps, train):
    x, y = batch(8)
    network.train(train)
    network(x)
    z_lo, z_hi = network.extractor_box(*input_box(x, eps))
    return x, y, z_lo, z_hi


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("estimator", ["multi", "single"])
def test_estimates_between_centre_margin_and_ibp_bound(train, estimator):
    torch.manual_seed(1)
    network = build(split=2, seed=1)
    x, y, z_lo, z_hi = _boxes(network, 0.05, train)
    attack = ir.LatentAttack(steps=10, restarts=2, estimator=estimator)
    estimates = taps_margins(network, z_lo, z_hi, y, attack, ir.RectifiedLinearConnector())
    ibp = ibp_margin_upper(network, z_lo, z_hi, y, start=network.split)
    assert (estimates <= ibp + 1e-5).all()
    if estimator == "multi":
        with network.frozen_batchnorm():
            centre_logits = network.classifier((z_lo + z_hi) / 2)
        centre = centre_logits - centre_logits.gather(1, y[:, None])
        assert (estimates >= centre - 1e-5).all()


def test_linear_classifier_estimates_equal_ibp_bounds():
    network = build(split=0, seed=2).eval()
    x, y, z_lo, z_hi = _boxes(network, 0.05, train=False)
    with torch.no_grad():
        z_BE = latent_attack(network, z_lo, z_hi, y, ir.LatentAttack(steps=8))
        estimates = margins_at(network, z_BE, y, multi=True)
        ibp = ibp_margin_upper(network, z_lo, z_hi, y, start=network.split)
    torch.testing.assert_close(estimates, ibp, rtol=1e-5, atol=1e-5)


def test_chunked_attack_matches_unchunked_on_a_linear_classifier():
    network = build(split=0, seed=2).eval()
    _, y, z_lo, z_hi = _boxes(network, 0.05, train=False)
    full = latent_attack(network, z_lo, z_hi, y, ir.LatentAttack(steps=8))
    chunked = latent_attack(network, z_lo, z_hi, y, ir.LatentAttack(steps=8, estimation_batch=9))
    assert full.shape == (8, 4) + tuple(z_lo.shape[1:])
    torch.testing.assert_close(full, chunked)


def test_attack_points_stay_in_the_box():
    network = build(split=2, seed=3).eval()
    _, y, z_lo, z_hi = _boxes(network, 0.1, train=False)
    z = latent_attack(network, z_lo, z_hi, y, ir.LatentAttack(steps=5, restarts=3))
    assert (z >= z_lo[:, None]).all() and (z <= z_hi[:, None]).all()


def test_attack_in_training_leaves_running_statistics_and_extractor_graph_alone():
    network = build(split=2, seed=4)
    x, y, z_lo, z_hi = _boxes(network, 0.05, train=True)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    z = latent_attack(network, z_lo, z_hi, y, ir.LatentAttack(steps=5))
    assert not z.requires_grad
    for key, value in network.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in network.parameters())


def test_taps_gradient_reaches_the_extractor_through_the_connector():
    network = build(split=2, seed=5)
    x, y, z_lo, z_hi = _boxes(network, 0.05, train=True)
    estimates = taps_margins(network, z_lo, z_hi, y, ir.LatentAttack(steps=5), ir.RectifiedLinearConnector(c=1.0))
    estimates.sum().backward()
    first_conv = network.layers[0]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def _plain_attack(classifier, lo_B, hi_B, y_B, attack):
    """The latent attack written out plainly (fresh tensors every step): the reference the
    optimised in-place loop must reproduce bit for bit."""
    import math

    from tapsc.method.latent_attack import LR_DECAY, LR_DECAY_AT

    batch, estimators, restarts, latent = lo_B.shape[0], 4, attack.restarts, tuple(lo_B.shape[1:])
    lo, hi = lo_B.reshape((batch, 1, 1) + latent), hi_B.reshape((batch, 1, 1) + latent)
    width, rows = hi - lo, batch * estimators * restarts
    y_N = y_B[:, None, None].expand(batch, estimators, restarts).reshape(rows)
    wrong_N = wrong_classes(y_B, 5)[:, :, None].expand(batch, estimators, restarts).reshape(rows)
    z = lo + torch.rand((batch, estimators, restarts) + latent) * width
    best_z, best = z.clone(), torch.full((rows,), float("-inf"))
    lr0, decay = max(0.2, 2 / attack.steps), math.ceil(LR_DECAY_AT * attack.steps)
    for step in range(attack.steps + 1):
        z.requires_grad_(True)
        logits = classifier(z.reshape((rows,) + latent))
        value = logits.gather(1, wrong_N[:, None])[:, 0] - logits.gather(1, y_N[:, None])[:, 0]
        improved = value.detach() > best
        best = torch.where(improved, value.detach(), best)
        best_z = torch.where(improved.reshape((batch, estimators, restarts) + (1,) * len(latent)), z.detach(), best_z)
        if step == attack.steps:
            break
        grad, = torch.autograd.grad(value.sum(), z)
        lr = lr0 * (LR_DECAY if step >= decay else 1.0)
        z = torch.minimum(torch.maximum(z.detach() + grad.sign() * lr * width, lo), hi)
    index = best.reshape(batch, estimators, restarts).argmax(2)
    index = index.reshape((batch, estimators, 1) + (1,) * len(latent)).expand((batch, estimators, 1) + latent)
    return best_z.gather(2, index)[:, :, 0]


def _fast_and_plain(network, z_lo, z_hi, y, attack):
    """tapsc's attack and the plain loop, from the same seed."""
    torch.manual_seed(7)
    fast = latent_attack(network, z_lo, z_hi, y, attack)
    torch.manual_seed(7)
    with network.frozen_batchnorm(detach=True):
        plain = _plain_attack(network.classifier, z_lo.detach(), z_hi.detach(), y, attack)
    return fast, plain


@pytest.mark.parametrize("restarts", [1, 3])
def test_in_place_attack_loop_matches_the_plain_loop_bit_for_bit(restarts):
    network = build(split=2, seed=5)
    _, y, z_lo, z_hi = _boxes(network, 0.1, train=True)
    fast, plain = _fast_and_plain(network, z_lo, z_hi, y, ir.LatentAttack(steps=9, restarts=restarts))
    assert torch.equal(fast, plain)


@pytest.mark.parametrize("split,restarts", [(1, 1), (2, 3)])
def test_bf16_autocast_attack_holds_a_bf16_copy_and_finds_the_same_points(split, restarts):
    # split 1: the classifier starts flatten -> linear; split 2: with a conv. Either casts
    # its input under autocast, so the attack casts first and differentiates the bf16 copy.
    from tapsc.method.latent_attack import attack_input_dtype

    network = build(split=split, seed=5)
    _, y, z_lo, z_hi = _boxes(network, 0.1, train=True)
    attack = ir.LatentAttack(steps=9, restarts=restarts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert z_lo.dtype == torch.float32
        assert attack_input_dtype(network.layers[network.split:], z_lo) == torch.bfloat16
        fast, plain = _fast_and_plain(network, z_lo, z_hi, y, attack)
    assert fast.dtype == torch.float32 and torch.equal(fast, plain)


@pytest.mark.parametrize("split,restarts", [(1, 1), (2, 3)])
def test_bf16_attack_iterations_run_the_body_in_bf16_and_the_logits_in_float32(split, restarts):
    # attack_precision(bf16) (what `tapsc run` asks for on CPUs with native bf16): the plain loop
    # with the classifier written out independently, everything but the last layer under
    # autocast and the last layer in float32, gives the same points bit for bit
    from tapsc.precision import attack_precision

    network = build(split=split, seed=5)
    _, y, z_lo, z_hi = _boxes(network, 0.1, train=True)
    attack = ir.LatentAttack(steps=9, restarts=restarts)
    seen = {}  # the dtype each classifier layer's output had the first time

    def record(index):
        def hook(module, inputs, output):
            seen.setdefault(index, output.dtype)
        return hook

    hooks = [layer.register_forward_hook(record(i)) for i, layer in enumerate(network.layers[network.split:])]

    def mixed(z):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for layer in network.layers[network.split:-1]:
                z = layer(z)
        return network.layers[-1](z.float())

    torch.manual_seed(7)
    with attack_precision(torch.bfloat16):
        fast = latent_attack(network, z_lo, z_hi, y, attack)
    dtypes = [seen[i] for i in sorted(seen)]
    assert dtypes[-1] == torch.float32 and torch.bfloat16 in dtypes[:-1]  # logits float32, the body bf16
    for hook in hooks:
        hook.remove()
    torch.manual_seed(7)
    with network.frozen_batchnorm(detach=True):
        plain = _plain_attack(mixed, z_lo.detach(), z_hi.detach(), y, attack)
    assert fast.dtype == torch.float32 and torch.equal(fast, plain)


def test_bf16_attack_iterations_find_points_about_as_strong_as_float32():
    # The measured tolerance of docs/benchmarks.md ("The attack iterating in bf16"): on these
    # small random networks the bf16 points' float32 margins are lower by 0.1-0.2% of the
    # margins' scale on average (trained networks: 0.006%); with bf16 logits (the whole
    # classifier under autocast) 0.3%.
    from tapsc.precision import attack_precision

    for split in (1, 2):
        network = build(split=split, seed=5)
        x, y = batch(64)
        network.train()
        network(x)
        z_lo, z_hi = network.extractor_box(*input_box(x, 0.1))
        margins = {}
        for name in ("float32", "bf16", "bf16 logits"):
            runs = []
            for seed in range(4):
                torch.manual_seed(seed)
                with attack_precision(torch.bfloat16 if name == "bf16" else None), \
                        torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16 logits"):
                    z = latent_attack(network, z_lo.detach(), z_hi.detach(), y, ir.LatentAttack(steps=20))
                with torch.no_grad():
                    runs.append(margins_at(network, z, y, multi=True))
            margins[name] = torch.stack(runs)
        wrong = margins["float32"] != 0
        scale = margins["float32"][wrong].abs().mean()
        loss = {name: float((margins["float32"] - m)[wrong].mean() / scale) for name, m in margins.items()}
        assert loss["bf16"] < 3e-3, (split, loss)
        assert loss["bf16"] < loss["bf16 logits"], (split, loss)


@pytest.mark.parametrize("low", [None, torch.bfloat16])
def test_the_latent_gradient_of_a_first_linear_layer_goes_into_one_buffer(low, monkeypatch):
    # flatten -> linear first (split 1): every step's gradient is written into the same tensor
    # (the points are the plain loop's: the bit-for-bit tests above run this path)
    from tapsc.method import latent_attack as module
    from tapsc.precision import attack_precision

    tensors = []
    real = module._GradientBuffer.take

    def take(self, like, rows, columns):
        tensor = real(self, like, rows, columns)
        tensors.append((tensor.data_ptr(), tensor.dtype))
        return tensor

    monkeypatch.setattr(module._GradientBuffer, "take", take)
    network = build(split=1, seed=5)
    _, y, z_lo, z_hi = _boxes(network, 0.1, train=True)
    with attack_precision(low):
        latent_attack(network, z_lo, z_hi, y, ir.LatentAttack(steps=6))
    assert len(tensors) == 6 and set(tensors) == {(tensors[0][0], low or torch.float32)}


def test_attack_input_dtype_follows_the_first_arithmetic_layer():
    from tapsc.method.latent_attack import attack_input_dtype

    network = build(split=1)
    z = torch.zeros(2, 16)
    classifier = list(network.layers[network.split:])
    assert attack_input_dtype(classifier, z) == torch.float32  # autocast off
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attack_input_dtype(classifier, z) == torch.bfloat16  # flatten (reshapes), then linear
        assert attack_input_dtype(classifier[2:], z) == torch.float32  # batchnorm first: not cast by autocast
        assert attack_input_dtype([], z) == torch.float32


@pytest.mark.parametrize("split", [1, 2])
def test_bf16_connector_output_gives_the_same_margins_and_gradients(split):
    # Under autocast the connector hands the classifier the bf16 cast autocast would make, so
    # the gradient arriving at it is bf16 rather than widened to float32: the same bits.
    from tapsc.method.connectors import connect

    network = build(split=split, seed=5)
    _, y, z_lo, z_hi = _boxes(network, 0.1, train=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_hat = latent_attack(network, z_lo, z_hi, y, ir.LatentAttack(steps=4))
    results = []
    for out_dtype in (None, torch.bfloat16):
        lo, hi = z_lo.detach().requires_grad_(True), z_hi.detach().requires_grad_(True)
        network.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z_BE = connect(z_hat, lo[:, None], hi[:, None], 0.5, out_dtype)
            assert z_BE.dtype == (out_dtype or torch.float32)
            margins = margins_at(network, z_BE, y, multi=True)
        (margins * torch.linspace(0.5, 2.0, margins.shape[1])).sum().backward(retain_graph=True)  # BN statistics
        results.append((margins.detach(), lo.grad, hi.grad, [p.grad.clone() for p in network.parameters()
                                                             if p.grad is not None]))
    (m_ref, lo_ref, hi_ref, p_ref), (m_low, lo_low, hi_low, p_low) = results
    assert torch.equal(m_ref, m_low) and torch.equal(lo_ref, lo_low) and torch.equal(hi_ref, hi_low)
    assert lo_ref.abs().sum() > 0 and len(p_ref) == len(p_low) > 0
    assert all(torch.equal(a, b) for a, b in zip(p_ref, p_low))


def _count_retirements(monkeypatch):
    """Spy on the attack's row bookkeeping: (held rows, rows still moving) after every step,
    and the sizes the held rows were compacted to."""
    from tapsc.method import attack_rows

    seen = {"moving": [], "compacted": []}
    moving, compact = attack_rows.HeldRows.moving, attack_rows.HeldRows._compact

    def spy_moving(self, steps_left):
        count = moving(self, steps_left)
        seen["moving"].append((self.count, count))
        return count

    def spy_compact(self, keep):
        seen["compacted"].append(keep.numel())
        compact(self, keep)

    monkeypatch.setattr(attack_rows.HeldRows, "moving", spy_moving)
    monkeypatch.setattr(attack_rows.HeldRows, "_compact", spy_compact)
    return seen


@pytest.mark.parametrize("split,restarts,amp", [(0, 1, False), (0, 3, False), (1, 1, False), (1, 3, False),
                                                (2, 3, False), (1, 3, True)])
def test_retiring_fixed_point_rows_finds_the_same_points_as_the_plain_loop(split, restarts, amp, monkeypatch):
    # Samples 0-4 get a point box (lo == hi): their rows are fixed points from the start, so
    # at the first check the held rows are compacted to the others (padded to MIN_ROWS).
    # A linear classifier (split 0) drives every row into a corner: the attack ends early.
    from tapsc.method.attack_rows import MIN_ROWS, retirement

    network = build(split=split, seed=5)
    _, y, z_lo, z_hi = _boxes(network, 0.1, train=True)
    z_hi = z_hi.detach().clone()
    z_hi[:5] = z_lo[:5].detach()
    seen = _count_retirements(monkeypatch)
    attack = ir.LatentAttack(steps=20, restarts=restarts)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        fast, plain = _fast_and_plain(network, z_lo, z_hi, y, attack)
    assert torch.equal(fast, plain)
    rows = 8 * 4 * restarts
    retire, first_check = retirement(attack.steps, 0.2)
    assert retire and first_check == 5  # 20 steps from lr 0.2
    assert seen["moving"][first_check - 1] == (rows, rows)  # no check before the first check
    assert seen["moving"][first_check][1] <= rows - 5 * 4 * restarts  # the point-box rows retire there
    assert seen["compacted"] and MIN_ROWS <= seen["compacted"][0] <= max(MIN_ROWS, 3 * 4 * restarts)
    if split == 0:
        assert seen["moving"][-1][1] == 0 and len(seen["moving"]) < attack.steps  # ended early


def test_short_attacks_retire_nothing():
    from tapsc.method.attack_rows import retirement

    assert retirement(8, 0.25) == (False, 4)  # 8 steps: rows stop too late to repay the checks
    assert retirement(20, 0.2) == (True, 5) and retirement(50, 0.2) == (True, 5)


def test_rows_that_still_move_are_never_retired():
    # The check is exact: a row whose fingerprint did not change is retired only if the sign
    # step leaves every coordinate where it is.
    from tapsc.method.attack_rows import HeldRows

    lo, hi = torch.zeros(2, 1, 1, 3), torch.ones(2, 1, 1, 3)
    z = torch.tensor([[1.0, 0.0, 0.5], [1.0, 0.0, 0.5]]).reshape(2, 1, 1, 3)
    held = HeldRows(z.clone(), lo, hi, hi - lo, torch.zeros(2, dtype=torch.long), retire=True)
    direction = torch.tensor([[1.0, -1.0, 0.0], [1.0, 1.0, 0.0]]).reshape(2, 1, 1, 3)
    held.find_stopped(direction, 0)
    assert held.stopped.tolist() == [False, False]  # the first call only takes the fingerprints
    held.find_stopped(direction, 1)  # the same iterate again: both rows are candidates
    assert held.stopped.tolist() == [True, False]  # row 1's second coordinate moves up from 0
    held.update(direction, 0.25)
    assert torch.equal(held.z[0], z[0]) and held.z[1, 0, 0, 1] == 0.25
