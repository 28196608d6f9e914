"""The plain torch modules tapsc's layers lower to for export, beside torch's own.

Each layer class's ``onnx_module`` (`tapsc.layers`) returns a plain torch module; most are
torch's (``nn.Conv2d``, ``nn.ReLU``...). These two have no torch equivalent: the exporter
(`tapsc.export.onnx`) folds every ``ChannelAffine`` into a neighbour or writes it as a diagonal
conv, and writes ``ResidualAdd`` as an ONNX ``Add``.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelAffine(nn.Module):
    """y = scale * x + shift per channel (dim 1); only lives until the exporter's `_materialize`."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.scale, self.shift = scale.detach().clone(), shift.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.reshape(view) + self.shift.reshape(view)


class ResidualAdd(nn.Module):
    """body(x) + shortcut(x), exported as an ONNX ``Add``."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)
