"""Soundness of IBP, CROWN-IBP and CROWN: sampled points and box corners stay inside.

Every random network holds every layer kind (normalize, conv, batchnorm, relu, residual
with identity and conv shortcuts, avgpool, maxpool with overlapping padded windows,
flatten, linear). Soundness is the requirement here; tightness is the benchmark's job.
"""

from __future__ import annotations

import copy

import pytest
import torch
from certify_nets import random_network
from torch import nn

from tapsc.certify.linear import METHODS, LinearBounds, spec_matrix
from tapsc.language import ir
from tapsc.measures import input_box


def box_points(lo, hi, samples=300, seed=0):
    """(P, B, ...) points: half uniform in the box, half random corners."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand((samples, *lo.shape), generator=generator)
    u[samples // 2:] = (u[samples // 2:] < 0.5).float()
    return lo + u * (hi - lo)


def random_box(shape, batch, eps, seed):
    """Random inputs (B, *shape) in [0, 1] and their perturbation box."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, *shape), generator=generator)
    return (x, *input_box(x, eps))


def in_float64(network):
    """The network in float64: its float32 weights exactly, its arithmetic 2^29 times finer.
    Certified bounds are claims in exact arithmetic, so sampled margins are computed this way
    (a float32 evaluation is itself off by ~1e-7 of the magnitudes, more than the bounds' slack)."""
    return copy.deepcopy(network).double().eval()


def empirical_margins(network, points, labels, num_classes):
    C_BSK = spec_matrix(labels, num_classes).double()
    network = in_float64(network)
    with torch.no_grad():
        logits_PBK = torch.stack([network(p.double()) for p in points])
    return torch.einsum("bsk,pbk->pbs", C_BSK, logits_PBK)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [0.01, 0.1])
def test_margin_bounds_below_every_sampled_margin(seed, eps):
    network = random_network(seed)
    x, lo, hi = random_box(network.input_shape, 3, eps, seed)
    labels = network(x).argmax(1)
    margins_PBS = empirical_margins(network, box_points(lo, hi, seed=seed), labels, network.num_classes)
    bounds = LinearBounds(network.layers)
    for method in METHODS:
        bound_BS = bounds.margin_lower_bounds(lo, hi, labels, method)
        assert bound_BS.shape == margins_PBS.shape[1:]
        gap = (bound_BS - margins_PBS.min(0).values).max().item()
        assert gap <= 0, f"{method} lower bound exceeds a sampled margin by {gap}"


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_every_intermediate_box_contains_the_sampled_values(method):
    network = random_network(3)
    _, lo, hi = random_box(network.input_shape, 2, 0.08, 3)
    bounds = LinearBounds(network.layers)
    with torch.no_grad():
        boxes = bounds.node_boxes(lo, hi, method)
        for points in box_points(lo, hi, samples=200, seed=3).double():
            for node, value, (blo, bhi) in zip(bounds.graph.nodes, bounds.graph.forward(points), boxes):
                assert (value >= blo).all() and (value <= bhi).all(), f"node {node.index} {node.layer}"


def test_graph_forward_matches_the_network():
    network = random_network(4)
    x = torch.rand(5, *network.input_shape)
    values = LinearBounds(network.layers).graph.forward(x.double())
    assert torch.allclose(values[-1].float(), network(x), atol=1e-6)


def test_affine_network_bound_is_the_exact_minimum():
    """No ReLU: the margin's minimum over the box is a vertex; back-substitution finds it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.BatchNorm1d(7), nn.Linear(7, 4)).eval()
    model[2].running_mean.normal_()
    model[2].running_var.uniform_(0.5, 2)
    _, lo, hi = random_box((3, 2, 2), 4, 0.1, 0)
    labels = torch.tensor([0, 1, 2, 3])
    model64 = in_float64(model)
    W = model64[3].weight @ torch.diag(model64[2].weight / (model64[2].running_var + 1e-5).sqrt()) @ model64[1].weight
    C_BSK = spec_matrix(labels, 4).double()
    CW_BSI = C_BSK @ W
    lo, hi = lo.double(), hi.double()
    exact_BS = (CW_BSI.clamp(min=0) * lo.flatten(1)[:, None] + CW_BSI.clamp(max=0) * hi.flatten(1)[:, None]).sum(-1)
    exact_BS += C_BSK @ (model64(torch.zeros(1, 3, 2, 2, dtype=torch.float64))[0])
    bound_BS = LinearBounds(list(model)).margin_lower_bounds(lo, hi, labels, "crown")
    assert (bound_BS <= exact_BS).all()
    assert torch.allclose(bound_BS, exact_BS, atol=1e-4)


def test_plain_torch_modules_are_bounded_soundly():
    """The folded export model (plain torch layers) goes through the same tables."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                          nn.AvgPool2d(2, 1), nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    x, lo, hi = random_box((2, 6, 6), 3, 0.05, 1)
    labels = model(x).argmax(1)
    margins_PBS = empirical_margins(model, box_points(lo, hi), labels, 3)
    for method in METHODS:
        bound_BS = LinearBounds(list(model)).margin_lower_bounds(lo, hi, labels, method)
        assert (bound_BS <= margins_PBS.min(0).values).all(), method


