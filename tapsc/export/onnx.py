"""ONNX export of the concrete network, in the form external verifiers read as it is.

The network is first lowered to a plain torch model of folded layers (`export_model`): each
layer gives its plain torch module (``onnx_module``, on its class in `tapsc.layers`), then
- BatchNorm (eval statistics) is folded into the conv/linear right before it (NeuralSAT
  and other onnx2pytorch tools reject the ``training_mode`` attribute PyTorch writes on
  ``BatchNormalization``);
- the input normalisation is folded into the first conv/linear (Marabou cannot read a
  broadcast ``Sub``/``Div``), so boxes stay in [0, 1] pixel units;
- a per-channel affine map that cannot be folded exactly (a BatchNorm after a residual
  add or a ReLU, a normalisation before a conv with zero padding: padding would pad the
  raw pixels instead of the normalised ones) becomes a 1x1 ``Conv`` (images) or a
  ``Gemm`` (vectors) with a diagonal weight: a plain op with no broadcasting;
- a residual block becomes ``body(x) + shortcut(x)`` (an ``Add``);
- with ``pool_as_conv`` (for Marabou, which rejects ``AveragePool``), average pooling
  becomes the equal fixed-weight ``Conv``: a depthwise-diagonal kernel of 1/k^2 with the
  pool's stride and zero padding (PyTorch's pooling counts padded zeros in the divisor, so
  the two agree exactly up to float rounding).

The ONNX file has one float32 input of shape (1, *input_shape) and one output (raw
logits), opset 13..17, weights inside the file (the TorchScript exporter, not dynamo).

Shape legend: O output channels/features, I input channels/features, k kernel.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from tapsc.errors import UnsupportedExport
from tapsc.export.modules import ChannelAffine, ResidualAdd
from tapsc.layers import LAYERS

PLAIN_OPS = {"Conv", "Gemm", "MatMul", "Add", "Relu", "LeakyRelu", "Flatten", "Reshape", "AveragePool", "MaxPool", "Pad",
             "Constant"}


# ---------------------------------------------------------------- lowering tapsc layers


def _lower(layers: Sequence[nn.Module], probe: torch.Tensor) -> list[nn.Module]:
    """Each layer's plain torch module (its ``onnx_module``), nested sequences lowered in turn."""
    lowered: list[nn.Module] = []
    for layer in layers:
        if not hasattr(layer, "onnx_module"):
            kind = getattr(layer, "kind", type(layer).__name__)
            raise UnsupportedExport(f"layer kind `{kind}` has no ONNX form in tapsc's exporter",
                                    help=f"exportable kinds: {', '.join(sorted(LAYERS))}")
        module = layer.onnx_module(partial(_build, probe=probe))
        if module is not None:
            lowered.append(module)
            probe = module(probe)
    return lowered


# ---------------------------------------------------------------- folding per-channel affine maps


def _channels(affine: ChannelAffine, channels: int) -> ChannelAffine:
    """Expand a single-value (one mean/std for every channel) map to ``channels`` entries."""
    return ChannelAffine(affine.scale.expand(channels), affine.shift.expand(channels))


def _fold_after(module: nn.Conv2d | nn.Linear, affine: ChannelAffine) -> None:
    """module := affine o module (scale the output rows)."""
    view = (-1,) + (1,) * (module.weight.dim() - 1)
    module.weight.data.mul_(affine.scale.reshape(view))
    module.bias.data.copy_(module.bias.data * affine.scale + affine.shift)


def _fold_before(module: nn.Module, affine: ChannelAffine, repeat: int = 1) -> bool:
    """module := module o affine when exact (no zero padding to reinterpret); returns success."""
    scale, shift = affine.scale.repeat_interleave(repeat), affine.shift.repeat_interleave(repeat)
    if isinstance(module, nn.Linear) and module.in_features == scale.numel():
        module.bias.data.add_(module.weight.data @ shift)
        module.weight.data.mul_(scale.reshape(1, -1))
        return True
    if isinstance(module, nn.Conv2d) and module.padding in (0, (0, 0)) and module.groups == 1:
        view = (1, -1, 1, 1)
        module.bias.data.add_((module.weight.data * shift.reshape(view)).sum((1, 2, 3)))
        module.weight.data.mul_(scale.reshape(view))
        return True
    return False


