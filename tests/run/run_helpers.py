"""A tiny spec on the 8x8 digits and helpers to run the CLI in-process."""

from __future__ import annotations

from pathlib import Path

import torch
from cli_helpers import digits_taps_spec, invoke, write_file  # noqa: F401  (invoke is re-exported to the tests)

TINY_SPEC = digits_taps_spec(
    "batch 32; train_subset 192; test_subset 64; validation 64",
    "lr 2e-3; decay 0.5 at (3); epochs 4; seed 3",
    "eval { metrics (natural, pgd, ibp, taps, crown_ibp); attack pgd(steps = 5, restarts = 1, margin) }",
    comment="A tiny TAPS run for the tests: natural, IBP ramp, TAPS.")


def write_spec(folder: Path, text: str = TINY_SPEC, name: str = "tiny.taps") -> Path:
    return write_file(folder, name, text)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"
