"""The compiled Network: structure, split, normalisation, BatchNorm statistics, Shi init, errors."""

from __future__ import annotations

import math

import pytest
import torch
from compile_helpers import make_spec
from torch import nn

from tapsc.compile import Network, compile_network
from tapsc.errors import TapscError
from tapsc.language import ir
from tapsc.layers import LAYERS, BatchNorm, Normalize


def _cnn(bn=True):
    layers = [ir.Conv(out_channels=4, kernel=3, padding=1)]
    layers += [ir.BatchNorm()] if bn else []
    layers += [ir.ReLU(), ir.Conv(out_channels=4, kernel=3, stride=2, padding=1)]
    layers += [ir.BatchNorm()] if bn else []
    layers += [ir.ReLU(), ir.Flatten(), ir.Linear(out_features=12)]
    layers += [ir.BatchNorm()] if bn else []
    layers += [ir.ReLU(), ir.Linear(out_features=10)]
    return layers


def test_one_module_list_and_plain_state_dict():
    network = compile_network(make_spec(_cnn(), split=1))
    children = list(network.named_children())
    assert [name for name, _ in children] == ["layers"]
    keys = list(network.state_dict())
    assert all(key.startswith("layers.") for key in keys)
    params = list(network.parameters())
    assert len({id(p) for p in params}) == len(params)  # no aliases
    assert network.num_classes == 10 and network.input_shape == (1, 6, 6)


@pytest.mark.parametrize("count,expected", [(0, 10), (1, 6), (2, 3), (3, 0)])
def test_split_follows_relus_in_classifier(count, expected):
    network = compile_network(make_spec(_cnn(), split=count))
    assert network.split == expected
    relus_after = sum(1 for i in network.relu_layers() if i >= network.split)
    assert relus_after == count


def test_normalize_is_first_and_offsets_split():
    norm = ir.Normalize(mean=(0.5,), std=(0.25,))
    plain = compile_network(make_spec(_cnn(), split=1))
    normed = compile_network(make_spec(_cnn(), split=1, normalize=norm))
    assert isinstance(normed.layers[0], Normalize)
    assert normed.split == plain.split + 1
    # Copy weights layer by layer (indices shift by one) and compare with explicit normalisation.
    for src, dst in zip(plain.layers, normed.layers[1:]):
        dst.load_state_dict(src.state_dict())
    plain.eval(), normed.eval()
    x = torch.rand(4, 1, 6, 6)
    torch.testing.assert_close(normed(x), plain((x - 0.5) / 0.25))


def test_extractor_classifier_compose_to_forward():
    network = compile_network(make_spec(_cnn(), split=2)).eval()
    x = torch.rand(5, 1, 6, 6)
    torch.testing.assert_close(network.classifier(network.extractor(x)), network(x))
    lo, hi = x - 0.01, x + 0.01
    z_lo, z_hi = network.extractor_box(lo, hi)
    out = network.interval(z_lo, z_hi, network.split)
    full = network.interval(lo, hi)
    torch.testing.assert_close(out[0], full[0]) and torch.testing.assert_close(out[1], full[1])


