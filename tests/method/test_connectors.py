"""Connector gradients equal the formula for hand-placed z_hat."""

from __future__ import annotations

import pytest
import torch

from tapsc.language import ir
from tapsc.method.connectors import CONNECTORS, connect, connect_with

# z_lo = 0, z_hi = 2; rows: z_hat on the lower bound, on the upper bound, at 0.5, at 1.0 (centre).
Z_HAT = [0.0, 2.0, 0.5, 1.0]
# Expected (d/dz_lo, d/dz_hi) per c, from max(0, 1 - dist / (c * width)) by hand.
EXPECTED = {
    0.0: [(1, 0), (0, 1), (0, 0), (0, 0)],
    0.5: [(1, 0), (0, 1), (0.5, 0), (0, 0)],
    1.0: [(1, 0), (0, 1), (0.75, 0.25), (0.5, 0.5)],
}


@pytest.mark.parametrize("c", sorted(EXPECTED))
def test_gradients_match_formula(c):
    z_lo = torch.zeros(4, requires_grad=True)
    z_hi = torch.full((4,), 2.0, requires_grad=True)
    z = connect(torch.tensor(Z_HAT), z_lo, z_hi, c)
    torch.testing.assert_close(z.detach(), torch.tensor(Z_HAT))  # forward is the identity on z_hat
    z.sum().backward()
    expected = torch.tensor(EXPECTED[c], dtype=torch.float32)
    torch.testing.assert_close(z_lo.grad, expected[:, 0])
    torch.testing.assert_close(z_hi.grad, expected[:, 1])


