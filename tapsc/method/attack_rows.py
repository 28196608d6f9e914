"""The rows the latent attack still moves: sign-PGD's fixed points are retired, exactly.

One row of the attack is one (sample, estimator, restart). Its step is
z <- clip(z + sign(g) * lr * (hi - lo), lo, hi). When every coordinate of a row has a zero
gradient or sits on the bound its gradient points out of, the step leaves the row where it
is, whatever lr is. Rows are independent during the attack (BatchNorm uses the clean batch's
frozen statistics), so the row's next gradient is the same, and so is every later step: the
row is a fixed point for the rest of the attack and its value cannot improve on the one
already recorded. ``HeldRows`` stops computing such rows. The points that come out are the
same (a row's matrix products do not depend on which other rows share the batch, checked
down to ``MIN_ROWS`` rows; tests/method/test_latent_attack.py compares with the plain loop).

On a trained network with real data most rows stop well before the last step (68% by step
12 of 20 on the Fashion-MNIST study net); on random weights and random images none does.
The check is cheap for rows that do move: a fingerprint of ``PREFILTER`` coordinates per row
and step, the exact whole-row check only for rows whose fingerprint did not change. Stopped
rows keep being computed until at most ``COMPACT_SHARE`` of the held rows still move; then
the moving rows are copied out with their own bounds, trading memory (per-row bounds) for
matrix products. ``retirement`` says when checking can pay at all (not for 8-step attacks).
Measured in docs/benchmarks.md, "Retiring fixed-point rows of the latent attack".

Shape legend: B batch, E estimators, R restarts, N = B*E*R rows, n held rows, Z... latent
dims, F = prod(Z); G x M groups the held rows so that the bounds broadcast: (B, E*R) while
all rows are held, (n, 1) after a compaction.
"""

from __future__ import annotations

import math

import torch

PREFILTER = 512  # coordinates in a row's fingerprint (see find_stopped)
COMPACT_SHARE = 0.75  # compact once at most this share of the held rows still moves
MIN_ROWS = 16  # never compact below this (tiny matrix products take other kernels, other roundings)
MIN_STEPS_LEFT = 3  # a compaction copies the kept rows and their bounds once: not for the last steps
CHECK_CHUNKS = 8  # the exact whole-row check gathers at most 1/8 of the held rows at a time
MIXED_UPDATE_CHUNKS = 8  # CPU: memory chunks for a float32 iterate updated with a bf16 step
RETIRE_ON = ("cpu",)  # devices that retire rows: each check syncs, not measured on a GPU yet


def retirement(steps: int, lr0: float) -> tuple[bool, int]:
    """(retire rows?, the first step checked) for an attack of ``steps`` steps from step size ``lr0``.

    A coordinate needs up to 1 / lr0 steps to cross its box, so rows rarely stop sooner: the
    checks start there. On trained networks most stopped rows stop within about twice that,
    and a compaction needs ``MIN_STEPS_LEFT`` steps after it to repay its copy: shorter attacks
    (8 steps: 4 + 4 + 3 > 8) would pay for the checks and save nothing, so they retire nothing.
    """
    first_check = max(1, math.ceil(1 / lr0))
    return steps >= 2 * first_check + MIN_STEPS_LEFT, first_check


def reused(buffer: torch.Tensor | None, shape, dtype: torch.dtype, device) -> torch.Tensor:
    """``buffer`` when it has this shape, dtype and device, else a new empty tensor: the attack's
    step-sized temporaries are kept across steps, since on the CPU a fresh tensor of that size
    per step costs page faults."""
    if buffer is None or buffer.shape != tuple(shape) or buffer.dtype != dtype or buffer.device != device:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    return buffer


def _moves(z, d, lo, hi) -> torch.Tensor:
    """Per row (last dim reduced): does the sign step move any coordinate? Exact for z in [lo, hi]."""
    return ((d > 0) & (z < hi) | (d < 0) & (z > lo)).any(-1)


