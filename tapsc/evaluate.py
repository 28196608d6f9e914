"""Evaluation of a trained network over a dataset: natural, PGD, IBP-certified, TAPS
and (through ``tapsc.certify``) CROWN-certified accuracy, always in float32 and eval mode.

Each metric is a function ``(network, x_B, y_B, spec) -> bool tensor (B,)`` in
``METRICS``; a sample counts for a robust metric only when it is also classified
correctly (the method's functions guarantee that).

Shape legend: B batch.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from tapsc import ir
from tapsc.certify.precision import full_float32
from tapsc.errors import Diagnostic, TapscError
from tapsc.events import Emit, EvalEnded, EvalProgress, EvalStarted, ignore

MetricFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, ir.Spec], torch.Tensor]


def latent_attack(spec: ir.Spec) -> ir.LatentAttack:
    """The latent attack of the spec's last TAPS/STAPS phase (TAPS accuracy uses it)."""
    for phase in reversed(spec.method.phases):
        if isinstance(phase, (ir.TAPSPhase, ir.STAPSPhase)):
            return phase.attack
    return ir.LatentAttack()


def _natural(network, x_B, y_B, spec):
    from tapsc.method.metrics import natural_correct

    return natural_correct(network, x_B, y_B)


def _pgd(network, x_B, y_B, spec):
    from tapsc.method.metrics import pgd_robust

    return pgd_robust(network, x_B, y_B, spec.perturbation.eps, spec.eval.attack)


def _taps(network, x_B, y_B, spec):
    from tapsc.method.metrics import taps_robust

    return taps_robust(network, x_B, y_B, spec.perturbation.eps, latent_attack(spec))


def _bound(kind: str) -> MetricFn:
    """A sound metric: certification's bounds (exact-arithmetic claims, rounding included)."""

    def certified(network, x_B, y_B, spec):
        from tapsc import certify

        return certify.certified(network, x_B, y_B, spec.perturbation.eps, method=kind)

    return certified


METRICS: dict[str, MetricFn] = {
    "natural": _natural,
    "pgd": _pgd,
    "ibp": _bound("ibp"),
    "taps": _taps,
    "crown_ibp": _bound("crown_ibp"),
    "crown": _bound("crown"),
}
NEEDS_GRAD = ("pgd", "taps")  # attacks differentiate through the network


@full_float32()
def evaluate(network: torch.nn.Module, dataset: Dataset, spec: ir.Spec, metrics: Sequence[str], *,
             device: torch.device | str = "cpu", batch: int | None = None, emit: Emit = ignore,
             split: str = "selection") -> dict[str, Any]:
    """Accuracy of ``network`` on ``dataset`` for each of ``metrics``.

    Args:
        network: a compiled ``Network`` (put in eval mode here, float32).
        dataset: (image, label) pairs.
        spec: gives eps, the PGD attack (``eval.attack``) and the latent attack.
        metrics: names from ``METRICS``; CROWN ones are skipped (and listed under
            "skipped") while ``tapsc.certify`` offers no certification.
        device: where to evaluate.
        batch: evaluation batch size (default ``eval.batch``).
        emit: receives EvalStarted / EvalProgress / EvalEnded.
        split: a name for the events ("test", "validation").

    Returns:
        ``{"metrics": {name: accuracy}, "samples": n, "eps": eps, "seconds": {...}, "skipped": [...]}``.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise TapscError(Diagnostic(code="unknown-metric", message=f"unknown metric(s) {unknown}",
                                    help=f"choose from {', '.join(METRICS)}"))
    chosen = tuple(metrics)
    network = network.to(device).float().eval()
    loader = DataLoader(dataset, batch_size=batch or spec.eval.batch, shuffle=False)
    emit(EvalStarted(split, len(dataset), chosen))
    correct = {name: 0 for name in chosen}
    seconds = {name: 0.0 for name in chosen}
    done = 0
    for x_B, y_B in loader:
        x_B, y_B = x_B.to(device).float(), y_B.to(device)
        for name in chosen:
            started = time.perf_counter()
            with torch.set_grad_enabled(name in NEEDS_GRAD):
                correct[name] += int(METRICS[name](network, x_B, y_B, spec).sum())
            seconds[name] += time.perf_counter() - started
        done += len(y_B)
        emit(EvalProgress(",".join(chosen), done, len(dataset)))
    total = max(len(dataset), 1)
    results = {
        "metrics": {name: correct[name] / total for name in chosen},
        "samples": len(dataset),
        "eps": spec.perturbation.eps,
        "seconds": {name: round(s, 3) for name, s in seconds.items()},
        "skipped": [m for m in metrics if m not in chosen],
    }
    emit(EvalEnded(split, results))
    return results


def evaluate_run(run_dir, which: str = "best", *, samples: int | None = None, device: str = "auto",
                 data_root: str | None = None, emit: Emit = ignore) -> dict[str, Any]:
    """Evaluate a run's checkpoint on its test set with the spec's eval metrics.

    Writes ``eval-<which>.json`` into the run directory and returns the results.

    Raises:
        TapscError: not a run, no checkpoint, missing data, bad device.
    """
    from pathlib import Path

    from tapsc import rundir
    from tapsc.data import load_dataset
    from tapsc.data.loading import first
    from tapsc.runtime import resolve_device

    target = resolve_device(device)
    spec, network = rundir.load_run(run_dir, which, device=target)
    data = spec.data if data_root is None else spec.data.model_copy(update={"root": data_root})
    test_set = first(load_dataset(data, train=False, shape=tuple(spec.model.input_shape)),
                     samples or spec.eval.samples)
    results = evaluate(network, test_set, spec, spec.eval.metrics, device=target, emit=emit, split="test")
    results["checkpoint"] = which
    rundir.write_json(Path(run_dir) / f"eval-{which}.json", results)
    return results
