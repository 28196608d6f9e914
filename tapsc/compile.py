"""IR -> PyTorch: one ordered module list and three interpretations over it.

``compile_network(spec)`` builds a ``Network``: a single ``nn.ModuleList`` ``layers``
(a Normalize layer first when the spec normalises, so inputs are always [0, 1] pixels
and eps is never rescaled) plus an index ``split`` where the classifier starts. The
concrete, interval and adversarial graphs are traversals of that one list; there are
no parameter copies or aliases, so ``state_dict`` is a plain state dict.

BatchNorm order requirement (training mode): run the clean forward of a batch
(``forward`` or ``extractor``) before any interval or attack pass over it; those
passes reuse the recorded batch statistics (see ``tapsc.layers.batchnorm``).

Shape legend: B batch, K classes.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from tapsc.errors import Diagnostic, TapscError
from tapsc.language import ir
from tapsc.language.shapes import Shape, ShapeError, split_index
from tapsc.layers import LAYERS, BatchNorm, BoundLayer, Conv, Linear, build_layers, run_forward

__all__ = ["Network", "compile_network", "build_layers", "shi_initialize"]


class Network(nn.Module):
    """The compiled network: ``layers[:split]`` is the extractor, ``layers[split:]`` the classifier."""

    def __init__(self, layers: list[BoundLayer], split: int, input_shape: Shape, num_classes: int):
        super().__init__()
        if not 0 <= split <= len(layers):
            raise ValueError(f"split {split} outside [0, {len(layers)}]")
        self.layers = nn.ModuleList(layers)
        self.split = split
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes

    # ------------------------------------------------------------ concrete

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concrete logits (B, K) for inputs in [0, 1] pixel units."""
        return run_forward(self.layers, x)

    def forward_range(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Concrete forward through ``layers[start:end]``."""
        return run_forward(self.layers[start:end], x)

    def extractor(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_range(x, 0, self.split)

    def classifier(self, z: torch.Tensor) -> torch.Tensor:
        return self.forward_range(z, self.split, None)

    # ------------------------------------------------------------ interval

    def interval(self, lo: torch.Tensor, hi: torch.Tensor, start: int = 0, end: int | None = None):
        """Interval bounds (lo, hi) after ``layers[start:end]`` for the input box [lo, hi]."""
        for layer in self.layers[start:end]:
            lo, hi = layer.interval(lo, hi)
        return lo, hi

    def interval_trace(self, lo: torch.Tensor, hi: torch.Tensor, start: int = 0, end: int | None = None):
        """Like ``interval`` but returns the bounds after every layer of ``layers[start:end]``."""
        trace = []
        for layer in self.layers[start:end]:
            lo, hi = layer.interval(lo, hi)
            trace.append((lo, hi))
        return trace

    def extractor_box(self, lo: torch.Tensor, hi: torch.Tensor):
        """The latent box [z_lo, z_hi] of the input box under the extractor."""
        return self.interval(lo, hi, 0, self.split)

    def classifier_interval(self, z_lo: torch.Tensor, z_hi: torch.Tensor):
        return self.interval(z_lo, z_hi, self.split, None)

    # ------------------------------------------------------------ structure

    def relu_layers(self) -> list[int]:
        """Indices in ``layers`` of the top-level ReLU layers (activations, `ir.is_activation`)."""
        return [i for i, layer in enumerate(self.layers) if ir.is_activation(layer.kind)]

    def affine_layers(self) -> list[Conv | Linear]:
        """Every conv and linear layer, residual blocks included, in order."""
        return [m for m in self.modules() if isinstance(m, (Conv, Linear))]

    def batchnorm_layers(self) -> list[BatchNorm]:
        return [m for m in self.modules() if isinstance(m, BatchNorm)]

    @contextmanager
    def frozen_batchnorm(self, detach: bool = True) -> Iterator[None]:
        """Within the block, BatchNorm in training reuses the recorded clean-batch statistics
        and updates no running statistics. ``detach``: for attacks, which differentiate with
        respect to the input only; each BatchNorm's whole affine map is then a constant."""
        layers = self.batchnorm_layers()
        saved = [layer.stats_mode for layer in layers]
        for layer in layers:
            layer.set_stats_mode("reuse_detached" if detach else "reuse")
        try:
            yield
        finally:
            for layer, mode in zip(layers, saved):
                layer.set_stats_mode(mode)


def shi_initialize(network: Network) -> None:
    """Shi et al. (2021) IBP initialisation.

    Every conv/linear weight except the last layer's is redrawn from N(0, 2*pi / fan_in^2)
    (variance; std = sqrt(2*pi) / fan_in), which keeps box widths roughly constant over
    depth; biases keep their default initialisation.
    """
    affine = network.affine_layers()
    with torch.no_grad():
        for layer in affine[:-1]:
            layer.weight.normal_(0.0, math.sqrt(2 * math.pi) / layer.fan_in)


def compile_network(spec: ir.Spec) -> Network:
    """Build the ``Network`` for ``spec`` (seed torch before calling for reproducible weights).

    Raises:
        TapscError: when the model's shapes or its split do not fit.
    """
    model = spec.model
    layers: list[BoundLayer] = []
    shape: Shape = tuple(model.input_shape)
    if spec.data.normalize is not None:
        normalize, shape = LAYERS["normalize"].build(spec.data.normalize, shape)
        layers.append(normalize)
    try:
        body, shape = build_layers(model.layers, shape)
    except ShapeError as error:
        raise TapscError(Diagnostic(code="shape-mismatch", message=error.message, span=error.layer.span,
                                    help=error.help)) from None
    try:
        split = split_index(model, spec.split)
    except ValueError as error:  # only the split's own complaint: a layer's ValueError is a bug, not a split
        raise TapscError(Diagnostic(code="split-out-of-range", message=str(error), span=spec.split.span,
                                    help="choose a split at a top-level layer boundary")) from None
    if len(shape) != 1:
        raise TapscError(Diagnostic(code="output-not-flat", message=f"the model ends with shape {shape}, "
                                    "not a vector of class scores", help="end the model with `linear`"))
    layers.extend(body)
    network = Network(layers, split + (1 if spec.data.normalize is not None else 0), model.input_shape, shape[0])
    if spec.method.initialization == "shi":
        shi_initialize(network)
    return network
