"""Shared pieces of the dataset loaders: in-memory image tensors, the registry of
loaders, default locations and the "missing dataset" error.

Shapes: ``images_NCHW`` holds N images of (C, H, W); uint8 images are scaled to
[0, 1] by 1/255 when read, float images are stored already in [0, 1].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from tapsc.data.catalogue import CATALOGUE
from tapsc.errors import Diagnostic, TapscError

Loader = Callable[[Path, bool], Dataset]
LOADERS: dict[str, Loader] = {}
DEFAULT_ROOTS: dict[str, Callable[[], Path]] = {}


def loader(name: str, default_root: Callable[[], Path] | None = None):
    """Register ``fn(root, train) -> Dataset`` as the loader of dataset ``name``, which
    must be in the catalogue (tapsc/data/catalogue.py: its shape, classes and range)."""
    if name not in CATALOGUE:
        raise ValueError(f"dataset {name!r} is not in tapsc.data.catalogue.CATALOGUE; describe it there first")

    def register(fn: Loader) -> Loader:
        LOADERS[name] = fn
        DEFAULT_ROOTS[name] = default_root or data_home
        return fn

    return register


def data_home() -> Path:
    """Where datasets live when the spec names no root ($TAPSC_DATA_ROOT overrides)."""
    return Path(os.environ.get("TAPSC_DATA_ROOT", "~/.cache/tapsc/data")).expanduser()


def cache_home() -> Path:
    """Where tapsc keeps files it derives from datasets ($TAPSC_CACHE_DIR overrides)."""
    return Path(os.environ.get("TAPSC_CACHE_DIR", "~/.cache/tapsc")).expanduser()


def downloads_allowed() -> bool:
    """False when $TAPSC_OFFLINE is set: a missing dataset fails at once, without a try."""
    return os.environ.get("TAPSC_OFFLINE", "") in ("", "0")


class ImageTensors(Dataset):
    """N images held in memory as one (N, C, H, W) tensor, with integer labels."""

    def __init__(self, images_NCHW: torch.Tensor, labels_N: torch.Tensor):
        assert images_NCHW.dim() == 4 and len(images_NCHW) == len(labels_N)
        self.images_NCHW = images_NCHW
        self.labels_N = labels_N.long()

    def __len__(self) -> int:
        return len(self.labels_N)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image_CHW = self.images_NCHW[index]
        if image_CHW.dtype == torch.uint8:
            image_CHW = image_CHW.float().div_(255.0)
        return image_CHW, int(self.labels_N[index])


def missing_dataset(name: str, where: Path, url: str, layout: str, reason: str = "") -> TapscError:
    """The error for a dataset that is not on disk: where to put which files, and from where."""
    detail = f" ({reason})" if reason else ""
    return TapscError(Diagnostic(
        code="missing-dataset",
        message=f"{name} was not found at {where}{detail}",
        help=f"download it from {url} and place the files as {layout}, "
             "or point `data.root` (or `--data-root`) at a folder that holds them",
    ))


def unreadable_dataset(name: str, where: Path, error: Exception) -> TapscError:
    """The error for dataset files that exist but cannot be read."""
    return TapscError(Diagnostic(
        code="unreadable-dataset",
        message=f"{name} files at {where} could not be read: {error}",
        help="the files may be truncated or in another format; delete them and fetch them again",
    ))