@pytest.mark.parametrize("c", [0.0, 0.5, 1.0])
def test_equal_bounds_give_half_each(c):
    z_lo = torch.tensor([1.0, -3.0], requires_grad=True)
    z_hi = torch.tensor([1.0, -3.0], requires_grad=True)
    z = connect(z_lo.detach().clone(), z_lo, z_hi, c)
    (z * torch.tensor([1.0, 4.0])).sum().backward()
    torch.testing.assert_close(z_lo.grad, torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(z_hi.grad, torch.tensor([0.5, 2.0]))


def test_estimator_gradients_sum_onto_shared_bounds():
    z_lo = torch.zeros(1, 1, 3, requires_grad=True)
    z_hi = torch.full((1, 1, 3), 2.0, requires_grad=True)
    z_hat = torch.tensor([[[0.0, 2.0, 0.5], [0.0, 1.0, 2.0]]])  # (B=1, E=2, 3)
    connect(z_hat, z_lo, z_hi, 1.0).sum().backward()
    torch.testing.assert_close(z_lo.grad, torch.tensor([[[2.0, 0.5, 0.75]]]))
    torch.testing.assert_close(z_hi.grad, torch.tensor([[[0.0, 1.5, 1.25]]]))


def test_upstream_gradient_is_scaled_per_dimension():
    z_lo = torch.zeros(2, requires_grad=True)
    z_hi = torch.ones(2, requires_grad=True)
    z = connect(torch.tensor([0.25, 0.25]), z_lo, z_hi, 1.0)
    (z * torch.tensor([2.0, -4.0])).sum().backward()
    torch.testing.assert_close(z_lo.grad, torch.tensor([1.5, -3.0]))
    torch.testing.assert_close(z_hi.grad, torch.tensor([0.5, -1.0]))


def test_every_connector_kind_is_registered_and_maps_to_c():
    assert set(ir.CONNECTOR_CLASSES) == set(CONNECTORS)
    z_lo = torch.zeros(1, requires_grad=True)
    z_hi = torch.ones(1, requires_grad=True)
    expected = {"binary": 0.0, "linear": 0.5, "rectified_linear": 0.0}  # d/dz_lo at z_hat = 0.5, default c = 0.5
    for kind, grad in expected.items():
        z_lo.grad = None
        connect_with(ir.CONNECTOR_CLASSES[kind](), torch.tensor([0.5]), z_lo, z_hi).sum().backward()
        assert z_lo.grad.item() == pytest.approx(grad)


CONNECTOR_NODES = [cls() for cls in ir.CONNECTOR_CLASSES.values()] + [
    ir.RectifiedLinearConnector(c=c) for c in (0.0, 0.25, 1.0)]


@pytest.mark.parametrize("node", CONNECTOR_NODES, ids=lambda n: f"{n.kind}-{n.c:g}")
def test_every_registered_ramp_keeps_the_connector_contract(node):
    """Generated from the registry: each kind's derivative is in [0, 1], 1 where z_hat sits on
    the bound, non-increasing as z_hat moves away from it, 0.5 on a degenerate box, and
    mirrored between the two bounds."""
    from tapsc.method.connectors import connector_weights

    z_lo, z_hi = torch.zeros(1, 1, 9), torch.ones(1, 1, 9)
    z_hat = torch.linspace(0, 1, 9).reshape(1, 1, 9)
    d_lo, d_hi = connector_weights(z_hat, z_lo, z_hi, node)
    assert ((0 <= d_lo) & (d_lo <= 1)).all() and d_lo[..., 0].item() == 1 and d_hi[..., -1].item() == 1
    assert (d_lo[..., 1:] <= d_lo[..., :-1]).all() and (d_hi[..., 1:] >= d_hi[..., :-1]).all()
    torch.testing.assert_close(d_lo, d_hi.flip(-1))
    flat = torch.full((1, 1, 3), 0.3)
    assert (torch.stack(connector_weights(flat, flat, flat, node)) == 0.5).all()


@pytest.mark.parametrize("c", [0.0, 0.25, 0.5, 1.0])
def test_rectified_linear_is_the_papers_formula(c):
    """max(0, 1 - (z_hat - z_lo) / (c (z_hi - z_lo))), written out here independently of the ramp."""
    from tapsc.method.connectors import connector_weights

    generator = torch.Generator().manual_seed(1)
    z_lo = torch.randn(4, 1, 6, generator=generator)
    z_hi = z_lo + torch.rand(4, 1, 6, generator=generator) + 0.1
    z_hat = z_lo + torch.rand(4, 3, 6, generator=generator) * (z_hi - z_lo)
    z_hat[0, 0] = z_lo[0, 0]
    d_lo, d_hi = connector_weights(z_hat, z_lo, z_hi, c)
    if c == 0:
        want_lo, want_hi = (z_hat <= z_lo).float(), (z_hat >= z_hi).float()
    else:
        want_lo = (1 - (z_hat - z_lo) / (c * (z_hi - z_lo))).clamp(min=0)
        want_hi = (1 - (z_hi - z_hat) / (c * (z_hi - z_lo))).clamp(min=0)
    torch.testing.assert_close(d_lo, want_lo)
    torch.testing.assert_close(d_hi, want_hi)


def test_c_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError):
        connect(torch.zeros(1), torch.zeros(1), torch.ones(1), 1.5)


@pytest.mark.parametrize("c", [0.25, 0.5, 1.0, *(cls() for cls in ir.CONNECTOR_CLASSES.values())],
                         ids=lambda c: c.kind if isinstance(c, ir.Node) else str(c))
def test_batched_backward_equals_the_formula_summed_over_estimators(c):
    # 7 samples x 3 estimators: the backward works in memory chunks of ceil(7 / 3) samples,
    # which must give exactly the per-element formula summed over estimators.
    from tapsc.method.connectors import connector_weights

    generator = torch.Generator().manual_seed(0)
    z_lo = torch.randn(7, 1, 2, 5, generator=generator)
    z_hi = z_lo + torch.rand(7, 1, 2, 5, generator=generator)
    z_hi[0, 0, 1] = z_lo[0, 0, 1]  # some degenerate widths
    z_hat = z_lo + torch.rand(7, 3, 2, 5, generator=generator) * (z_hi - z_lo)
    upstream = torch.randn(7, 3, 2, 5, generator=generator)
    z_lo.requires_grad_(True), z_hi.requires_grad_(True)
    (connect(z_hat, z_lo, z_hi, c) * upstream).sum().backward()
    d_lo, d_hi = connector_weights(z_hat, z_lo.detach(), z_hi.detach(), c)
    torch.testing.assert_close(z_lo.grad, (upstream * d_lo).sum(1, keepdim=True))
    torch.testing.assert_close(z_hi.grad, (upstream * d_hi).sum(1, keepdim=True))
