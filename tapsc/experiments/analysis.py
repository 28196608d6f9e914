"""How precise is each estimate of the worst-case margin? (the paper's Figs. 1 and 6, Table 9)

For a test sample (x, y) and the box B = clip(x -+ eps, 0, 1), the worst-case margin is
m* = min over B of min_{j != y} (o_y - o_j) (positive: robust). Each method gives an
estimate of m*:

- sound lower bounds (m* >= bound): IBP (the network's float32 interval pass), CROWN-IBP,
  CROWN (``tapsc.certify``), and the margin bound a ``tapsc certify`` run stored in certify.json;
- an attack, an upper bound (m* <= margin at a point of B): input-space PGD on the margin
  (the clean point included), and the attack margin stored in certify.json;
- estimates with no guaranteed side: TAPS (multi-estimator PGD in the latent box of the
  extractor) and SABR (IBP of the small box of radius lambda * eps around a PGD point).

What IS guaranteed: every sound bound <= every attack margin, and IBP <= TAPS (the latent
points lie in the IBP box of the extractor, and IBP of the classifier bounds the classifier
anywhere in that box). ``soundness`` counts violations of both (beyond float tolerance).
Exact verdicts (``certify --merge`` of a complete verifier's checked answers, or the cascade's own) give the
sign of m* where known.

Nothing here reimplements a bound: each estimate is its measure's margin function
(`tapsc.margins`, which calls tapsc.method or tapsc.certify), and the estimates are the
measures `tapsc.measures` shows in analysis.

Shape legend: B batch, K classes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tapsc import measures
from tapsc.language import ir
from tapsc.language.shapes import count_relus, split_index
from tapsc.precision import full_float32

ESTIMATES = measures.by_kind(measures.names(measures.ANALYSIS))  # loosest sound ... attack
SOUND = measures.names(measures.ANALYSIS, "sound")
ATTACKS = measures.names(measures.ANALYSIS, "attack")
TOLERANCE = 1e-4  # float32 slack when comparing bounds computed by different code paths


@full_float32()  # the sound bounds among them are compared with verdicts
def batch_estimates(network, x_B, y_B, spec: ir.Spec, methods: Sequence[str]) -> dict[str, torch.Tensor]:
    """Every requested estimate of m* for one batch, (B,) each (`tapsc.margins`); the network
    must be in eval mode."""
    from tapsc.margins import margin

    return {name: margin(name, network, x_B, y_B, spec).detach().cpu() for name in methods}


# ---------------------------------------------------------------- stored verdicts


def stored_verdicts(run_dir: Path, eps: float) -> tuple[str | None, dict[int, dict]]:
    """Per-sample rows of the run's certify.json or certify-eps<E>.json computed at ``eps`` (which
    holds a merged verifier's checked verdicts too, after `tapsc certify --merge`); ``(file name, {index: row})``."""
    from tapsc.certify.report import find_results

    certify = find_results(Path(run_dir), eps)
    if certify is None:
        return None, {}
    document = json.loads(certify.read_text())
    return certify.name, {int(row["index"]): row for row in document.get("samples", [])}


# ---------------------------------------------------------------- summaries


def _pearson(a: Sequence[float], b: Sequence[float]) -> float | None:
    n = len(a)
    if n < 3:
        return None
    ma, mb = sum(a) / n, sum(b) / n
    sab = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    saa, sbb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    return sab / math.sqrt(saa * sbb) if saa > 0 and sbb > 0 else None


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def correlation(a: Sequence[float], b: Sequence[float]) -> dict[str, float | None]:
    """Pearson and Spearman correlation (None when undefined: fewer than 3 values or constant)."""
    return {"pearson": _pearson(a, b), "spearman": _pearson(_ranks(a), _ranks(b))}


def sample_records(estimates: dict[str, list[float]], indices: list[int], labels: list[int],
                   correct: list[bool], stored: dict[int, dict]) -> list[dict[str, Any]]:
    """One record per sample: every estimate, the tightest sound bound, the strongest attack,
    the exact sign where a verdict gives it."""
    records = []
    for n, index in enumerate(indices):
        row: dict[str, Any] = {"index": index, "label": labels[n], "correct": correct[n]}
        row.update({name: values[n] for name, values in estimates.items()})
        sound = [row[name] for name in SOUND if name in row]
        attacks = [row[name] for name in ATTACKS if name in row]
        verdict = stored.get(index)
        if verdict is not None:
            row["verdict"] = verdict.get("verdict")
            row["verdict_method"] = verdict.get("method")
            if verdict.get("margin_bound") is not None:
                row["stored_bound"] = float(verdict["margin_bound"])
                sound.append(row["stored_bound"])
            if verdict.get("attack_margin") is not None:
                row["stored_attack"] = -float(verdict["attack_margin"])
                attacks.append(row["stored_attack"])
        row["tightest_sound"] = max(sound) if sound else None
        row["strongest_attack"] = min(attacks) if attacks else None
        records.append(row)
    return records


