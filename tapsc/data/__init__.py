"""Datasets for training and evaluation, from the spec's ``data`` section.

`tapsc.data.catalogue` (torch-free) lists each dataset's shape, classes and pixel
range; `tapsc.data.loading` (torch) loads them. The loading names are imported on
first use, so that reading the catalogue (as `tapsc check` does) never imports torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_dataset", "load_validation", "dataset_root", "Prepared"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tapsc.data import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'tapsc.data' has no attribute {name!r}")
