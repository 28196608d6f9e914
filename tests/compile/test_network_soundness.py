"""Whole random networks: sampled inputs stay inside the interval bounds at every layer."""

from __future__ import annotations

import torch
from compile_helpers import assert_contains, make_spec, sample_box
from hypothesis import given, settings
from hypothesis import strategies as st

from tapsc.compile import compile_network
from tapsc.language import ir
from tapsc.measures import input_box


@st.composite
def conv_blocks(draw):
    """A random image network: conv/bn/relu/pool blocks, flatten, linear blocks, linear head."""
    layers, size = [], 6
    for _ in range(draw(st.integers(0, 3))):
        kernel = draw(st.sampled_from([1, 3]))
        channels = draw(st.integers(1, 4))
        stride = draw(st.sampled_from([1, 2]))
        layers.append(ir.Conv(out_channels=channels, kernel=kernel, padding=kernel // 2, stride=stride))
        size = (size - 1) // stride + 1
        if draw(st.booleans()):
            layers.append(ir.BatchNorm())
        layers.append(ir.ReLU())
        pool = draw(st.sampled_from(["none", "avg", "max", "residual"]))
        if pool == "avg" and size >= 2:
            size -= 1
            layers.append(ir.AvgPool(kernel=2, stride=1))
        elif pool == "max":
            size += 1
            layers.append(ir.MaxPool(kernel=2, stride=1, padding=1))
        elif pool == "residual":
            body = (ir.Conv(out_channels=channels, kernel=3, padding=1), ir.BatchNorm(), ir.ReLU())
            layers.append(ir.Residual(body=body))
    layers.append(ir.Flatten())
    for _ in range(draw(st.integers(0, 2))):
        layers.append(ir.Linear(out_features=draw(st.integers(2, 8))))
        if draw(st.booleans()):
            layers.append(ir.BatchNorm())
        layers.append(ir.ReLU())
    layers.append(ir.Linear(out_features=draw(st.integers(2, 5))))
    return layers


def _check_network(layers, seed: int, eps: float, train: bool, normalize: bool, batch: int = 3):
    torch.manual_seed(seed)
    norm = ir.Normalize(mean=(0.3, 0.5), std=(0.2, 0.4)) if normalize else None
    network = compile_network(make_spec(layers, input_shape=(2, 6, 6), normalize=norm, init="shi",
                                          split=ir.SplitAtLayer(index=0)))
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, 2, 6, 6), generator=generator)
    network.train(train)
    if not train:
        for bn in network.batchnorm_layers():  # non-trivial running statistics
            bn.running_mean.normal_(generator=generator)
            bn.running_var.uniform_(0.2, 2.0, generator=generator)
    network(x)  # clean forward first: records the batch statistics in train mode
    lo, hi = input_box(x, eps)
    trace = network.interval_trace(lo, hi)
    points = sample_box(lo, hi, 48, generator)
    with network.frozen_batchnorm(detach=True):
        for index, layer in enumerate(network.layers):
            points = layer(points)
            assert_contains(*trace[index], points, f"layer {index} ({layer.kind})", depth=index + 1)


@settings(max_examples=30, deadline=None)
@given(layers=conv_blocks(), seed=st.integers(0, 1000), eps=st.sampled_from([0.0, 0.01, 0.1, 0.5]),
       train=st.booleans(), normalize=st.booleans())
def test_random_network_is_sound(layers, seed, eps, train, normalize):
    _check_network(layers, seed, eps, train, normalize)


def test_cnn7_like_network_is_sound_in_both_modes():
    layers = []
    for channels, stride in [(4, 1), (4, 1), (8, 2), (8, 1)]:
        layers += [ir.Conv(out_channels=channels, kernel=3, stride=stride, padding=1), ir.BatchNorm(), ir.ReLU()]
    layers += [ir.Flatten(), ir.Linear(out_features=16), ir.BatchNorm(), ir.ReLU(), ir.Linear(out_features=10)]
    for train in (False, True):
        _check_network(layers, seed=1, eps=0.05, train=train, normalize=True, batch=8)
