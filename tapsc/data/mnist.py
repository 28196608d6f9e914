"""MNIST and Fashion-MNIST, read by torchvision's own IDX readers.

torchvision expects ``<root>/<ClassName>/raw/<file>`` with the files uncompressed.
Two other layouts are bridged into that one under the tapsc cache (decompressing
``.gz`` files once), so the reading itself stays torchvision's:
- a flat folder of IDX files, ``<root>/train-images-idx3-ubyte[.gz]`` etc. -- the
  layout of the Debian package ``dataset-fashion-mnist`` in /usr/share/datasets;
- ``<root>/<ClassName>/raw/*.gz`` only (an interrupted torchvision download).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import shutil
import sys
from pathlib import Path

import torch
from torchvision import datasets

from tapsc.data.base import (
    ImageTensors,
    cache_home,
    downloads_allowed,
    loader,
    missing_dataset,
    unreadable_dataset,
)

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
URLS = {"MNIST": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "FashionMNIST": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"}


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _complete(folder: Path) -> bool:
    return all(_find(folder, name) is not None for name in FILES)


def _bridge(source: Path, cls_name: str) -> Path:
    """A torchvision root whose ``<cls_name>/raw`` holds ``source``'s files, uncompressed."""
    key = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    root = cache_home() / "bridge" / f"{cls_name}-{key}"
    raw = root / cls_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        target = raw / name
        if target.is_file():
            continue
        found = _find(source, name)
        partial = target.with_suffix(".partial")
        opener = gzip.open if found.suffix == ".gz" else open
        with opener(found, "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.replace(target)
    return root


def _torchvision_root(root: Path, cls_name: str, fallbacks: tuple[Path, ...]) -> Path | None:
    """A root that torchvision's class can read directly, bridging other layouts."""
    raw = root / cls_name / "raw"
    if all((raw / name).is_file() for name in FILES):
        return root
    for folder in (raw, root, *fallbacks):
        if _complete(folder):
            return _bridge(folder, cls_name)
    return None


def _load(cls: type, root: Path, train: bool, fallbacks: tuple[Path, ...] = ()) -> ImageTensors:
    name = cls.__name__
    usable = _torchvision_root(root, name, fallbacks) or _download(cls, root, train)
    try:
        data = cls(str(usable), train=train, download=False)
    except Exception as error:
        raise unreadable_dataset(name, usable / name / "raw", error) from None
    return ImageTensors(data.data.unsqueeze(1).contiguous(), torch.as_tensor(data.targets))


def _download(cls: type, root: Path, train: bool) -> Path:
    """Fetch with torchvision where the machine has network; otherwise say where files go."""
    name = cls.__name__
    reason = "downloads are off ($TAPSC_OFFLINE)"
    if downloads_allowed():
        try:
            with contextlib.redirect_stdout(sys.stderr):  # torchvision prints progress
                cls(str(root), train=train, download=True)
            return root
        except Exception as error:  # no network, a proxy, a full disk: all mean "not here"
            reason = "download failed: " + str(error).strip().splitlines()[-1]
    raw = root / name / "raw"
    raise missing_dataset(name, raw, URLS[name], f"{raw}/<file> for " + ", ".join(FILES), reason)


@loader("mnist")
def load_mnist(root: Path, train: bool) -> ImageTensors:
    """MNIST as (1, 28, 28) images in [0, 1]."""
    return _load(datasets.MNIST, root, train)


@loader("fashion-mnist")
def load_fashion_mnist(root: Path, train: bool) -> ImageTensors:
    """Fashion-MNIST as (1, 28, 28) images; falls back to the Debian package's files."""
    return _load(datasets.FashionMNIST, root, train, fallbacks=(SYSTEM_FASHION,))
