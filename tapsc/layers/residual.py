"""Residual block: y = body(x) + shortcut(x); an empty shortcut is the identity.

The interval of a sum is the sum of the intervals (sound, not always tight: it
ignores that body and shortcut see the same x). Certification does better: the block
declares its ``branches`` and each is back-substituted on its own (`tapsc.certify.graph`).
"""

from __future__ import annotations

import torch
from torch import nn

from tapsc.export.modules import ResidualAdd
from tapsc.language import ir
from tapsc.language.shapes import Shape
from tapsc.layers.base import BoundLayer, build_layers, register_layer, run_forward, run_interval


@register_layer("residual")
class Residual(BoundLayer):
    def __init__(self, body: list[BoundLayer], shortcut: list[BoundLayer]):
        super().__init__()
        self.body = nn.ModuleList(body)
        self.shortcut = nn.ModuleList(shortcut)

    @classmethod
    def build(cls, node: ir.Residual, in_shape: Shape):
        out_shape = node.out_shape(tuple(in_shape))  # raises ShapeError on mismatch
        body, _ = build_layers(node.body, in_shape)
        shortcut, _ = build_layers(node.shortcut, in_shape)
        return cls(body, shortcut), out_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_forward(self.body, x) + run_forward(self.shortcut, x)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor):
        body_lo, body_hi = run_interval(self.body, lo, hi)
        short_lo, short_hi = run_interval(self.shortcut, lo, hi)
        return body_lo + short_lo, body_hi + short_hi

    def branches(self) -> tuple[nn.ModuleList, nn.ModuleList]:
        return self.body, self.shortcut

    def onnx_module(self, lower) -> ResidualAdd:
        return ResidualAdd(lower(self.body), lower(self.shortcut))
