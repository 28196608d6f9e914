"""The eps schedule: a per-iteration value from the schedule IR and the target eps.

Time is measured in fractional epochs t = epoch + batch_index / batches_per_epoch
(equivalently in iterations). With s = start_epoch, e = end_epoch:

- t < s: 0 (plain training).
- "smooth" (Shi et al. 2021): with m = s + 0.25 (e - s), eps = a (t - s)^4 on [s, m),
  then linear to eps_target at e with the slope continuous at m. The linear part spans
  3 (m - s), so eps_target = a d^4 + 4 a d^3 * 3 d = 13 a d^4 with d = m - s: hence
  eps(m) = eps_target / 13.
- "linear": eps_target (t - s) / (e - s).
- "constant": eps_target from s on.
- t >= e (or e <= s): eps_target.
"""

from __future__ import annotations

from tapsc.language import ir

SMOOTH_MID = 0.25
SMOOTH_POWER = 4


def _smooth(fraction: float) -> float:
    """The smooth ramp on [0, 1] (fraction of the ramp done), scaled to end at 1."""
    if fraction < SMOOTH_MID:
        d = SMOOTH_MID
        a = 1.0 / (13 * d ** SMOOTH_POWER)
        return a * fraction ** SMOOTH_POWER
    at_mid = 1.0 / 13
    return at_mid + (1 - at_mid) * (fraction - SMOOTH_MID) / (1 - SMOOTH_MID)


SHAPES = {
    "smooth": _smooth,
    "linear": lambda fraction: fraction,
    "constant": lambda fraction: 1.0,
}


def eps_at(schedule: ir.EpsSchedule, eps_target: float, epoch: int, batch_index: int = 0,
           batches_per_epoch: int = 1) -> float:
    """eps for iteration ``batch_index`` of ``epoch`` (both from 0)."""
    t = epoch + batch_index / batches_per_epoch
    start, end = schedule.start_epoch, schedule.end_epoch
    if t < start:
        return 0.0
    if end <= start or t >= end:
        return float(eps_target)
    return float(eps_target) * SHAPES[schedule.shape]((t - start) / (end - start))