def soundness(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Violations of the guaranteed orders: sound bound <= attack margin, IBP <= TAPS."""
    bound_over_attack, ibp_over_taps = [], []
    for row in records:
        attack = row["strongest_attack"]
        for name in (*SOUND, "stored_bound"):
            if attack is not None and row.get(name) is not None and row[name] > attack + TOLERANCE * (
                    1 + abs(attack)):
                bound_over_attack.append({"index": row["index"], "bound": name, "value": row[name],
                                          "attack": attack})
        if "ibp" in row and "taps" in row and row["ibp"] > row["taps"] + TOLERANCE * (1 + abs(row["taps"])):
            ibp_over_taps.append({"index": row["index"], "ibp": row["ibp"], "taps": row["taps"]})
    return {"bound_above_attack": bound_over_attack, "ibp_above_taps": ibp_over_taps,
            "ok": not bound_over_attack and not ibp_over_taps}


def differences(records: list[dict[str, Any]], names: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """estimate - tightest sound bound (>= 0 for every estimate but looser sound bounds) and
    estimate - strongest attack (<= 0 for sound bounds), per estimate."""
    out: dict[str, dict[str, list[float]]] = {"to_sound": {}, "to_attack": {}}
    for name in names:
        out["to_sound"][name] = [r[name] - r["tightest_sound"] for r in records
                                 if r.get(name) is not None and r["tightest_sound"] is not None]
        out["to_attack"][name] = [r[name] - r["strongest_attack"] for r in records
                                  if r.get(name) is not None and r["strongest_attack"] is not None]
    return out


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "min": None, "max": None}
    ordered = sorted(values)
    return {"mean": sum(values) / len(values), "median": ordered[len(ordered) // 2], "min": ordered[0],
            "max": ordered[-1]}


def accuracies(records: list[dict[str, Any]]) -> dict[str, float]:
    """Share of samples each estimate calls robust (margin > 0, and classified correctly)."""
    total = max(len(records), 1)
    names = [n for n in (*ESTIMATES, "tightest_sound", "strongest_attack") if records and n in records[0]]
    result = {"natural": sum(r["correct"] for r in records) / total}
    for name in names:
        if all(r[name] is None for r in records):
            continue  # e.g. no sound bound asked for: no certified accuracy rather than 0%
        result[name] = sum(1 for r in records if r[name] is not None and r[name] > 0 and r["correct"]) / total
    exact = [r for r in records if r.get("verdict") in ("certified", "falsified", "misclassified")]
    if exact:
        result["verdict_certified"] = sum(r.get("verdict") == "certified" for r in records) / total
    return result


def taps_agreement(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per sample: how TAPS's verdict and margin track the attack's and the sound bounds'
    (``summary["taps_correlation"]`` of analysis.json)."""
    def robust(row, name):
        return float(row.get(name) is not None and row[name] > 0 and row["correct"])

    result: dict[str, Any] = {}
    for other in ("pgd", "tightest_sound", "strongest_attack"):
        rows = [r for r in records if r.get(other) is not None and r.get("taps") is not None]
        if not rows:
            continue
        result[other] = {
            "verdict_agreement": sum(robust(r, "taps") == robust(r, other) for r in rows) / len(rows),
            "verdict_phi": _pearson([robust(r, "taps") for r in rows], [robust(r, other) for r in rows]),
            "margin": correlation([r["taps"] for r in rows], [r[other] for r in rows]),
        }
    return result


def summarize(records: list[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    diffs = differences(records, names)
    return {
        "accuracy": accuracies(records),
        "soundness": soundness(records),
        "difference_to_tightest_sound": {n: _stats(v) for n, v in diffs["to_sound"].items()},
        "difference_to_strongest_attack": {n: _stats(v) for n, v in diffs["to_attack"].items()},
        "taps_correlation": taps_agreement(records),
    }


def across_runs(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Table 9 across runs: correlation of TAPS accuracy with adversarial and certified accuracy
    (None where a run lacks the TAPS, attack or sound estimates)."""
    runs = list(summaries)
    accuracy = [summaries[r]["accuracy"] for r in runs]
    taps = [a.get("taps") for a in accuracy]
    adversarial = [a.get("strongest_attack") for a in accuracy]
    certified = [a.get("tightest_sound") for a in accuracy]

    def corr(other):
        if any(v is None for v in (*taps, *other)):
            return {"pearson": None, "spearman": None}
        return correlation(taps, other)

    return {"runs": runs, "taps": taps, "adversarial": adversarial, "certified": certified,
            "taps_vs_adversarial": corr(adversarial), "taps_vs_certified": corr(certified)}


# ---------------------------------------------------------------- one run


def taps_split_index(spec: ir.Spec, relus: int) -> int:
    """The layer index where a classifier with ``relus`` ReLUs starts, or a clean error."""
    from tapsc.errors import Diagnostic, TapscError

    try:
        return split_index(spec.model, ir.SplitByRelus(count=relus))
    except ValueError:
        valid = [n for n in range(count_relus(spec.model.layers) + 1) if _has_boundary(spec, n)]
        raise TapscError(Diagnostic(code="bad-split", message=f"`--split {relus}`: no layer boundary of this model "
                                    f"leaves {relus} ReLU(s) in the classifier",
                                    help=f"valid: {', '.join(map(str, valid))}")) from None


def _has_boundary(spec: ir.Spec, relus: int) -> bool:
    try:
        split_index(spec.model, ir.SplitByRelus(count=relus))
        return True
    except ValueError:
        return False


def analyze_run(run_dir: Path, *, samples: int = 200, which: str = "best", methods: Sequence[str] = ESTIMATES,
                batch: int | None = None, device: str = "auto", data_root: str | None = None,
                split: int | None = None, progress=lambda done, total: None) -> dict[str, Any]:
    """Estimate the worst-case margin of the first ``samples`` test samples of a run.

    Args:
        run_dir: a folder made by ``tapsc run``.
        samples: how many test samples (the first ones).
        which: checkpoint, "best" or "last".
        methods: estimates to compute, from ``ESTIMATES``.
        batch: batch size (default ``eval.batch``).
        device: where to compute.
        data_root: folder holding the dataset on this machine.
        split: ReLUs in the classifier for the TAPS estimate (default: the spec's split); the
            same weights, cut elsewhere (the other estimates do not depend on the split).
        progress: called with (samples done, total) after every batch.

    Returns:
        ``{"run", "checkpoint", "eps", "samples", "methods", "taps_split", "stored", "summary",
        "records"}``; ``taps_split`` is ``{"relus_in_classifier", "index"}``.

    Raises:
        TapscError: not a run, unknown method, missing data, bad device, a split with no
            layer boundary.
    """
    from torch.utils.data import DataLoader

    from tapsc.data import load_dataset
    from tapsc.data.loading import first
    from tapsc.errors import Diagnostic, TapscError
    from tapsc.method.metrics import natural_correct
    from tapsc.train import rundir
    from tapsc.train.runtime import resolve_device

    unknown = [m for m in methods if m not in ESTIMATES]
    if unknown or not methods:
        raise TapscError(Diagnostic(code="unknown-estimate", message=f"unknown estimate(s) {unknown or methods}",
                                    help=f"choose from {', '.join(ESTIMATES)}"))
    methods = [m for m in ESTIMATES if m in methods]
    target = resolve_device(device)
    spec, network = rundir.load_run(run_dir, which, device=target)
    relus = count_relus(spec.model.layers[network.split:])
    if split is not None:
        network.split, relus = taps_split_index(spec, split), split  # only the TAPS estimate reads it
    data = spec.data if data_root is None else spec.data.model_copy(update={"root": data_root})
    test_set = first(load_dataset(data, train=False, shape=tuple(spec.model.input_shape)), samples)
    network = network.float().eval()
    torch.manual_seed(0)
    estimates: dict[str, list[float]] = {m: [] for m in methods}
    labels, correct = [], []
    for x_B, y_B in DataLoader(test_set, batch_size=batch or spec.eval.batch, shuffle=False):
        x_B, y_B = x_B.to(target).float(), y_B.to(target)
        for name, values in batch_estimates(network, x_B, y_B, spec, methods).items():
            estimates[name] += values.tolist()
        correct += natural_correct(network, x_B, y_B).tolist()
        labels += y_B.tolist()
        progress(len(labels), len(test_set))
    stored_name, stored = stored_verdicts(run_dir, spec.perturbation.eps)
    records = sample_records(estimates, list(range(len(labels))), labels, correct, stored)
    return {"run": str(run_dir), "checkpoint": which, "eps": spec.perturbation.eps, "samples": len(records),
            "methods": methods, "taps_split": {"relus_in_classifier": relus, "index": network.split},
            "stored": stored_name, "summary": summarize(records, methods), "records": records}
