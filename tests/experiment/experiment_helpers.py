"""A spec small enough to sweep twice in a test: tests/run's TINY_SPEC shrunk to three
epochs (natural, IBP ramp, TAPS) on 160 digits, with a learning rate that gets it off the
ground in that time."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import invoke, write_file  # noqa: F401  (invoke is re-exported to the tests)

FAST_SPEC = """\
# A three-epoch TAPS run for the experiment tests.
data digits { batch 32; train_subset 160; test_subset 48; validation 32 }
model { input (1, 8, 8); flatten; linear(32); batchnorm; relu; linear(32); relu; linear(10) }
split relus_in_classifier = 1
perturbation linf { eps 0.05; schedule linear from epoch 1 to 2 }
method {
  init shi
  phase natural until epoch 1
  phase ibp with shi_regularizer 0.5 until epoch 2
  phase taps { attack pgd(steps = 3, multi) }
}
optimizer adam { lr 1e-2; epochs 3; seed 3 }
eval { metrics (natural, pgd, ibp, taps); attack pgd(steps = 5, restarts = 1, margin) }
"""

# Two points; the second --set holds commas inside parentheses and must stay one value.
SWEEP_SETS = ("--set", "method.taps.weight=1,5", "--set", "eval.metrics=(natural, pgd, ibp, taps, crown_ibp)")


def write_spec(folder: Path, text: str = FAST_SPEC, name: str = "fast.taps") -> Path:
    return write_file(folder, name, text)

