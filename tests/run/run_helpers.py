"""A tiny spec on the 8x8 digits and helpers to run the CLI in-process."""

from __future__ import annotations

from pathlib import Path

import torch
from cli_helpers import invoke, write_file  # noqa: F401  (invoke is re-exported to the tests)

TINY_SPEC = """\
# A tiny TAPS run for the tests: natural, IBP ramp, TAPS.
data digits { batch 32; train_subset 192; test_subset 64; validation 64 }
model { input (1, 8, 8); flatten; linear(32); batchnorm; relu; linear(32); relu; linear(10) }
split relus_in_classifier = 1
perturbation linf { eps 0.05; schedule linear from epoch 1 to 2 }
method {
  init shi
  phase natural until epoch 1
  phase ibp with shi_regularizer 0.5 until epoch 2
  phase taps { attack pgd(steps = 3, multi) }
}
optimizer adam { lr 2e-3; decay 0.5 at (3); epochs 4; seed 3 }
eval { metrics (natural, pgd, ibp, taps, crown_ibp); attack pgd(steps = 5, restarts = 1, margin) }
"""


def write_spec(folder: Path, text: str = TINY_SPEC, name: str = "tiny.taps") -> Path:
    return write_file(folder, name, text)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"