def _materialize(affine: ChannelAffine, probe: torch.Tensor) -> nn.Module:
    """A diagonal 1x1 Conv (feature maps) or Linear (vectors): plain ops, no broadcasting."""
    channels = affine.scale.numel()
    if probe.dim() == 4:
        module = nn.Conv2d(channels, channels, 1)
        module.weight.data.copy_(torch.diag(affine.scale).reshape(channels, channels, 1, 1))
    else:
        module = nn.Linear(channels, channels)
        module.weight.data.copy_(torch.diag(affine.scale))
    module.bias.data.copy_(affine.shift)
    return module


def _fold(modules: list[nn.Module], probe: torch.Tensor) -> nn.Sequential:
    folded: list[nn.Module] = []
    for i, module in enumerate(modules):
        if isinstance(module, ChannelAffine):
            module = _channels(module, probe.shape[1])
            after = modules[i + 1:i + 3]
            if folded and isinstance(folded[-1], (nn.Conv2d, nn.Linear)):
                _fold_after(folded[-1], module)
                continue
            if after and _fold_before(after[0], module):
                continue
            if len(after) == 2 and isinstance(after[0], nn.Flatten) and probe.dim() == 4 and \
                    _fold_before(after[1], module, repeat=probe[0, 0].numel()):
                continue
            module = _materialize(module, probe)
        folded.append(module)
        probe = module(probe)
    return nn.Sequential(*folded)


def _build(layers: Sequence[nn.Module], probe: torch.Tensor) -> nn.Sequential:
    return _fold(_lower(layers, probe), probe)


def _pool_conv(pool: nn.AvgPool2d, channels: int) -> nn.Conv2d:
    """A Conv2d equal to ``pool`` (count_include_pad, no ceil mode) on ``channels`` channels."""
    kernel = pool.kernel_size if isinstance(pool.kernel_size, tuple) else (pool.kernel_size,) * 2
    conv = nn.Conv2d(channels, channels, kernel, pool.stride, pool.padding, bias=False)
    weight = torch.zeros(channels, channels, *kernel)
    weight[range(channels), range(channels)] = 1.0 / (kernel[0] * kernel[1])
    conv.weight.data.copy_(weight)
    return conv


def _pools_as_convs(module: nn.Module, probe: torch.Tensor) -> nn.Module:
    """Replace every AvgPool2d in ``module`` (a Sequential, residuals included) by its Conv2d."""
    if isinstance(module, ResidualAdd):
        return ResidualAdd(_pools_as_convs(module.body, probe), _pools_as_convs(module.shortcut, probe))
    if isinstance(module, nn.AvgPool2d):
        if module.ceil_mode or not module.count_include_pad:
            raise UnsupportedExport("an average pool with ceil_mode or without count_include_pad has no fixed conv")
        return _pool_conv(module, probe.shape[1])
    if not isinstance(module, nn.Sequential):
        return module
    replaced = []
    for child in module:
        child = _pools_as_convs(child, probe)
        replaced.append(child)
        probe = child(probe)
    return nn.Sequential(*replaced)


def export_model(network: nn.Module, pool_as_conv: bool = False) -> nn.Sequential:
    """The network as a plain eval-mode ``nn.Sequential`` of folded torch layers (same function).

    Args:
        pool_as_conv: write each average pool as the equal fixed-weight Conv2d (Marabou).
    """
    with torch.no_grad():
        probe = torch.zeros(1, *network.input_shape)
        model = _build(network.layers, probe)
        if pool_as_conv:
            model = _pools_as_convs(model, probe)
    return model.eval()


# ---------------------------------------------------------------- the ONNX file


@dataclass
class OnnxReport:
    """What the export checked: the ops used and onnxruntime's agreement with PyTorch."""

    path: Path
    opset: int
    ops: list[str]
    parity_inputs: int
    max_abs_diff: float | None  # None: onnxruntime not installed, parity not checked
    tolerance: float

    @property
    def parity_ok(self) -> bool:
        return self.max_abs_diff is not None and self.max_abs_diff <= self.tolerance


