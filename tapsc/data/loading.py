"""Datasets for training and evaluation, from the spec's ``data`` section.

Every dataset yields ``(image, label)``: a float image in [0, 1] shaped like the
model's input and an int label. There is no normalisation here (the network's first
layer normalises, so eps keeps its pixel meaning). One module per dataset family
registers a loader; this module adds what the spec asks on top: augmentation,
subsets and a validation split held out of the training set.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from tapsc.data import cifar, digits, mnist, tinyimagenet  # noqa: F401  (registers loaders)
from tapsc.data.base import DEFAULT_ROOTS, LOADERS
from tapsc.data.transforms import Transform, build_transform
from tapsc.errors import Diagnostic, TapscError
from tapsc.language import ir

__all__ = ["load_dataset", "load_validation", "dataset_root", "Prepared"]

VALIDATION_SEED = 7919  # fixed: the validation split must not move with the run's seed


class Prepared(Dataset):
    """A view of ``base`` at ``indices`` with a transform and an optional reshape."""

    def __init__(self, base: Dataset, indices: torch.Tensor, transform: Transform | None,
                 shape: tuple[int, ...] | None = None):
        self.base, self.indices, self.transform, self.shape = base, indices, transform, shape

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[int(self.indices[index])]
        if self.transform is not None:
            image = self.transform(image)
        if self.shape is not None:
            image = image.reshape(self.shape)
        return image, label


def dataset_root(data: ir.Data) -> Path:
    """The folder the dataset is read from: ``data.root`` or the dataset's default."""
    if data.root:
        return Path(data.root).expanduser()
    return DEFAULT_ROOTS[data.dataset]()


def _raw(data: ir.Data, train: bool) -> Dataset:
    return LOADERS[data.dataset](dataset_root(data), train)


def _split(data: ir.Data, n_train: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices): a seeded permutation, validation taken first."""
    if data.validation >= n_train:
        raise TapscError(Diagnostic(
            code="validation-too-large", span=data.span,
            message=f"data.validation = {data.validation} holds out the whole training set "
                    f"({n_train} samples)",
            help=f"use fewer than {n_train} validation samples"))
    if data.validation == 0:
        return torch.arange(n_train), torch.arange(0)
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    return order[data.validation:].sort().values, order[:data.validation].sort().values


def load_dataset(data: ir.Data, train: bool, shape: tuple[int, ...] | None = None) -> Dataset:
    """The training set (less the validation samples, ``train_augment`` applied) or the
    test set (``test_augment``, deterministic kinds only), each cut to its subset size.

    The test set yields the same tensors on every load and every pass, whatever the
    seed: a random kind in ``test_augment`` is refused here even when the IR was built
    without `tapsc.language.check` (evaluation, certification and export read this set).

    Args:
        data: the spec's data section.
        train: training set when True, test set when False.
        shape: reshape every image to this (e.g. the model's flat input shape).

    Raises:
        TapscError: the dataset is missing or unreadable (the message says where to put it),
            or ``train`` is False and ``test_augment`` holds a random kind
            (``random-test-augmentation``).
    """
    transform = build_transform(data.train_augment if train else data.test_augment, evaluation=not train)
    base = _raw(data, train)
    if train:
        indices, _ = _split(data, len(base))
        subset = data.train_subset
    else:
        indices, subset = torch.arange(len(base)), data.test_subset
    if subset is not None:
        indices = indices[:subset]
    return Prepared(base, indices, transform, shape)


def load_validation(data: ir.Data, shape: tuple[int, ...] | None = None) -> Dataset | None:
    """The ``data.validation`` samples held out of the training set (``test_augment``), or None.

    Raises:
        TapscError: as `load_dataset` for the test set (a random kind in ``test_augment``).
    """
    if data.validation == 0:
        return None
    transform = build_transform(data.test_augment, evaluation=True)
    base = _raw(data, True)
    _, indices = _split(data, len(base))
    return Prepared(base, indices, transform, shape)


def first(dataset: Dataset, count: int | None) -> Dataset:
    """The first ``count`` samples of ``dataset`` (all of them for None)."""
    if count is None or count >= len(dataset):
        return dataset
    return Subset(dataset, range(count))