class HeldRows:
    """The iterate, bounds, labels and margin signs of the rows still attacked.

    Starts with all N rows as the (B, E, R, *Z) iterate and (B, 1, 1, *Z) bounds, and
    becomes a compact (n, *Z) copy with (n, *Z) bounds once most rows have stopped.
    """

    def __init__(self, z, lo, hi, width, y_N: torch.Tensor, retire: bool, first_check: int = 1):
        self.z, self.lo, self.hi, self.width = z, lo, hi, width
        self.latent = tuple(lo.shape[3:])
        self.groups = (z.shape[0], z.shape[1] * z.shape[2])
        self.index = None  # (n,) chunk rows held, ascending; None: all N, in order
        self.y_N, self.sign_NK = y_N, None
        self.stopped = torch.zeros(y_N.shape[0], dtype=torch.bool, device=z.device)  # held rows found fixed
        self.retire = retire and z.device.type in RETIRE_ON
        self.fingerprint = None  # (n,) per held row, at the last check
        self.first_check = max(1, first_check)  # the first step checked (step 0's start may lie past a bound)
        self._step_width: tuple[float, torch.Tensor] | None = None  # (lr, width * lr)
        self._low: torch.Tensor | None = None  # the iterate's low-precision copy (low_copy)
        self._chunk: torch.Tensor | None = None  # one memory chunk of float32 signs (update)

    @property
    def count(self) -> int:
        return self.stopped.shape[0]

    def flat(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """(n, *Z): the held rows (of ``z``, an iterate-shaped tensor, or of the iterate)."""
        return (self.z if z is None else z).reshape((self.count,) + self.latent)

    def keep_best(self, value_N, best_value, best_z) -> None:
        """Record the held rows' values and points where they beat the best so far (in place)."""
        z = self.z.detach()
        if self.index is None:  # a stopped row recomputes its recorded value, bit for bit: no update
            improved = value_N > best_value
            torch.where(improved, value_N, best_value, out=best_value)
            # In place (out aliases best_z): on CPU a fresh (N, *Z) tensor per step costs page faults.
            torch.where(improved.reshape(z.shape[:3] + (1,) * len(self.latent)), z, best_z, out=best_z)
            return
        improved = (value_N > best_value[self.index]) & ~self.stopped
        rows = self.index[improved]
        best_value[rows] = value_N[improved].to(best_value.dtype)
        best_z.view((-1,) + self.latent).index_copy_(0, rows, z[improved])

    def find_stopped(self, direction: torch.Tensor, step: int) -> None:
        """Mark the held rows that the coming step leaves in place: every coordinate has a zero
        direction or sits on the bound it points out of. Call every step, before the update.

        Only rows that did not move in the previous step are candidates: their fingerprint
        (the sum of about ``PREFILTER`` coordinates spread over the row) is unchanged, which
        costs one small reduction per step. The candidates get the exact whole-row check. A row
        that stopped keeps its fingerprint, so every stopped row is found one step later at most.
        """
        if not self.retire or step + 1 < self.first_check:
            return
        groups, per = self.groups
        z3, d3 = self.z.reshape(groups, per, -1), direction.reshape(groups, per, -1)
        fingerprint = z3[..., :: max(1, z3.shape[2] // PREFILTER)].sum(-1).reshape(-1)
        previous, self.fingerprint = self.fingerprint, fingerprint
        if previous is None:  # the step before the first check: nothing to compare with yet
            return
        rows = ((fingerprint == previous) & ~self.stopped).nonzero()[:, 0]
        if rows.numel() == 0:
            return
        lo3, hi3 = self.lo.reshape(groups, 1, -1), self.hi.reshape(groups, 1, -1)
        # in chunks of rows: late in an attack on random weights nearly every row is a candidate,
        # and gathering them all at once (four copies of the iterate) raised the step's peak memory
        at_most = max(1, -(-self.count // CHECK_CHUNKS))
        for start in range(0, rows.numel(), at_most):
            part = rows[start:start + at_most]
            g, m = part // per, part % per
            still = ~_moves(z3[g, m], d3[g, m], lo3[g, 0], hi3[g, 0])
            self.stopped[part[still]] = True

    def low_copy(self, dtype: torch.dtype) -> torch.Tensor:
        """The iterate cast to ``dtype``, in a buffer kept across steps (``reused``). A leaf; the
        caller sets requires_grad."""
        self._low = reused(self._low, self.z.shape, dtype, self.z.device)
        with torch.no_grad():
            self._low.requires_grad_(False).copy_(self.z)
        return self._low

    def signs_in_update(self, grad: torch.Tensor) -> bool:
        """Whether ``update`` takes this raw gradient and signs it itself: a low-precision gradient
        of a float32 iterate on the CPU, where sign() of a bf16 tensor costs twice as much as
        widening it into float32 and signing that, and a mixed-dtype update copies its operand."""
        return grad.dtype != self.z.dtype and self.z.device.type == "cpu"

    def update(self, direction: torch.Tensor, lr: float) -> None:
        """z <- clip(z + sign(direction) * lr * width, lo, hi), in place. ``direction`` holds signs
        (0, +-1), or the raw gradient when ``signs_in_update`` says so."""
        if self._step_width is None or self._step_width[0] != lr:  # one at a time: (n, *Z) once compacted
            # same rounding as (sign * lr) * width: sign is 0 or +-1
            self._step_width = lr, (self.width * lr if self.width is not None else (self.hi - self.lo).mul_(lr))
        step_width, z = self._step_width[1], self.z
        if not self.signs_in_update(direction):
            # CUDA kernels widen a mixed-dtype operand element by element: no copy there
            z.addcmul_(direction, step_width).clamp_(self.lo, self.hi)
            return
        per_part = max(1, -(-z.shape[0] // MIXED_UPDATE_CHUNKS))  # float32 signs, one memory chunk at a time
        self._chunk = reused(self._chunk, (per_part,) + tuple(z.shape[1:]), z.dtype, z.device)
        for start in range(0, z.shape[0], per_part):
            part = slice(start, start + per_part)
            signs = self._chunk[: z[part].shape[0]]
            signs.copy_(direction[part]).sign_()  # exact: the same 0 / +-1 as sign() then widening
            z[part].addcmul_(signs, step_width[part]).clamp_(self.lo[part], self.hi[part])

    def moving(self, steps_left: int) -> int:
        """How many held rows still move (0: the attack is over). Compacts the held rows when few
        do and at least ``MIN_STEPS_LEFT`` steps remain to repay the copy."""
        if not self.retire:
            return self.count
        moving = self.count - int(self.stopped.sum())
        if moving == 0 or moving > COMPACT_SHARE * self.count or steps_left < MIN_STEPS_LEFT:
            return moving
        keep = (~self.stopped).nonzero()[:, 0]
        if moving < MIN_ROWS:  # pad with stopped rows (never recorded again: see keep_best)
            padding = self.stopped.nonzero()[: MIN_ROWS - moving, 0]
            keep = torch.cat([keep, padding]).sort().values
            if keep.numel() >= self.count:
                return moving
        self._compact(keep)
        return moving

    def _compact(self, keep: torch.Tensor) -> None:
        groups, per = self.groups
        g, m = keep // per, keep % per
        shape = (keep.numel(),) + self.latent
        self.z = self.z.reshape(groups, per, -1)[g, m].reshape(shape)
        self.lo = self.lo.reshape(groups, 1, -1)[g, 0].reshape(shape)
        self.hi = self.hi.reshape(groups, 1, -1)[g, 0].reshape(shape)
        self.width = None  # (hi - lo) * lr from the gathered bounds: the same bits as the original width * lr
        self.index = keep if self.index is None else self.index[keep]
        self.y_N = self.y_N[keep]
        self.sign_NK = None if self.sign_NK is None else self.sign_NK[keep]
        self.stopped = self.stopped[keep]
        self.fingerprint = None if self.fingerprint is None else self.fingerprint[keep]
        self.groups = (keep.numel(), 1)
        self._step_width = None
