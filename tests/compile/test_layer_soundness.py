"""Interval soundness of every registered layer kind (its case in tests/layer_cases.py), by
sampling points and box corners."""

from __future__ import annotations

import pytest
import torch
from compile_helpers import assert_contains, sample_box
from hypothesis import given, settings
from hypothesis import strategies as st
from layer_cases import LAYER_CASES

from tapsc.layers import LAYERS


def _randomise(layer: torch.nn.Module, generator: torch.Generator) -> None:
    """Give BatchNorm non-trivial affine parameters and running statistics (some scales negative)."""
    for name, tensor in list(layer.named_parameters()) + list(layer.named_buffers()):
        if name.endswith("num_batches_tracked") or name.endswith(("mean", "std")) and "running" not in name:
            continue
        with torch.no_grad():
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(noise.abs() + 0.1)
            else:
                tensor.add_(noise)


def _check_kind(kind: str, seed: int, batch: int, radius: float, train: bool,
                interval_mode: str = "record") -> None:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    node, in_shape = LAYER_CASES[kind]
    layer, out_shape = LAYERS[kind].build(node, in_shape)
    _randomise(layer, generator)
    layer.train(train)
    x = torch.randn((batch,) + in_shape, generator=generator)
    if train:
        layer(x)  # the clean forward records the batch statistics
    r = radius * torch.rand(x.shape, generator=generator)
    lo, hi = x - r, x + r
    with _stats_mode(layer, interval_mode):  # "reuse_detached": BatchNorm's constant affine map
        out_lo, out_hi = layer.interval(lo, hi)
    assert tuple(out_lo.shape[1:]) == tuple(out_shape)
    points = sample_box(lo, hi, 64, generator)
    with _stats_mode(layer, "reuse"):
        y = layer(points)
    assert_contains(out_lo, out_hi, y, kind)


class _stats_mode:
    """BatchNorm layers in ``mode`` inside the block; sampled points use "reuse" (the clean
    batch's statistics, as the interval does)."""

    def __init__(self, layer, mode: str):
        self.layers = [m for m in layer.modules() if hasattr(m, "set_stats_mode")]
        self.mode = mode

    def __enter__(self):
        for m in self.layers:
            m.set_stats_mode(self.mode)

    def __exit__(self, *exc):
        for m in self.layers:
            m.set_stats_mode("record")


@pytest.mark.parametrize("kind", sorted(LAYER_CASES))
@pytest.mark.parametrize("train", [False, True])
def test_layer_interval_is_sound(kind, train):
    for seed in range(3):
        _check_kind(kind, seed, batch=4, radius=0.5, train=train)


@pytest.mark.parametrize("kind", sorted(LAYER_CASES))
@pytest.mark.parametrize("train", [False, True])
def test_layer_interval_is_sound_under_frozen_detached_batchnorm(kind, train):
    # the attacks' mode, where BatchNorm caches its affine map for the whole block
    for seed in range(3):
        _check_kind(kind, seed, batch=4, radius=0.5, train=train, interval_mode="reuse_detached")


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(LAYER_CASES)), seed=st.integers(0, 10_000), batch=st.integers(1, 5),
       radius=st.sampled_from([0.0, 1e-4, 0.05, 1.0, 10.0]), train=st.booleans())
def test_layer_interval_is_sound_hypothesis(kind, seed, batch, radius, train):
    if train and kind in ("batchnorm", "residual") and batch == 1:
        batch = 2  # batch statistics of one sample are degenerate but still well defined; keep it >1
    _check_kind(kind, seed, batch, radius, train)


@pytest.mark.parametrize("kind", sorted(LAYER_CASES))
def test_point_box_gives_forward(kind):
    """A degenerate box [x, x] maps to (numerically) forward(x)."""
    node, in_shape = LAYER_CASES[kind]
    torch.manual_seed(0)
    layer, _ = LAYERS[kind].build(node, in_shape)
    layer.eval()
    x = torch.randn((3,) + in_shape)
    lo, hi = layer.interval(x, x)
    torch.testing.assert_close(lo, layer(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hi, layer(x), rtol=1e-5, atol=1e-5)
