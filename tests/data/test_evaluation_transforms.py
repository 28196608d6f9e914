"""Test and validation images are never transformed at random, whatever built the IR.

Which augmentation kinds are random is the ``random`` attribute of their IR class; the
tests here iterate those classes, so a new kind is covered without editing them.
"""

from __future__ import annotations

import pytest
import torch

from tapsc.data import load_dataset, load_validation
from tapsc.data.transforms import build_transform
from tapsc.errors import TapscError
from tapsc.language import ir

RANDOM = [cls for cls in ir.AUGMENTATION_CLASSES if cls.random]
DETERMINISTIC = [cls for cls in ir.AUGMENTATION_CLASSES if not cls.random]


def example(cls: type[ir.Node]) -> ir.Node:
    """A node of ``cls`` with every required size 6 (fits digits' 8x8 images)."""
    return cls(**{name: 6 for name, field in cls.model_fields.items() if field.is_required()})


def stacked(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def test_there_are_both_kinds():
    assert RANDOM and DETERMINISTIC
    assert ir.EVALUATION_AUGMENTATIONS == tuple(c.model_fields["kind"].default for c in DETERMINISTIC)


@pytest.mark.parametrize("cls", ir.AUGMENTATION_CLASSES, ids=lambda c: c.__name__)
def test_declared_randomness_matches_the_transform(cls: type[ir.Node]):
    """The ``random`` flag is what the built transform does: 20 seeds, one image."""
    transform = build_transform([example(cls)])
    image = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(3))
    outputs = set()
    for seed in range(20):
        torch.manual_seed(seed)
        outputs.add(tuple(transform(image).flatten().tolist()))
    assert (len(outputs) > 1) == cls.random


@pytest.mark.parametrize("cls", RANDOM, ids=lambda c: c.__name__)
def test_a_random_test_transform_forced_into_the_ir_is_refused(cls: type[ir.Node]):
    """An IR built without `tapsc check` cannot bring a random draw into evaluation."""
    node = example(cls)
    data = ir.Data(dataset="digits", validation=10, test_augment=(ir.CenterCrop(size=8), node))
    for load in (lambda: load_dataset(data, False), lambda: load_validation(data),
                 lambda: build_transform(data.test_augment, evaluation=True)):
        with pytest.raises(TapscError) as info:
            load()
        (diagnostic,) = info.value.diagnostics
        assert diagnostic.code == "random-test-augmentation" and f"`{node.kind}`" in diagnostic.message
        assert all(f"`{kind}`" in diagnostic.help for kind in ir.EVALUATION_AUGMENTATIONS)
    assert len(load_dataset(ir.Data(dataset="digits", train_augment=(node,)), True)) > 0  # training: fine


def test_the_test_split_is_the_same_on_every_load_and_pass_whatever_the_seed():
    every = tuple(example(cls) for cls in DETERMINISTIC)
    random_train = tuple(example(cls) for cls in RANDOM)
    data = ir.Data(dataset="digits", validation=50, test_subset=60, train_subset=60,
                   train_augment=random_train, test_augment=every)
    torch.manual_seed(0)
    first = load_dataset(data, False)
    test_a, val_a = stacked(first), stacked(load_validation(data))
    torch.manual_seed(1)
    test_b, test_again, val_b = stacked(load_dataset(data, False)), stacked(first), stacked(load_validation(data))
    assert torch.equal(test_a, test_b) and torch.equal(test_a, test_again) and torch.equal(val_a, val_b)
    # the seed does move the training set's random transforms: the comparison above is not vacuous
    torch.manual_seed(0)
    train_a = stacked(load_dataset(data, True))
    torch.manual_seed(1)
    assert not torch.equal(train_a, stacked(load_dataset(data, True)))
