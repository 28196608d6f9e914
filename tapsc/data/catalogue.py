"""What tapsc knows about each dataset before loading it: image shape, class count and
pixel range. Torch-free: the IR (its dataset names), lowering (the default input shape),
the checks (`tapsc check` compares the spec with these facts) and the loaders (each
registers under a name listed here and yields images of this shape) all read this one
table, so a dataset is described once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about one dataset as tapsc serves it (images in [low, high], before any crop)."""

    name: str
    shape: tuple[int, int, int]  # (C, H, W)
    classes: int
    value_range: tuple[float, float] = (0.0, 1.0)  # every pixel value; eps is in these units

    @property
    def range_width(self) -> float:
        return self.value_range[1] - self.value_range[0]


CATALOGUE: dict[str, DatasetInfo] = {info.name: info for info in (
    DatasetInfo("mnist", (1, 28, 28), 10),
    DatasetInfo("fashion-mnist", (1, 28, 28), 10),
    DatasetInfo("cifar10", (3, 32, 32), 10),
    DatasetInfo("tinyimagenet", (3, 64, 64), 200),
    DatasetInfo("digits", (1, 8, 8), 10),  # scikit-learn's 8x8 digits, scaled from 0..16 to [0, 1]
)}
DATASET_NAMES: tuple[str, ...] = tuple(CATALOGUE)
