"""Augmentations from the spec, as torchvision transforms on [0, 1] image tensors.

Shapes: images are (C, H, W) float tensors in [0, 1]. There is no normalisation
here: the network's first layer normalises, so the perturbation stays in pixel units.
The random transforms draw from torch's global generator, which the runner seeds
per epoch; that is what makes a resumed run repeat the uninterrupted one. Which kinds
are random is the ``random`` class attribute of their IR node; test and validation
images only ever get the deterministic ones (`build_transform(..., evaluation=True)`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torchvision import transforms as T

from tapsc.errors import TapscError
from tapsc.language import ir
from tapsc.language.check import random_test_augmentation

Transform = Callable[[torch.Tensor], torch.Tensor]


def build_transform(augment: Sequence[ir.Node], evaluation: bool = False) -> Transform | None:
    """One callable applying the spec's augmentations in order; None when there are none.

    Args:
        augment: augmentation nodes of the IR, applied in order.
        evaluation: the transform of test or validation images. Random kinds (``random``
            set on their IR class) are then refused, whatever built the IR, so that
            evaluation, certification, analysis and export never see a random draw.

    Raises:
        TapscError: ``evaluation`` and ``augment`` holds a random kind (code
            ``random-test-augmentation``, one diagnostic per random step).
    """
    if evaluation:
        refused = [random_test_augmentation(step) for step in augment if step.random]
        if refused:
            raise TapscError(refused)
    steps = [_one(step) for step in augment]
    if not steps:
        return None
    return T.Compose(steps)


def _one(step: ir.Node) -> Transform:
    if isinstance(step, ir.RandomCrop):
        return T.RandomCrop(step.size, padding=step.padding)
    if isinstance(step, ir.HorizontalFlip):
        return T.RandomHorizontalFlip()
    if isinstance(step, ir.CenterCrop):
        return T.CenterCrop(step.size)
    raise AssertionError(f"no transform for augmentation {type(step).__name__}")


def output_shape(shape: tuple[int, ...], augment: Sequence[ir.Node]) -> tuple[int, ...]:
    """The (C, H, W) shape after ``augment`` (crops change it; flips do not)."""
    for step in augment:
        if isinstance(step, (ir.RandomCrop, ir.CenterCrop)):
            shape = (shape[0], step.size, step.size)
    return shape
