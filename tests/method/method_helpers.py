"""Small networks and batches for the method tests."""

from __future__ import annotations

import torch

from tapsc.compile import compile_network
from tapsc.language import ir


def make_spec(layers, input_shape=(1, 6, 6), split=0, init="default", phases=(ir.NaturalPhase(),)):
    if isinstance(split, int):
        split = ir.SplitByRelus(count=split)
    return ir.Spec(
        data=ir.Data(dataset="mnist"),
        model=ir.Model(input_shape=input_shape, layers=tuple(layers)),
        split=split,
        perturbation=ir.Perturbation(eps=0.1),
        method=ir.Method(phases=tuple(phases), initialization=init),
        optimizer=ir.Optimizer(epochs=1),
    )


def small_cnn(classes: int = 5, bn: bool = True):
    """conv-bn-relu, conv-bn-relu, flatten, linear-bn-relu, linear: 3 ReLUs."""
    norm = [ir.BatchNorm()] if bn else []
    return ([ir.Conv(out_channels=4, kernel=3, padding=1), *norm, ir.ReLU(),
             ir.Conv(out_channels=4, kernel=3, stride=2, padding=1), *norm, ir.ReLU(),
             ir.Flatten(), ir.Linear(out_features=16), *norm, ir.ReLU(), ir.Linear(out_features=classes)])


def build(split: int = 1, classes: int = 5, bn: bool = True, seed: int = 0, init: str = "default"):
    torch.manual_seed(seed)
    return compile_network(make_spec(small_cnn(classes, bn), split=split, init=init))


def batch(size: int = 8, classes: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((size, 1, 6, 6), generator=generator)
    y = torch.randint(0, classes, (size,), generator=generator)
    return x, y


SMALL_LATENT = ir.LatentAttack(steps=4)
SMALL_INPUT = ir.InputAttack(steps=3)
# One case per phase kind (ir.PHASE_KINDS): the registry-driven tests (a loss that trains, a
# golden loss value) read it, and fail naming any kind without one.
PHASE_CASES = [
    ir.NaturalPhase(), ir.PGDPhase(attack=SMALL_INPUT), ir.IBPPhase(shi_regularizer=0.5),
    ir.SABRPhase(attack=SMALL_INPUT, shi_regularizer=0.5), ir.TAPSPhase(attack=SMALL_LATENT),
    ir.STAPSPhase(attack=SMALL_LATENT, input_attack=SMALL_INPUT),
    ir.MTLIBPPhase(attack=SMALL_INPUT), ir.CCIBPPhase(attack=SMALL_INPUT), ir.ExpIBPPhase(attack=SMALL_INPUT),
    ir.CROWNIBPPhase(kappa_start=1.0, kappa_end=0.0),
]

