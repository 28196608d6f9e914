"""ONNX export: folded plain ops, one input and output, parity with the unfolded network."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest
import torch

from tapsc.errors import UnsupportedExport
from tapsc.export.onnx import PLAIN_OPS, export_model, export_onnx
from tapsc.language import ir
from tapsc.layers import BoundLayer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "certify"))
from certify_nets import image_layers, random_network  # noqa: E402

ort = pytest.importorskip("onnxruntime")

MLP = (ir.Flatten(), ir.Linear(out_features=12), ir.BatchNorm(), ir.ReLU(), ir.Linear(out_features=4))
# batchnorm first, after a relu and after a residual add: none has an affine layer before it
LOOSE_BN = (ir.BatchNorm(), ir.Conv(out_channels=3, kernel=3), ir.ReLU(), ir.BatchNorm(),
            ir.Residual(body=(ir.Conv(out_channels=3, kernel=1),)), ir.BatchNorm(), ir.Flatten(),
            ir.Linear(out_features=3))
# leaky relus: a LeakyRelu op, and a batchnorm after one stays a diagonal 1x1 conv
LEAKY = (ir.Conv(out_channels=3, kernel=3, padding=1), ir.LeakyReLU(slope=0.1), ir.BatchNorm(),
         ir.Conv(out_channels=3, kernel=3), ir.LeakyReLU(slope=0.3), ir.Flatten(), ir.Linear(out_features=3))

# non-square kernels, strides and paddings in conv and both pools
NONSQUARE = (ir.Conv(out_channels=3, kernel=(3, 5), stride=(1, 2), padding=(1, 2)), ir.ReLU(),
             ir.MaxPool(kernel=(2, 3), stride=(2, 1), padding=(1, 1)), ir.Conv(out_channels=2, kernel=(1, 2)),
             ir.AvgPool(kernel=(3, 2), stride=1, padding=(1, 0)), ir.Flatten(), ir.Linear(out_features=3))


@pytest.mark.parametrize("layers,normalize,opset", [
    (image_layers(), True, 13), (image_layers(), False, 17), (MLP, True, 13), (LOOSE_BN, True, 15),
    (LEAKY, True, 13), (NONSQUARE, True, 13), (NONSQUARE, False, 17)])
def test_onnx_matches_the_network_with_plain_ops_only(tmp_path, layers, normalize, opset):
    network = random_network(7, layers=layers, normalize=normalize)
    x = torch.rand(16, *network.input_shape)
    report = export_onnx(network, tmp_path / "net.onnx", x, opset=opset)
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-5 * max(1, network(x).abs().max())
    model = onnx.load(str(tmp_path / "net.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert ops <= PLAIN_OPS and not ops & {"BatchNormalization", "Sub", "Div"}
    assert model.opset_import[0].version == opset
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == [1, *network.input_shape]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in graph_output.type.tensor_type.shape.dim] == [1, network.num_classes]
    assert not (tmp_path / "net.onnx.data").exists()


def test_leaky_relu_exports_as_leaky_relu_with_its_slope(tmp_path):
    network = random_network(11, layers=LEAKY)
    export_onnx(network, tmp_path / "net.onnx", torch.rand(4, *network.input_shape))
    model = onnx.load(str(tmp_path / "net.onnx"))
    leaky = [node for node in model.graph.node if node.op_type == "LeakyRelu"]
    alphas = [onnx.helper.get_attribute_value(a) for node in leaky for a in node.attribute if a.name == "alpha"]
    assert alphas == pytest.approx([0.1, 0.3])


def test_folded_model_equals_the_network_and_has_no_batchnorm():
    network = random_network(8, layers=LOOSE_BN)
    model = export_model(network)
    x = torch.rand(8, *network.input_shape)
    assert torch.allclose(model(x), network(x), atol=1e-5)
    assert not [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_normalisation_before_an_unpadded_conv_is_folded_away():
    layers = (ir.Conv(out_channels=3, kernel=3), ir.ReLU(), ir.Flatten(), ir.Linear(out_features=2))
    network = random_network(9, layers=layers)
    model = export_model(network)
    assert isinstance(model[0], torch.nn.Conv2d) and model[0].kernel_size == (3, 3)
    assert len([m for m in model if isinstance(m, torch.nn.Conv2d)]) == 1
    x = torch.rand(4, *network.input_shape)
    assert torch.allclose(model(x), network(x), atol=1e-5)


class Mystery(BoundLayer):
    kind = "mystery"

    def forward(self, x):
        return x


def test_a_layer_without_onnx_form_is_a_clear_error(tmp_path):
    network = random_network(10, layers=MLP)
    network.layers.insert(2, Mystery())
    with pytest.raises(UnsupportedExport, match="mystery"):
        export_onnx(network, tmp_path / "net.onnx", torch.rand(2, *network.input_shape))


def test_opset_outside_13_to_17_is_refused(tmp_path):
    network = random_network(11, layers=MLP)
    with pytest.raises(UnsupportedExport, match="opset 18"):
        export_onnx(network, tmp_path / "net.onnx", torch.rand(2, *network.input_shape), opset=18)


POOLED = (ir.Conv(out_channels=3, kernel=3, padding=1), ir.ReLU(), ir.AvgPool(kernel=3, stride=2, padding=1),
          ir.Residual(body=(ir.AvgPool(kernel=3, stride=1, padding=1),)), ir.AvgPool(kernel=2), ir.Flatten(),
          ir.Linear(out_features=3))


def test_average_pools_become_equal_convs_for_marabou(tmp_path):
    """`pool_as_conv` leaves no AveragePool (Marabou rejects it) and onnxruntime agrees with
    the pooled network on real and random inputs (padded pools count zeros, as PyTorch does)."""
    network = random_network(11, layers=POOLED, normalize=False)
    x = torch.rand(4, *network.input_shape)
    report = export_onnx(network, tmp_path / "net.onnx", x, pool_as_conv=True)
    assert "AveragePool" not in report.ops and "Conv" in report.ops
    assert report.parity_inputs == 4 + 16 and report.parity_ok
    session = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    noise = torch.rand(32, *network.input_shape, generator=torch.Generator().manual_seed(5)) * 4 - 2
    with torch.no_grad():
        expected = network(noise)
    got = torch.cat([torch.from_numpy(session.run(None, {"input": row[None].numpy()})[0]) for row in noise])
    assert torch.allclose(got, expected, atol=1e-5)
    plain = export_onnx(network, tmp_path / "plain.onnx", x)
    assert "AveragePool" in plain.ops
    try:
        from maraboupy import Marabou
    except ImportError:
        return
    with pytest.raises(NotImplementedError, match="AveragePool"):  # why the flag exists
        Marabou.read_onnx(str(tmp_path / "plain.onnx"))
    Marabou.read_onnx(str(tmp_path / "net.onnx"))
