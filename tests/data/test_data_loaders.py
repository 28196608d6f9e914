"""Each loader reads files the test writes in the dataset's real on-disk format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_formats import write_cifar10, write_mnist, write_tinyimagenet

from tapsc.data import load_dataset
from tapsc.data.mnist import SYSTEM_FASHION
from tapsc.errors import TapscError
from tapsc.language import ir


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TAPSC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TAPSC_OFFLINE", "1")


def stacked(dataset):
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    return images, labels


@pytest.mark.parametrize("layout", ["torchvision", "flat-gz"])
@pytest.mark.parametrize("name, cls_name", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_datasets_read_exact_pixels(tmp_path, layout, name, cls_name):
    root = tmp_path / "data"
    folder = root / cls_name / "raw" if layout == "torchvision" else root
    written = write_mnist(folder, np.random.default_rng(1), compress=layout == "flat-gz")
    for train in (True, False):
        images, labels = stacked(load_dataset(ir.Data(dataset=name, root=str(root)), train))
        want_images, want_labels = written[train]
        assert images.shape == (len(want_labels), 1, 28, 28)
        assert torch.equal(images, torch.from_numpy(want_images).float().unsqueeze(1) / 255)
        assert labels.tolist() == want_labels.tolist()


def test_cifar10_reads_pickled_batches_channel_first(tmp_path):
    written = write_cifar10(tmp_path, np.random.default_rng(2))
    for train in (True, False):
        images, labels = stacked(load_dataset(ir.Data(dataset="cifar10", root=str(tmp_path)), train))
        want_images, want_labels = written[train]
        assert images.shape == (len(want_labels), 3, 32, 32)
        assert torch.equal(images, torch.from_numpy(want_images).float() / 255)
        assert labels.tolist() == want_labels.tolist()


def test_tinyimagenet_reads_train_folders_and_val_annotations(tmp_path):
    colours = write_tinyimagenet(tmp_path)
    data = ir.Data(dataset="tinyimagenet", root=str(tmp_path))
    images, labels = stacked(load_dataset(data, True))
    assert images.shape == (6, 3, 64, 64)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]  # wnids.txt order
    centre = images[:, :, 32, 32] * 255
    want = torch.tensor([colours[("train", label, i)] for label in range(3) for i in range(2)], dtype=torch.float32)
    assert torch.allclose(centre, want, atol=4)  # JPEG is lossy even on flat colours
    val_images, val_labels = stacked(load_dataset(data, False))
    assert sorted(val_labels.tolist()) == [0, 1, 2]
    for image, label in zip(val_images, val_labels.tolist()):
        assert torch.allclose(image[:, 32, 32] * 255, torch.tensor(colours[("val", label)], dtype=torch.float32),
                              atol=4)


def test_tinyimagenet_crops_from_the_spec(tmp_path):
    write_tinyimagenet(tmp_path)
    data = ir.Data(dataset="tinyimagenet", root=str(tmp_path), train_augment=(ir.RandomCrop(size=56),),
                   test_augment=(ir.CenterCrop(size=56),))
    assert load_dataset(data, True)[0][0].shape == (3, 56, 56)
    assert load_dataset(data, False)[0][0].shape == (3, 56, 56)


@pytest.mark.parametrize("name, where", [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw"),
                                         ("cifar10", "cifar-10-batches-py"),
                                         ("tinyimagenet", "tiny-imagenet-200")])
def test_missing_dataset_names_the_path_and_the_url(tmp_path, monkeypatch, name, where):
    monkeypatch.setattr("tapsc.data.mnist.SYSTEM_FASHION", tmp_path / "no-system-copy")
    with pytest.raises(TapscError) as caught:
        load_dataset(ir.Data(dataset=name, root=str(tmp_path)), True)
    diagnostic = caught.value.diagnostics[0]
    assert diagnostic.code == "missing-dataset"
    assert str(tmp_path / where) in diagnostic.message
    assert "http" in diagnostic.help


def test_corrupt_idx_file_is_a_clear_error(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    write_mnist(folder, np.random.default_rng(3))
    (folder / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    with pytest.raises(TapscError) as caught:
        load_dataset(ir.Data(dataset="mnist", root=str(tmp_path)), True)
    assert caught.value.diagnostics[0].code == "unreadable-dataset"


@pytest.mark.skipif(not (SYSTEM_FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_falls_back_to_the_debian_package(tmp_path):
    test_set = load_dataset(ir.Data(dataset="fashion-mnist", root=str(tmp_path / "empty"), test_subset=50), False)
    images, labels = stacked(test_set)
    assert len(test_set) == 50 and images.shape == (50, 1, 28, 28)
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.5
    assert set(labels.tolist()) <= set(range(10)) and len(set(labels.tolist())) > 3
