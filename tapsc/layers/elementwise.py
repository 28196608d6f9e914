"""Parameter-free layer kinds: relu, leaky_relu, flatten, identity, max and average pooling, normalize.

Every kind here is monotone non-decreasing in each input, so the inherited interval
rule (apply forward to both bounds) is tight, and it stays sound in floating point
because rounding is monotone too. That is why avgpool and normalize use it rather
than the centre/radius form of the weighted affine kinds.

Shape legend: B batch, C channels, H/W spatial.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tapsc.certify import rules
from tapsc.errors import Diagnostic, TapscError
from tapsc.export.modules import ChannelAffine
from tapsc.language import ir
from tapsc.language.shapes import Shape
from tapsc.layers.base import BoundLayer, register_layer


@register_layer("relu")
class ReLU(BoundLayer):
    backward = rules.relu_backward
    relaxed = True

    @classmethod
    def build(cls, node, in_shape: Shape):
        return cls(), tuple(in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)

    def magnitude(self, m: torch.Tensor) -> torch.Tensor:
        return m

    def onnx_module(self, lower) -> nn.ReLU:
        return nn.ReLU()


@register_layer("leaky_relu")
class LeakyReLU(BoundLayer):
    """y = x for x >= 0, slope * x below (monotone for slope >= 0).

    ``negative_slope`` (nn.LeakyReLU's name, so one bound rule serves both) is the IR's
    slope rounded to float32: then float32 and float64 evaluations use the same real
    slope, the one certification reasons about and the ONNX file stores.
    """

    backward = rules.leaky_relu_backward
    relaxed = True

    def __init__(self, slope: float):
        super().__init__()
        self.negative_slope = float(torch.tensor(slope, dtype=torch.float32))

    @classmethod
    def build(cls, node: ir.LeakyReLU, in_shape: Shape):
        return cls(node.slope), tuple(in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def magnitude(self, m: torch.Tensor) -> torch.Tensor:
        return m  # |y| <= |x| and y is the single term x or slope * x

    def onnx_module(self, lower) -> nn.LeakyReLU:
        return nn.LeakyReLU(self.negative_slope)

    def extra_repr(self) -> str:
        return f"slope={self.negative_slope}"


@register_layer("flatten")
class Flatten(BoundLayer):
    autocast = "reshapes"
    backward = rules.affine_backward

    @classmethod
    def build(cls, node, in_shape: Shape):
        return cls(), ir.Flatten().out_shape(tuple(in_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def magnitude(self, m: torch.Tensor) -> torch.Tensor:
        return self.forward(m)

    def onnx_module(self, lower) -> nn.Flatten:
        return nn.Flatten()


@register_layer("identity")
class Identity(BoundLayer):
    """No-op; the empty shortcut of a residual block."""

    autocast = "reshapes"
    backward = rules.affine_backward

    @classmethod
    def build(cls, node, in_shape: Shape):
        return cls(), tuple(in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def magnitude(self, m: torch.Tensor) -> torch.Tensor:
        return m

    def onnx_module(self, lower) -> None:
        return None  # nothing to write


class _Pool(BoundLayer):
    def __init__(self, node: ir.AvgPool | ir.MaxPool):
        super().__init__()
        self.kernel = ir.pair(node.kernel)
        self.stride = ir.pair(node.stride or node.kernel)
        self.padding = ir.pair(node.padding)

    @classmethod
    def build(cls, node, in_shape: Shape):
        return cls(node), node.out_shape(tuple(in_shape))

    def magnitude(self, m_BCHW: torch.Tensor) -> torch.Tensor:
        """Both pools have nonnegative weights and no bias: the pool of m bounds the terms."""
        return self.forward(m_BCHW)


@register_layer("maxpool")
class MaxPool(_Pool):
    backward = rules.maxpool_backward
    relaxed = True

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x_BCHW, self.kernel, self.stride, self.padding)

    def onnx_module(self, lower) -> nn.MaxPool2d:
        return nn.MaxPool2d(self.kernel, self.stride, self.padding)


@register_layer("avgpool")
class AvgPool(_Pool):
    """Average pooling; zero padding counts in the average (PyTorch's default)."""

    backward = rules.affine_backward  # fixed nonnegative weights: affine

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x_BCHW, self.kernel, self.stride, self.padding)

    def onnx_module(self, lower) -> nn.AvgPool2d:
        return nn.AvgPool2d(self.kernel, self.stride, self.padding)


@register_layer("normalize")
class Normalize(BoundLayer):
    """(x - mean) / std per channel; the first layer when the spec normalises.

    Inputs stay in [0, 1] pixel units, so eps is never rescaled. ``mean`` and ``std``
    are buffers (in the state dict, so exporters see them).
    """

    backward = rules.affine_backward

    def __init__(self, mean_C: torch.Tensor, std_C: torch.Tensor, ndim: int):
        super().__init__()
        view = (-1,) + (1,) * (ndim - 1)
        self.register_buffer("mean", mean_C.reshape(view))
        self.register_buffer("std", std_C.reshape(view))

    @classmethod
    def build(cls, node: ir.Normalize, in_shape: Shape):
        channels = in_shape[0]
        if len(node.mean) != len(node.std) or len(node.mean) not in (1, channels):
            raise TapscError(Diagnostic(
                code="normalize-channels",
                message=f"normalize has {len(node.mean)} means and {len(node.std)} stds "
                        f"but the input has {channels} channels",
                span=node.span,
                help=f"give one value or {channels} values for both mean and std"))
        mean = torch.tensor(node.mean, dtype=torch.float32)
        std = torch.tensor(node.std, dtype=torch.float32)
        return cls(mean, std, len(in_shape)), tuple(in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def magnitude(self, m: torch.Tensor) -> torch.Tensor:
        return (m + self.mean.abs()) / self.std.abs()

    def onnx_module(self, lower) -> ChannelAffine:
        """The exporter folds it into the first conv or linear, so boxes stay in pixel units."""
        std, mean = self.std.flatten(), self.mean.flatten()
        return ChannelAffine(1 / std, -mean / std)
