"""Writers for the real on-disk dataset formats, at toy sizes, for the loader tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """IDX (LeCun's format): 0, 0, type 0x08 (ubyte), ndim; big-endian int32 dims; the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    payload += struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_mnist(folder: Path, rng: np.random.Generator, n_train=12, n_test=7, compress=False):
    """IDX files for both splits in ``folder``; returns {train: (images, labels)}."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for train, n in ((True, n_train), (False, n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        image_file, label_file = MNIST_FILES[train]
        write_idx(folder / image_file, images, compress)
        write_idx(folder / label_file, labels, compress)
        written[train] = (images, labels)
    return written


def write_cifar10(root: Path, rng: np.random.Generator, per_batch=4, n_test=5):
    """cifar-10-batches-py with pickled batches (rows of 3072 bytes: R plane, G plane, B plane)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {True: ([], []), False: ([], [])}
    names = [(f"data_batch_{i}", True, per_batch) for i in range(1, 6)] + [("test_batch", False, n_test)]
    for name, train, n in names:
        rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(folder / name, "wb") as handle:
            pickle.dump({"batch_label": name, "data": rows, "labels": labels, "filenames": []}, handle)
        written[train][0].append(rows.reshape(n, 3, 32, 32))
        written[train][1].extend(labels)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"]}, handle)
    return {train: (np.concatenate(images), np.array(labels)) for train, (images, labels) in written.items()}


def write_tinyimagenet(root: Path, wnids=("n01443537", "n01629819", "n01641577"), per_class=2):
    """tiny-imagenet-200 layout with flat-coloured 64x64 JPEGs; returns {path: (colour, label)}."""
    from PIL import Image

    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colours = {}
    lines = []
    for label, wnid in enumerate(wnids):
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour = (40 * label + 20, 200 - 30 * i, 90)
            Image.new("RGB", (64, 64), colour).save(folder / f"{wnid}_{i}.JPEG")
            colours[("train", label, i)] = colour
        colour = (250 - 60 * label, 10, 30 * label)
        name = f"val_{label}.JPEG"
        Image.new("RGB", (64, 64), colour).save(base / "val" / "images" / name)
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
        colours[("val", label)] = colour
    # annotations in an order that differs from wnids.txt, as in the real file
    (base / "val" / "val_annotations.txt").write_text("\n".join(reversed(lines)) + "\n")
    return colours
