"""Rescaling a spec's schedule to another number of epochs (`--epochs N`): a short run of a
long spec keeps its shape. Torch-free, a pure function on the IR.

Every epoch the schedule names is mapped by e -> round(e * N / E): the phase boundaries,
the eps ramp's start and end, the learning-rate milestones and warm-up. Rounding is then repaired so
that the phases keep their order and each stays non-empty (so N must be at least the
number of phases); an eps ramp epoch that sits on a phase boundary moves with that
boundary, so a ramp that spans the IBP phase still does; milestones stay strictly
increasing inside [1, N - 1] (those with no epoch left are dropped, and said so).
"""

from __future__ import annotations

from dataclasses import dataclass

from tapsc.errors import Diagnostic, TapscError
from tapsc.language import ir


@dataclass(frozen=True)
class Rescaled:
    """The rescaled spec and what changed, in words."""

    spec: ir.Spec
    old_epochs: int
    changes: tuple[str, ...]

    def summary(self) -> str:
        """One line for the run's first lines and `tapsc check`."""
        new = self.spec.optimizer.epochs
        if not self.changes:
            return f"schedule kept at {new} epochs"
        return f"schedule rescaled from {self.old_epochs} to {new} epochs: " + "; ".join(self.changes)


def _scaled(epoch: int, old: int, new: int) -> int:
    return min(new, max(0, (2 * epoch * new + old) // (2 * old)))  # round half up, exact in integers


def _phase_ends(ends: list[int], old: int, new: int) -> list[int]:
    """Scaled ends of k phases (the last is ``new``), strictly increasing from at least 1."""
    k = len(ends)
    scaled = [_scaled(end, old, new) for end in ends[:-1]] + [new]
    for i in range(k):  # at least one epoch after the previous end ...
        scaled[i] = max(scaled[i], (scaled[i - 1] if i else 0) + 1)
    for i in range(k - 1, -1, -1):  # ... and room for one epoch per phase after it
        scaled[i] = min(scaled[i], new - (k - 1 - i))
    return scaled


def rescale_epochs(spec: ir.Spec, epochs: int) -> Rescaled:
    """``spec`` with its whole schedule stretched or squeezed to ``epochs`` epochs.

    Raises:
        TapscError: ``too-few-epochs`` when ``epochs`` is below 1 or below the number of phases.
    """
    old, phases = spec.optimizer.epochs, spec.method.phases
    if epochs < max(1, len(phases)):
        raise TapscError(Diagnostic(
            code="too-few-epochs",
            message=f"`--epochs {epochs}` cannot hold the {len(phases)} phases of the method, one epoch each",
            help=f"use `--epochs {max(1, len(phases))}` or more"))
    ends = [phase.end if phase.end is not None else old for phase in phases]
    new_ends = _phase_ends(ends, old, epochs)
    anchors = {0: 0, old: epochs, **dict(zip(ends, new_ends))}

    def move(epoch: int) -> int:
        return anchors[epoch] if epoch in anchors else _scaled(epoch, old, epochs)

    new_phases, start = [], 0
    for phase, end in zip(phases, new_ends):
        update = {"start": start, "end": end if phase.end is not None else None}
        new_phases.append(phase.model_copy(update=update))
        start = end
    schedule = spec.perturbation.schedule
    ramp_start = move(schedule.start_epoch)
    ramp_end = max(ramp_start, move(schedule.end_epoch))
    opt = spec.optimizer
    milestones, dropped, previous = [], [], 0
    for milestone in opt.milestones:
        moved = max(move(milestone), previous + 1, 1)
        if moved > epochs - 1:
            dropped.append(milestone)
            continue
        milestones.append(moved)
        previous = moved
    # the warm-up keeps at least one epoch if it had one, and ends before training does
    warmup = min(max(move(opt.warmup), 1), epochs - 1) if opt.warmup else 0
    rescaled = spec.model_copy(update={
        "method": spec.method.model_copy(update={"phases": tuple(new_phases)}),
        "perturbation": spec.perturbation.model_copy(update={
            "schedule": schedule.model_copy(update={"start_epoch": ramp_start, "end_epoch": ramp_end})}),
        "optimizer": opt.model_copy(update={"epochs": epochs, "milestones": tuple(milestones), "warmup": warmup}),
    })
    changes: list[str] = []
    if epochs != old:
        def ranges(items, bounds):
            return ", ".join(f"{p.kind} [{s}, {e})" for p, (s, e) in zip(items, bounds))

        before = list(zip([0, *ends[:-1]], ends))
        after = list(zip([0, *new_ends[:-1]], new_ends))
        changes.append(f"phases {ranges(phases, before)} -> {ranges(new_phases, after)}")
        if (schedule.start_epoch, schedule.end_epoch) != (0, 0):
            changes.append(f"eps ramp epochs {schedule.start_epoch}-{schedule.end_epoch} -> {ramp_start}-{ramp_end}")
        if opt.milestones:
            text = f"lr milestones {tuple(opt.milestones)} -> {tuple(milestones)}"
            changes.append(text + (f" (dropped {tuple(dropped)}: no epoch left)" if dropped else ""))
        if opt.warmup:
            changes.append(f"lr warm-up {opt.warmup} -> {warmup} epochs")
    return Rescaled(rescaled, old, tuple(changes))
