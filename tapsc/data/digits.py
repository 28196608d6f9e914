"""scikit-learn's 8x8 handwritten digits: a small real dataset that ships with an
installed package, so the quickstart needs no download.

1797 images of (1, 8, 8) with pixel values 0..16, scaled to [0, 1] by 1/16. The
train/test split is fixed (seeded), 1437 train and 360 test, whatever the run's seed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tapsc.data.base import ImageTensors, loader

SPLIT_SEED = 20230  # fixed: the test set must not move with the run's seed
TEST_SIZE = 360


@loader("digits")
def load_digits(root: Path, train: bool) -> ImageTensors:
    """The train (1437) or test (360) part of the digits; ``root`` is unused."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images_NCHW = torch.tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    labels_N = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels_N), generator=torch.Generator().manual_seed(SPLIT_SEED))
    chosen = order[TEST_SIZE:] if train else order[:TEST_SIZE]
    chosen = chosen.sort().values
    return ImageTensors(images_NCHW[chosen].contiguous(), labels_N[chosen])