def write_onnx(network: nn.Module, path: Path, opset: int = 13, pool_as_conv: bool = False) -> list[str]:
    """Export the folded network to ``path`` (one file, batch 1); returns the op types used."""
    import onnx

    if not 13 <= opset <= 17:
        raise UnsupportedExport(f"opset {opset} is outside 13..17",
                                help="onnx2torch-based verifiers cannot read newer opsets; set export.opset")
    model = export_model(network, pool_as_conv)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, *network.input_shape)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, but it is the one
        warnings.simplefilter("ignore", DeprecationWarning)  # that writes one file at opset <= 17
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"], do_constant_folding=True)
    graph = onnx.load(str(path))
    if _inline_shared_weights(graph):
        onnx.save(graph, str(path))
    onnx.checker.check_model(graph, full_check=True)
    ops = sorted({node.op_type for node in graph.graph.node})
    odd = sorted(set(ops) - PLAIN_OPS)
    assert not odd, f"the exported graph uses ops beyond the plain set: {odd}"
    assert len(graph.graph.input) == 1 and len(graph.graph.output) == 1, "ONNX must have one input and one output"
    assert not (pool_as_conv and "AveragePool" in ops), "pool_as_conv left an AveragePool in the graph"
    return ops


def _inline_shared_weights(model) -> bool:
    """Drop the ``Identity`` nodes the exporter adds when two layers have equal weights (it
    stores the tensor once): each gets its own copy, so the graph keeps to plain ops."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    shared = [n for n in graph.node if n.op_type == "Identity" and n.input[0] in weights]
    for node in shared:
        copy = graph.initializer.add()
        copy.CopyFrom(weights[node.input[0]])
        copy.name = node.output[0]
        graph.node.remove(node)
    return bool(shared)


def onnx_parity(network: nn.Module, path: Path, x_BX: torch.Tensor) -> float | None:
    """Max |onnxruntime - PyTorch| over real inputs, one at a time (batch 1); None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    with torch.no_grad():
        reference = network.eval()(x_BX.float().cpu())
    worst = 0.0
    for row, expected in zip(x_BX.float().cpu().numpy(), reference):
        (logits,) = session.run(None, {name: row[None]})
        worst = max(worst, float(abs(torch.from_numpy(logits[0]) - expected).max()))
    return worst


RANDOM_PARITY_INPUTS = 16  # uniform [0, 1] inputs added to the parity check of a rewritten graph


def export_onnx(network: nn.Module, path: Path, x_BX: torch.Tensor, opset: int = 13,
                tolerance: float = 1e-5, pool_as_conv: bool = False) -> OnnxReport:
    """Write the ONNX file and check it against the (unfolded) network on ``x_BX``.

    The tolerance is absolute for logits of magnitude up to 1 and relative above
    (float32 cannot hold 1e-5 absolute on logits of size 100). With ``pool_as_conv``
    the check also runs on `RANDOM_PARITY_INPUTS` seeded uniform [0, 1] inputs.

    Raises:
        UnsupportedExport: for a layer with no ONNX form, or a parity failure.
    """
    network = network.eval()
    ops = write_onnx(network, path, opset, pool_as_conv)
    if pool_as_conv:
        generator = torch.Generator().manual_seed(0)
        noise = torch.rand(RANDOM_PARITY_INPUTS, *network.input_shape, generator=generator)
        x_BX = torch.cat([x_BX.float().cpu(), noise])
    diff = onnx_parity(network, path, x_BX)
    with torch.no_grad():
        scale = max(1.0, float(network(x_BX.float().cpu()).abs().max())) if len(x_BX) else 1.0
    report = OnnxReport(Path(path), opset, ops, len(x_BX), diff, tolerance * scale)
    if diff is not None and not report.parity_ok:  # a NaN difference fails too
        raise UnsupportedExport(f"onnxruntime disagrees with PyTorch by {diff:.3g} (tolerance {report.tolerance:.3g})",
                                help="this is a bug in the exporter; please report it with the spec")
    return report
