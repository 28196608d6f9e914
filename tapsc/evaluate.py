"""Evaluation of a trained network over a dataset: the accuracy of each measure named in
``eval.metrics`` (natural, PGD, IBP-, CROWN-IBP- and CROWN-certified, TAPS; see
`tapsc.measures`), always in float32 and eval mode.

A sample counts for a measure when `tapsc.margins.robust` says so: by the prediction
(natural), margin > 0 (PGD), margin > 0 and classified correctly (TAPS), or
`tapsc.certify`'s verdict (the certified ones).

Shape legend: B batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from tapsc import measures
from tapsc.errors import Diagnostic, TapscError
from tapsc.language import ir
from tapsc.margins import robust
from tapsc.precision import full_float32
from tapsc.train.events import Emit, EvalEnded, EvalProgress, EvalStarted, ignore


@full_float32()
def evaluate(network: torch.nn.Module, dataset: Dataset, spec: ir.Spec, metrics: Sequence[str], *,
             device: torch.device | str = "cpu", batch: int | None = None, emit: Emit = ignore,
             split: str = "selection") -> dict[str, Any]:
    """Accuracy of ``network`` on ``dataset`` for each of ``metrics``.

    Args:
        network: a compiled ``Network`` (put in eval mode here, float32).
        dataset: (image, label) pairs.
        spec: gives eps, the PGD attack (``eval.attack``) and the latent attack.
        metrics: measures shown in eval (`tapsc.measures`); sound ones are skipped (and listed
            under "skipped") while ``tapsc.certify`` offers no certification.
        device: where to evaluate.
        batch: evaluation batch size (default ``eval.batch``).
        emit: receives EvalStarted / EvalProgress / EvalEnded.
        split: a name for the events ("test", "validation").

    Returns:
        ``{"metrics": {name: accuracy}, "samples": n, "eps": eps, "seconds": {...}, "skipped": [...]}``.
    """
    known = measures.names(measures.EVAL)
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise TapscError(Diagnostic(code="unknown-metric", message=f"unknown metric(s) {unknown}",
                                    help=f"choose from {', '.join(known)}"))
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
            with torch.set_grad_enabled(measures.MEASURES[name].needs_grad):
                correct[name] += int(robust(name, network, x_B, y_B, spec).sum())
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

    from tapsc.data import load_dataset
    from tapsc.data.loading import first
    from tapsc.train import rundir
    from tapsc.train.runtime import resolve_device

    target = resolve_device(device)
    spec, network = rundir.load_run(run_dir, which, device=target)
    data = spec.data if data_root is None else spec.data.model_copy(update={"root": data_root})
    test_set = first(load_dataset(data, train=False, shape=tuple(spec.model.input_shape)),
                     samples or spec.eval.samples)
    results = evaluate(network, test_set, spec, spec.eval.metrics, device=target, emit=emit, split="test")
    results["checkpoint"] = which
    rundir.write_json(Path(run_dir) / f"eval-{which}.json", results)
    return results
