"""Digits, the validation split, subsets and augmentation."""

from __future__ import annotations

import torch

from tapsc.data import load_dataset, load_validation
from tapsc.language import ir


def stacked(dataset):
    return (torch.stack([dataset[i][0] for i in range(len(dataset))]),
            torch.tensor([dataset[i][1] for i in range(len(dataset))]))


def test_digits_are_the_sklearn_images_scaled_and_split_fixed():
    from sklearn.datasets import load_digits

    data = ir.Data(dataset="digits")
    train_x, train_y = stacked(load_dataset(data, True))
    test_x, test_y = stacked(load_dataset(data, False))
    assert train_x.shape == (1437, 1, 8, 8) and test_x.shape == (360, 1, 8, 8)
    assert train_x.min() >= 0 and train_x.max() == 1.0
    # together the two parts are exactly the sklearn set (as multisets of (image, label))
    full = load_digits()
    want = sorted((tuple((img / 16).ravel().round(6)), int(t)) for img, t in zip(full.images, full.target))
    got = sorted((tuple(x.ravel().numpy().round(6)), int(y))
                 for x, y in zip(torch.cat([train_x, test_x]), torch.cat([train_y, test_y])))
    assert got == want
    assert torch.equal(stacked(load_dataset(data, False))[0], test_x)  # the same split every time


def test_validation_is_held_out_deterministically():
    data = ir.Data(dataset="digits", validation=137)
    train_x, _ = stacked(load_dataset(data, True))
    val_x, _ = stacked(load_validation(data))
    assert len(train_x) == 1300 and len(val_x) == 137
    assert torch.equal(val_x, stacked(load_validation(data))[0])
    full_x, _ = stacked(load_dataset(ir.Data(dataset="digits"), True))
    rows = {tuple(x.ravel().tolist()) for x in full_x}
    train_rows = [tuple(x.ravel().tolist()) for x in train_x]
    val_rows = [tuple(x.ravel().tolist()) for x in val_x]
    assert set(train_rows) | set(val_rows) <= rows
    assert len(train_rows) + len(val_rows) == len(full_x)
    assert load_validation(ir.Data(dataset="digits")) is None


def test_subsets_and_flat_shape():
    data = ir.Data(dataset="digits", train_subset=50, test_subset=20)
    assert len(load_dataset(data, True)) == 50
    test_set = load_dataset(data, False, shape=(64,))
    assert len(test_set) == 20 and test_set[0][0].shape == (64,)


def test_train_augment_applies_only_to_training():
    data = ir.Data(dataset="digits", train_augment=(ir.RandomCrop(size=8, padding=2), ir.HorizontalFlip()))
    plain = load_dataset(ir.Data(dataset="digits"), True)
    augmented = load_dataset(data, True)
    torch.manual_seed(0)
    changed = sum(not torch.equal(augmented[i][0], plain[i][0]) for i in range(50))
    assert changed > 25
    assert augmented[0][0].shape == (1, 8, 8)
    test_plain, test_aug = load_dataset(ir.Data(dataset="digits"), False), load_dataset(data, False)
    assert all(torch.equal(test_plain[i][0], test_aug[i][0]) for i in range(20))


def test_center_crop_shape():
    data = ir.Data(dataset="digits", test_augment=(ir.CenterCrop(size=6),))
    assert load_dataset(data, False)[0][0].shape == (1, 6, 6)
