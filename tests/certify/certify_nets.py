"""Small random networks with every layer kind, built through the real compiler."""

from __future__ import annotations

import torch

from tapsc.compile import Network, compile_network
from tapsc.language import ir

IMAGE_SHAPE = (2, 6, 6)


def image_layers(width: int = 4, classes: int = 3) -> tuple:
    """conv, batchnorm, relu, residual (body with batchnorm+relu, conv shortcut and identity
    shortcut), avgpool, maxpool, flatten, linear: every layer kind once or more."""
    return (
        ir.Conv(out_channels=width, kernel=3, padding=1),
        ir.BatchNorm(),
        ir.ReLU(),
        ir.Residual(body=(ir.Conv(out_channels=width, kernel=3, padding=1), ir.BatchNorm(), ir.ReLU(),
                          ir.Conv(out_channels=width, kernel=3, padding=1))),
        ir.BatchNorm(),
        ir.ReLU(),
        ir.MaxPool(kernel=2),
        ir.Residual(body=(ir.Conv(out_channels=width, kernel=3, stride=1, padding=1), ir.ReLU()),
                    shortcut=(ir.Conv(out_channels=width, kernel=1),)),
        ir.AvgPool(kernel=3, stride=1, padding=1),
        ir.ReLU(),
        ir.MaxPool(kernel=3, stride=1, padding=1),
        ir.Flatten(),
        ir.Linear(out_features=8),
        ir.BatchNorm(),
        ir.ReLU(),
        ir.Linear(out_features=classes),
    )


def make_spec(layers: tuple, input_shape=IMAGE_SHAPE, normalize: bool = True, eps: float = 0.05) -> ir.Spec:
    channels = input_shape[0]
    norm = ir.Normalize(mean=tuple(0.3 + 0.1 * c for c in range(channels)),
                        std=tuple(0.2 + 0.05 * c for c in range(channels))) if normalize else None
    return ir.Spec(
        data=ir.Data(dataset="digits", normalize=norm),
        model=ir.Model(input_shape=input_shape, layers=layers),
        perturbation=ir.Perturbation(eps=eps),
        method=ir.Method(phases=(ir.NaturalPhase(),)),
        optimizer=ir.Optimizer(epochs=1),
        eval=ir.Eval(attack=ir.InputAttack(steps=20, restarts=2, loss="margin")),
    )


def randomize(network: Network, seed: int) -> Network:
    """Random weights and BatchNorm statistics (negative scales included), eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            if tensor.dtype != torch.float32 or name.endswith(("mean", "std")) and "running" not in name:
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
    return network.eval()


def random_network(seed: int = 0, layers: tuple | None = None, **spec_args) -> Network:
    torch.manual_seed(seed)
    spec = make_spec(layers if layers is not None else image_layers(), **spec_args)
    return randomize(compile_network(spec), seed)
