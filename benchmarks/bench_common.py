"""Shared pieces of the benchmarks: specs through the real language, and the training step.

Every network is built from a spec string that calls the library block ``cnn7`` and goes
through the whole language -> IR -> compile path (``load_spec_text``, ``compile_network``).
Timing and peak memory live in ``measure.py`` (torch only, so the peer drivers share them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from measure import median, peak_memory_bytes, synchronize, timed  # noqa: F401  (re-exported to the benchmarks)

from tapsc.language.spec import load_spec_text

CIFAR_NORMALIZE = "normalize mean (0.4914, 0.4822, 0.4465) std (0.2470, 0.2435, 0.2616)"


@dataclass(frozen=True)
class Shape:
    """A dataset shape: the data section of the spec, the input shape, the batch and eps."""

    name: str
    settings: str  # data settings besides the batch
    input_shape: tuple[int, int, int]
    batch: int
    eps: str  # as spec text


SHAPES = {
    "cifar10": Shape("cifar10", CIFAR_NORMALIZE, (3, 32, 32), 128, "8/255"),
    "mnist": Shape("mnist", "", (1, 28, 28), 256, "0.3"),
}


def spec_text(shape: Shape, batch: int, phase: str, relus_in_classifier: int = 0, width: int = 64) -> str:
    """A CNN7 spec with one phase, as a user would write it."""
    settings = f"{shape.settings}; " if shape.settings else ""
    return (f"data {shape.name} {{ {settings}batch {batch} }}\n"
            f"model cnn7(classes = 10, width = {width})\n"
            f"split relus_in_classifier = {relus_in_classifier}\n"
            f"perturbation linf {{ eps {shape.eps} }}\n"
            f"method {{\n  init shi\n  phase {phase}\n}}\n"
            f"optimizer adam {{ lr 5e-4; clip 10; epochs 1; seed 0 }}\n")


def load(text: str):
    return load_spec_text(text, filename="<benchmark>")


def optimizer_step(network, optimizer, loss_fn, device_type: str, amp: bool, clip: float) -> None:
    """One full training step as the runner takes it: zero grads, the loss (bf16 autocast when
    ``amp``), backward, gradient clipping, the optimizer's update."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        loss = loss_fn()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), clip)
    optimizer.step()