def test_vector_network_with_small_eps_is_certified_by_crown():
    """A sanity check that the bounds are not vacuous: tiny boxes around confident points."""
    layers = (ir.Linear(out_features=16), ir.BatchNorm(), ir.ReLU(), ir.Linear(out_features=16), ir.ReLU(),
              ir.Linear(out_features=3))
    network = random_network(5, layers=layers, input_shape=(6,), normalize=False)
    x, lo, hi = random_box((6,), 8, 1e-4, 5)
    labels = network(x).argmax(1)
    bound_BS = LinearBounds(network.layers).margin_lower_bounds(lo, hi, labels, "crown")
    margins_PBS = empirical_margins(network, box_points(lo, hi), labels, 3)
    assert (bound_BS <= margins_PBS.min(0).values).all()
    assert (bound_BS.min(1).values > 0).float().mean() >= 0.5


def test_crown_chunks_give_the_same_bounds():
    network = random_network(6)
    _, lo, hi = random_box(network.input_shape, 2, 0.05, 6)
    labels = torch.tensor([0, 1])
    whole = LinearBounds(network.layers).margin_lower_bounds(lo, hi, labels, "crown")
    chunked = LinearBounds(network.layers, chunk_elements=500).margin_lower_bounds(lo, hi, labels, "crown")
    assert torch.allclose(whole, chunked, atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_two_input_network_against_a_dense_grid(seed):
    """In 2-d a grid nearly attains the true minimum, so even slightly unsound rules show."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(1, 2)
    lo, hi = input_box(x, 0.3)
    grid = torch.stack(torch.meshgrid(torch.linspace(0, 1, 201), torch.linspace(0, 1, 201), indexing="ij"), -1)
    points = (lo + grid.reshape(-1, 2) * (hi - lo))
    labels = torch.tensor([seed % 3])
    margins_PS = (spec_matrix(labels, 3)[0].double() @ in_float64(model)(points.double()).T).T
    for method in METHODS:
        bound_S = LinearBounds(list(model)).margin_lower_bounds(lo, hi, labels, method)[0]
        assert (bound_S <= margins_PS.min(0).values).all(), method


@pytest.mark.parametrize("seed", [0, 4])
def test_ibp_certification_bounds_the_margin_through_the_last_layer(seed):
    # Certification's IBP must be as tight as training's (margin rows of the last linear
    # layer), else `tapsc certify` proves fewer samples than `tapsc eval` reports.
    from tapsc.method.losses import ibp_margin_upper

    network = random_network(seed)
    network.eval()
    x, lo, hi = random_box(network.input_shape, 4, 0.02, seed)
    labels = network(x).argmax(1)
    bounds = LinearBounds(network.layers)
    certify_BS = bounds.margin_lower_bounds(lo, hi, labels, "ibp")
    with torch.no_grad():
        upper_BK = ibp_margin_upper(network, lo, hi, labels)
    C_BSK = spec_matrix(labels, network.num_classes)
    training_BS = -torch.einsum("bsk,bk->bs", -C_BSK.clamp(max=0), upper_BK)  # rows j != y
    slack = 1e-3 * training_BS.abs().max().item() + 1e-4
    assert (certify_BS >= training_BS - slack).all()
    # ... and strictly tighter than bounding each logit separately on this network.
    boxes = bounds.node_boxes(lo, hi, "ibp")
    out_lo, out_hi = boxes[bounds.graph.output]
    separate_BS = out_lo.gather(1, labels[:, None]) - (out_hi.unsqueeze(1) * -C_BSK.clamp(max=0)).sum(-1)
    assert (certify_BS >= separate_BS - 1e-5).all() and (certify_BS > separate_BS + 1e-4).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_crown_is_never_looser_than_crown_and_tighter_somewhere(seed):
    network = random_network(seed)
    x, lo, hi = random_box(network.input_shape, 4, 0.03, seed)
    labels = network(x).argmax(1)
    bounds = LinearBounds(network.layers)
    crown = bounds.margin_lower_bounds(lo, hi, labels, "crown")
    alpha = bounds.margin_lower_bounds(lo, hi, labels, "alpha_crown")
    assert (alpha >= crown).all()
    assert (alpha > crown + 1e-6).any(), "the optimised slopes should improve some row"


def test_bounds_can_be_taken_of_a_network_fresh_from_a_training_forward():
    """A training forward leaves graph tensors (BatchNorm's batch statistics) on the layers;
    the bounds' float64 copy must not trip over them nor change the original."""
    network = random_network(7)
    network.train()
    x = torch.rand(4, *network.input_shape)
    network(x).sum()  # records batch statistics with a graph
    recorded = [m.batch_mean for m in network.modules() if hasattr(m, "batch_mean")]
    assert any(t is not None and not t.is_leaf for t in recorded)
    bounds = LinearBounds(network.layers)
    assert network.training and [m.batch_mean for m in network.modules() if hasattr(m, "batch_mean")] == recorded
    network.eval()
    _, lo, hi = random_box(network.input_shape, 2, 0.01, 7)
    labels = torch.tensor([0, 1])
    torch.testing.assert_close(bounds.margin_lower_bounds(lo, hi, labels, "crown"),
                               LinearBounds(network.layers).margin_lower_bounds(lo, hi, labels, "crown"))
