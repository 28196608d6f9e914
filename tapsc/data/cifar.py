"""CIFAR-10, read by torchvision's own pickle reader.

torchvision checks every batch file against the official archive's md5 before it
reads anything. tapsc keeps the reading code and drops only that checksum (the
subclass below sets the expected md5s to None, which torchvision treats as "the file
exists"): test suites write small batches in the same pickled format, which can
never match the official checksums. A damaged file then fails while unpickling,
and that is reported as an unreadable dataset.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from torchvision import datasets

from tapsc.data.base import ImageTensors, downloads_allowed, loader, missing_dataset, unreadable_dataset

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


class UncheckedCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR10 with the md5 checks reduced to existence checks."""

    train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


def _download(root: Path) -> None:
    reason = "downloads are off ($TAPSC_OFFLINE)"
    if downloads_allowed():
        try:
            with contextlib.redirect_stdout(sys.stderr):
                datasets.CIFAR10(str(root), train=True, download=True)  # verifies the archive
            return
        except Exception as error:
            reason = "download failed: " + str(error).strip().splitlines()[-1]
    folder = root / UncheckedCIFAR10.base_folder
    files = [name for name, _ in UncheckedCIFAR10.train_list + UncheckedCIFAR10.test_list]
    raise missing_dataset("CIFAR-10", folder, URL,
                          f"{folder}/<file> for {', '.join(files)}, batches.meta "
                          "(the archive's cifar-10-batches-py folder)", reason)


@loader("cifar10")
def load_cifar10(root: Path, train: bool) -> ImageTensors:
    """CIFAR-10 as (3, 32, 32) images in [0, 1]."""
    probe = UncheckedCIFAR10.__new__(UncheckedCIFAR10)
    probe.root = str(root)
    if not probe._check_integrity():
        _download(root)
    try:
        data = UncheckedCIFAR10(str(root), train=train, download=False)
    except Exception as error:
        raise unreadable_dataset("CIFAR-10", root / UncheckedCIFAR10.base_folder, error) from None
    images_NCHW = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
    return ImageTensors(images_NCHW, torch.as_tensor(data.targets))