def test_batchnorm_matches_torch_in_train_and_eval():
    torch.manual_seed(0)
    mine, _ = LAYERS["batchnorm"].build(ir.BatchNorm(momentum=0.3), (3, 4, 4))
    ref = nn.BatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        mine.weight.normal_(), mine.bias.normal_()
        ref.weight.copy_(mine.weight), ref.bias.copy_(mine.bias)
    for _ in range(3):
        x = torch.randn(6, 3, 4, 4) * 2 + 1
        torch.testing.assert_close(mine(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.running_mean, ref.running_mean)
    torch.testing.assert_close(mine.running_var, ref.running_var)
    assert set(mine.state_dict()) == set(ref.state_dict())
    mine.eval(), ref.eval()
    x = torch.randn(6, 3, 4, 4)
    torch.testing.assert_close(mine(x), ref(x), rtol=1e-5, atol=1e-5)


def test_interval_in_training_reuses_clean_batch_statistics():
    torch.manual_seed(0)
    network = compile_network(make_spec(_cnn(), split=1)).train()
    x = torch.rand(8, 1, 6, 6)
    clean = network(x)
    running = [bn.running_mean.clone() for bn in network.batchnorm_layers()]
    lo, hi = network.interval(x, x)  # a point box under the clean batch's affine maps
    torch.testing.assert_close(lo, clean, rtol=1e-4, atol=1e-4)
    with network.frozen_batchnorm(detach=True):
        again = network(x[:3])  # a sub-batch: the clean statistics, not its own
    torch.testing.assert_close(again, clean[:3], rtol=1e-4, atol=1e-4)
    for before, bn in zip(running, network.batchnorm_layers()):
        torch.testing.assert_close(before, bn.running_mean)  # the frozen pass updated nothing
        assert bn.stats_mode == "record"


def test_detached_statistics_carry_no_gradient():
    network = compile_network(make_spec(_cnn(), split=1)).train()
    x = torch.rand(8, 1, 6, 6, requires_grad=True)
    network(x)
    with network.frozen_batchnorm(detach=True):
        network.interval(x, x)[1].sum().backward()
    grad_detached = x.grad.clone()
    x.grad = None
    network(x)
    network.interval(x, x)[1].sum().backward()
    assert not torch.allclose(grad_detached, x.grad)  # live statistics add their own gradient


def test_detached_batchnorm_affine_is_computed_once_per_block_with_the_same_values(monkeypatch):
    from tapsc.layers.batchnorm import BatchNorm

    network = compile_network(make_spec(_cnn(), split=1))
    x = torch.rand(8, 1, 6, 6)
    with torch.no_grad():
        network.train()
        network(x)  # records the batch statistics (and updates the running ones)
        with network.frozen_batchnorm(detach=False):
            live = network(x[:4])  # recomputes scale and shift on every call
        with_running_statistics = network.eval()(x[:4])
        network.train()
    calls = []
    real = BatchNorm._affine_now
    monkeypatch.setattr(BatchNorm, "_affine_now", lambda self: calls.append(self) or real(self))
    layers = len(network.batchnorm_layers())
    for _ in range(2):  # every block computes it afresh: the weights change between steps
        with network.frozen_batchnorm(detach=True):
            first, second = network(x[:4]), network(x[:4])
        assert len(calls) == layers and torch.equal(first, live) and torch.equal(second, live)
        assert all(bn.constant_affine is None for bn in network.batchnorm_layers())
        calls.clear()
    with network.frozen_batchnorm(detach=True):
        network(x[:4])
        network.eval()  # running statistics from here: the batch's constant must not survive
        assert torch.equal(network(x[:4]), with_running_statistics)
    assert len(calls) == 2 * layers


def test_interval_before_forward_in_training_raises():
    network = compile_network(make_spec(_cnn(), split=1)).train()
    x = torch.rand(2, 1, 6, 6)
    with pytest.raises(RuntimeError, match="clean forward"):
        network.interval(x, x)
    network.eval()
    network.interval(x, x)  # eval mode uses running statistics


def test_shi_initialisation_variance_and_last_layer_untouched():
    torch.manual_seed(0)
    layers = [ir.Flatten(), ir.Linear(out_features=400), ir.ReLU(), ir.Linear(out_features=300), ir.ReLU(),
              ir.Linear(out_features=10)]
    torch.manual_seed(3)
    default = compile_network(make_spec(layers, input_shape=(1, 20, 20)))
    torch.manual_seed(3)
    shi = compile_network(make_spec(layers, input_shape=(1, 20, 20), init="shi"))
    first, second, last = shi.affine_layers()
    for layer in (first, second):
        expected_std = math.sqrt(2 * math.pi) / layer.fan_in
        assert abs(layer.weight.std().item() / expected_std - 1) < 0.02
    assert torch.equal(last.weight, default.affine_layers()[-1].weight)
    assert last.weight.std().item() < 1 / math.sqrt(last.fan_in)  # kaiming-uniform default, not Shi
    torch.testing.assert_close(first.bias, default.affine_layers()[0].bias)  # biases default


def test_shape_error_is_a_tapsc_error_with_the_layer_span():
    span = ir.Span(file="x.taps", line=3, column=1, end_line=3, end_column=9)
    layers = [ir.Conv(out_channels=2, kernel=3), ir.Linear(out_features=3, span=span)]
    with pytest.raises(TapscError) as caught:
        compile_network(make_spec(layers))
    diagnostic = caught.value.diagnostics[0]
    assert diagnostic.code == "shape-mismatch" and diagnostic.span == span and "flatten" in diagnostic.help


def test_bad_split_is_a_tapsc_error():
    with pytest.raises(TapscError) as caught:
        compile_network(make_spec(_cnn(), split=7))
    assert caught.value.diagnostics[0].code == "split-out-of-range"


def test_network_rejects_split_outside_layers():
    with pytest.raises(ValueError):
        Network([], 1, (1,), 1)


def test_batchnorm_1d_and_2d_by_shape():
    bn1, _ = LAYERS["batchnorm"].build(ir.BatchNorm(), (5,))
    bn2, _ = LAYERS["batchnorm"].build(ir.BatchNorm(), (3, 2, 2))
    assert isinstance(bn1, BatchNorm) and bn1.reduce_dims == (0,) and bn2.reduce_dims == (0, 2, 3)


def test_linear_in_features_mismatch_is_reported():
    layers = [ir.Flatten(), ir.Linear(out_features=3, in_features=35)]
    with pytest.raises(TapscError) as caught:
        compile_network(make_spec(layers))
    assert "in_features=36" in caught.value.diagnostics[0].help
    compile_network(make_spec([ir.Flatten(), ir.Linear(out_features=3, in_features=36)]))


def test_one_normalize_value_for_every_channel_passes_check_and_compiles_like_three():
    """`tapsc check` accepts what the Normalize layer and the ONNX export accept: one mean and
    one std for all channels, or one per channel (issue 16: check demanded one per channel)."""
    from tapsc.language.spec import load_spec_text

    body = ("model { input (3, 32, 32); flatten; linear(10) }\nperturbation linf { eps 0.01 }\n"
            "method { phase ibp }\noptimizer adam { epochs 1 }\n")
    one = load_spec_text("data cifar10 { normalize mean (0.5,) std (0.25,) }\n" + body)
    three = load_spec_text("data cifar10 { normalize mean (0.5, 0.5, 0.5) std (0.25, 0.25, 0.25) }\n" + body)
    torch.manual_seed(0)
    net_one = compile_network(one)
    torch.manual_seed(0)
    net_three = compile_network(three)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(net_one(x), net_three(x))
    with pytest.raises(TapscError) as error:
        load_spec_text("data cifar10 { normalize mean (0.5, 0.5) std (0.25, 0.25) }\n" + body)
    assert error.value.diagnostics[0].code == "normalize-channels"
