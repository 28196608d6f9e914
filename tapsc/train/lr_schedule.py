"""The learning rate of every epoch, as a pure function of the optimizer settings (torch-free).

- ``warmup W``: epoch e < W trains at lr * (e + 1) / (W + 1) (linear, every warm-up epoch
  below lr and above 0); the schedule then runs over the remaining epochs.
- ``schedule step``: lr * decay_factor ** (milestones at or before e); milestones are
  absolute epochs.
- ``schedule cosine``: lr * (1 + cos(pi * t / T)) / 2 with t = e - W and T = epochs - W:
  lr at the first epoch after warm-up, approaching 0 at the end.

Epochs are counted from 0. `tapsc.train.run.make_optimizer` applies it once per epoch.
"""

from __future__ import annotations

import math

from tapsc.language import ir


def learning_rate(opt: ir.Optimizer, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based)."""
    if epoch < opt.warmup:
        return opt.lr * (epoch + 1) / (opt.warmup + 1)
    if opt.schedule == "cosine":
        span = max(1, opt.epochs - opt.warmup)
        return opt.lr * (1 + math.cos(math.pi * (epoch - opt.warmup) / span)) / 2
    passed = sum(1 for milestone in opt.milestones if milestone <= epoch)
    return opt.lr * opt.decay_factor ** passed
