"""One case per layer kind: the table every registry-driven layer test reads.

Each registered kind (`tapsc.layers.LAYERS`) has an IR node and an input shape (per sample)
here; tests/compile/test_layer_kinds.py fails on a kind without one. The soundness tests
(tests/compile/test_layer_soundness.py: intervals in training and eval mode;
tests/certify/test_rule_soundness.py: certification's interval, magnitude and backward rules
and every bound method's margins), the completeness tests (shape rule, parameter count,
printer round trip, ONNX form, training's CROWN-IBP) all take their layer from it. Adding a
kind is one entry.
"""

from __future__ import annotations

import torch
from torch import nn

from tapsc.language import ir

LAYER_CASES: dict[str, tuple[ir.Node | None, tuple[int, ...]]] = {
    # non-square windows (square ones: the residual case and the torch cases of rule_checks)
    "conv": (ir.Conv(out_channels=3, kernel=(3, 2), stride=(2, 1), padding=(1, 0)), (2, 5, 6)),
    "linear": (ir.Linear(out_features=5), (6,)),
    "batchnorm": (ir.BatchNorm(), (3, 3, 3)),
    "relu": (ir.ReLU(), (2, 3, 3)),
    "leaky_relu": (ir.LeakyReLU(slope=0.1), (2, 3, 3)),
    "flatten": (ir.Flatten(), (2, 3, 3)),
    "avgpool": (ir.AvgPool(kernel=(3, 2), stride=(2, 1), padding=(1, 0)), (2, 5, 5)),
    "maxpool": (ir.MaxPool(kernel=(2, 3), stride=(1, 2), padding=(1, 1)), (2, 4, 5)),
    "normalize": (ir.Normalize(mean=(0.5, -0.2), std=(0.3, 0.1)), (2, 3, 3)),  # the data section's
    "identity": (None, (5,)),  # an empty residual shortcut; no IR node
    "residual": (ir.Residual(body=(ir.Conv(out_channels=2, kernel=3, padding=1), ir.BatchNorm(), ir.ReLU()),
                             shortcut=(ir.Conv(out_channels=2, kernel=1),)), (2, 4, 4)),
}


def randomize(layer: nn.Module, seed: int) -> nn.Module:
    """Random parameters and BatchNorm statistics (some scales negative, variances positive);
    normalisation means and stds are kept. Returns ``layer``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(layer.named_parameters()) + list(layer.named_buffers()):
            if not tensor.is_floating_point() or name.endswith(("mean", "std")) and "running" not in name:
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            tensor.copy_(noise.abs() + 0.2 if name.endswith("running_var") else noise)
    return layer
