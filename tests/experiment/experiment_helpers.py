"""A spec small enough to sweep twice in a test: tests/run's TINY_SPEC shrunk to three
epochs (natural, IBP ramp, TAPS) on 160 digits, with a learning rate that gets it off the
ground in that time."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import digits_taps_spec, invoke, write_file  # noqa: F401  (invoke is re-exported to the tests)

FAST_SPEC = digits_taps_spec(
    "batch 32; train_subset 160; test_subset 48; validation 32",
    "lr 1e-2; epochs 3; seed 3",
    "eval { metrics (natural, pgd, ibp, taps); attack pgd(steps = 5, restarts = 1, margin) }",
    comment="A three-epoch TAPS run for the experiment tests.")

# Two points; the second --set holds commas inside parentheses and must stay one value.
SWEEP_SETS = ("--set", "method.taps.weight=1,5", "--set", "eval.metrics=(natural, pgd, ibp, taps, crown_ibp)")


def write_spec(folder: Path, text: str = FAST_SPEC, name: str = "fast.taps") -> Path:
    return write_file(folder, name, text)

