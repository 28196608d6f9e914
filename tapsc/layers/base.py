"""The layer registry and the base class every layer kind derives from.

A layer kind's torch side is one small ``nn.Module`` class holding every interpretation of
the kind: ``forward(x)`` (concrete), ``interval(lo, hi)`` (interval arithmetic, IBP),
``magnitude(m)`` (what certification's rounding-error bounds scale with), ``backward`` (the
CROWN back-substitution rule, `tapsc.certify.rules`) with ``relaxed``, and ``onnx_module``
(the plain torch module it exports as, `tapsc.export.onnx`). Its torch-free side (positional
arguments, shape rule, "is an activation") is the IR class of the same kind (`tapsc.language.ir`), which
the IR cannot take from here without importing torch. Kinds are registered under their IR
keyword with ``@register_layer("conv")``; the compiler, certification and the exporter look
them up in ``LAYERS`` or read the layer's class, never by name mangling, and
tests/compile/test_layer_kinds.py checks every registered kind has every rule.

Soundness: every ``interval`` returns bounds that contain ``forward(x)`` for every ``x``
in the input box, exactly in real arithmetic. Monotone kinds (relu, pools, flatten,
normalize, per-channel affine batchnorm) are also exactly sound in floating point,
because rounding is monotone. Conv and linear use the centre/radius form, whose
accumulated rounding can move a bound by a few float32 ulps of ``|W|(|c| + r)``.
Certification does not rely on either: it adds a bound on every rounding error, computed
from each layer's ``magnitude`` (`tapsc.certify.rounding`).

Shape legend: B batch, C channels, H height, W width, D features.
"""

from __future__ import annotations

from typing import Callable, ClassVar, TypeVar

import torch
from torch import nn

from tapsc.language import ir
from tapsc.language.shapes import Shape

LAYERS: dict[str, type["BoundLayer"]] = {}

L = TypeVar("L", bound=type["BoundLayer"])


def register_layer(kind: str) -> Callable[[L], L]:
    """Register a layer class under its IR ``kind`` (e.g. ``"conv"``)."""

    def decorate(cls: L) -> L:
        if kind in LAYERS:
            raise ValueError(f"layer kind {kind!r} registered twice ({LAYERS[kind].__name__}, {cls.__name__})")
        LAYERS[kind] = cls
        cls.kind = kind
        return cls

    return decorate


class BoundLayer(nn.Module):
    """One layer with its concrete, interval, certification and export interpretations.

    Subclasses implement ``build``, ``forward`` and ``magnitude``, and declare:

    - ``backward(A_BSY, lo_BX, hi_BX) -> (A_BSX, bias_BS, error_BS)``: the back-substitution
      rule, usually one of `tapsc.certify.rules` assigned as a class attribute
      (``backward = rules.affine_backward``), with ``relaxed`` set when it relaxes the layer
      over its input box (CROWN then tightens that box); a container (residual) declares
      ``branches()`` instead, and certification bounds each branch;
    - ``onnx_module(lower) -> nn.Module | None``: the plain torch module the exporter writes
      (None: nothing, the identity); ``lower(layers)`` lowers a nested sequence.

    There are no defaults for these: a kind without one fails the completeness test, and a
    layer without one is a clear error in certification or export. The default ``interval``
    applies ``forward`` to both bounds, which is sound (and tight) for monotone non-decreasing
    maps; other kinds override it.
    """

    kind: str = ""
    relaxed: ClassVar[bool] = False  # whether ``backward`` relaxes the layer over its input box (relu, maxpool)
    # How the layer meets autocast: "lowers" (autocast runs it in the low-precision dtype,
    # casting its input first: conv, linear), "reshapes" (moves values without arithmetic),
    # or "other". The latent attack uses it to hold its differentiated iterate in the dtype
    # the classifier would cast it to anyway (tapsc.method.latent_attack.attack_input_dtype).
    autocast: str = "other"

    @classmethod
    def build(cls, node: ir.Node, in_shape: Shape) -> tuple["BoundLayer", Shape]:
        """Create the layer for IR ``node`` taking inputs of ``in_shape`` (no batch dim)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds on the output over the box [lo, hi] (monotone default)."""
        return self.forward(lo), self.forward(hi)

    def magnitude(self, m: torch.Tensor) -> torch.Tensor:
        """Elementwise bound, for every x with |x| <= m, on |y| and on the absolute values of
        the terms each output sums (|J| m + |f0| for an affine y = J x + f0). Certification's
        rounding error bounds scale with it (`tapsc.certify.rounding`). Every kind declares
        its own: there is no default that could be silently wrong."""
        raise NotImplementedError(f"layer kind {self.kind!r} declares no magnitude rule")

    def branches(self) -> tuple[nn.ModuleList, ...]:
        """The layer sequences whose outputs this layer sums (residual: body, shortcut); a leaf
        layer has none."""
        return ()


def build_layers(layers_ir: tuple[ir.Node, ...], in_shape: Shape) -> tuple[list[BoundLayer], Shape]:
    """Build registered layers for a sequence of IR nodes; returns them and the output shape."""
    built = []
    shape = tuple(in_shape)
    for node in layers_ir:
        cls = LAYERS.get(node.kind)
        if cls is None:
            raise KeyError(f"no layer class registered for kind {node.kind!r} (known: {sorted(LAYERS)})")
        layer, shape = cls.build(node, shape)
        built.append(layer)
    return built, shape


def run_forward(layers, x: torch.Tensor) -> torch.Tensor:
    """Concrete forward through a sequence of layers."""
    for layer in layers:
        x = layer(x)
    return x


def run_interval(layers, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval forward through a sequence of layers."""
    for layer in layers:
        lo, hi = layer.interval(lo, hi)
    return lo, hi

