"""Certification results on disk and on screen: certify.json, the per-sample CSV, a Rich table.

``certify.json`` holds the settings (with the provenance a merge checks), the summary
(counts and rates) and the verdict of every sample, and after ``tapsc certify --merge``
the merged results files, problems and conflicts; ``certify.csv`` holds one row per
sample (index, label, prediction, verdict, method, source, margin bound, time). Both are
written atomically. `read_verdicts` reads either back, which is how ``tapsc export
--only-unknown`` and ``tapsc certify --merge`` find the verdicts.

One pair of files per radius: ``certify.json``/``.csv`` at the spec's ``perturbation.eps``
(what `tapsc verify`, `tapsc eval`, sweeps and analyses read), ``certify-eps<E>.json``/``.csv``
at any other radius E (``results_stem``; ``find_results`` finds the file of a radius).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from tapsc.certify.cascade import SampleVerdict
from tapsc.errors import Diagnostic, TapscError

CSV_FIELDS = ("index", "label", "prediction", "verdict", "method", "source", "margin_bound", "time")
JSON_NAME, CSV_NAME = "certify.json", "certify.csv"


def results_stem(eps: float, spec_eps: float) -> str:
    """The file stem of results at ``eps``: ``certify`` at the spec's eps, else ``certify-eps<E>``."""
    return "certify" if _same_eps(eps, spec_eps) else f"certify-eps{eps:g}"


def _same_eps(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def find_results(folder: Path, eps: float) -> Path | None:
    """The certify JSON of ``folder`` computed at ``eps`` (certify.json when its settings say
    that eps, else certify-eps<E>.json), or None when there is none."""
    folder = Path(folder)
    for path in (folder / JSON_NAME, folder / f"certify-eps{eps:g}.json"):
        try:
            found = json.loads(path.read_text()).get("settings", {}).get("eps") if path.is_file() else None
        except ValueError:
            continue
        if found is not None and _same_eps(float(found), eps):
            return path
    return None


def pick_results(folder: Path, eps: float | None = None) -> Path:
    """The results `tapsc verify` and `tapsc certify --merge` work on: those at ``eps``; without
    one, certify.json, else the only certify-eps<E>.json (several: an error asking for ``--eps``)."""
    folder = Path(folder)
    if eps is not None:
        found = find_results(folder, eps)
        if found is None:
            raise TapscError(Diagnostic(code="no-certify-results", message=f"no certification results at eps "
                                        f"{eps:g} in {folder}", help=f"run `tapsc certify RUN_DIR --eps {eps:g}` first"))
        return found
    others = sorted(folder.glob("certify-eps*.json"))
    if (folder / JSON_NAME).is_file() or not others:
        return folder / JSON_NAME  # read_document says when it is missing
    if len(others) > 1:
        radii = ", ".join(p.stem.removeprefix("certify-eps") for p in others)
        raise TapscError(Diagnostic(code="which-eps", message=f"{folder} holds results at several radii ({radii}) "
                                    "and none at the spec's eps", help="choose one with `--eps E`"))
    return others[0]


def summarize(verdicts: Sequence[SampleVerdict], methods: Sequence[str]) -> dict:
    """Counts and rates over the samples: natural, adversarial, certified (per method), unknown."""
    total = len(verdicts)

    def count(predicate) -> int:
        return sum(1 for v in verdicts if predicate(v))

    by_method = {m: count(lambda v, m=m: v.verdict == "certified" and v.method == m) for m in methods}
    counts = {
        "samples": total,
        "natural": count(lambda v: v.verdict != "misclassified"),
        "adversarial": count(lambda v: v.verdict in ("certified", "unknown")),
        "certified": sum(by_method.values()),
        "unknown": count(lambda v: v.verdict == "unknown"),
        "falsified": count(lambda v: v.verdict == "falsified"),
        "misclassified": count(lambda v: v.verdict == "misclassified"),
    }
    rates = {key: value / total if total else 0.0 for key, value in counts.items() if key != "samples"}
    seconds = sum(v.time for v in verdicts)
    return {"counts": counts, "certified_by": by_method, "rates": rates,
            "certified_by_rate": {m: c / total if total else 0.0 for m, c in by_method.items()},
            "seconds": seconds, "seconds_per_sample": seconds / total if total else 0.0}


def complete_summary(summary: dict, verifiers: Sequence[dict]) -> dict:
    """The complete certified accuracy after `tapsc verify`: in-house certificates plus the
    checked ``unsat`` answers of the verifiers (what certify.json's ``complete`` holds)."""
    counts = summary["counts"]
    total = counts["samples"]
    return {"rate": summary["rates"]["certified"], "certified": counts["certified"], "samples": total,
            "unknown": counts["unknown"], "falsified": counts["falsified"],
            "verifiers": [v.get("tool") for v in verifiers]}


def read_complete(path: Path) -> dict | None:
    """certify.json's ``complete`` block (a folder or the file), or None when `tapsc verify` has not run."""
    path = Path(path)
    path = path / JSON_NAME if path.is_dir() else path
    try:
        return json.loads(path.read_text()).get("complete") if path.is_file() else None
    except ValueError:
        return None


def write_results(out_dir: Path, verdicts: Sequence[SampleVerdict], summary: dict, settings: dict,
                  extra: dict | None = None, stem: str = "certify") -> tuple[Path, Path]:
    """Write <stem>.json (with ``extra`` keys, e.g. merges) and <stem>.csv into ``out_dir``, atomically
    (``stem`` from ``results_stem``: certify.json holds the spec's eps)."""
    from tapsc.train.rundir import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"
    document = {"settings": settings, "summary": summary, "samples": [v.row() for v in verdicts], **(extra or {})}
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for verdict in verdicts:
        writer.writerow({**verdict.row(), "method": verdict.method or "", "source": verdict.source or ""})
    atomic_write_text(json_path, json.dumps(document, indent=2) + "\n")
    atomic_write_text(csv_path, table.getvalue())
    return json_path, csv_path


def read_document(path: Path) -> dict:
    """The whole certify.json (settings, summary, samples, merges) of a folder or file."""
    path = Path(path)
    if path.is_dir():
        path = path / JSON_NAME
    if not path.is_file() or path.suffix != ".json":
        raise TapscError(Diagnostic(code="no-certify-results", message=f"no certification results at {path}",
                                    help="run `tapsc certify RUN_DIR` first (merging needs its certify.json)"))
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise TapscError(Diagnostic(code="bad-certify-results", message=f"{path} is not JSON: {error}",
                                    help="run `tapsc certify RUN_DIR` again")) from None


def read_verdicts(path: Path) -> list[SampleVerdict]:
    """Verdicts from a certify.json or certify.csv (or a folder holding certify.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / JSON_NAME
    if not path.exists():
        raise TapscError(Diagnostic(code="no-certify-results", message=f"no certification results at {path}",
                                    help="run `tapsc certify RUN_DIR` first"))
    if path.suffix == ".json":
        rows = json.loads(path.read_text())["samples"]
    else:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    return [_verdict_from_row(row) for row in rows]


def _verdict_from_row(row: dict) -> SampleVerdict:
    def number(key, cast=float):
        value = row.get(key)
        return None if value in (None, "") else cast(value)

    return SampleVerdict(index=int(row["index"]), label=int(row["label"]), prediction=int(row["prediction"]),
                         verdict=row["verdict"], method=row.get("method") or None,
                         margin_bound=number("margin_bound"), attack_margin=number("attack_margin"),
                         time=number("time") or 0.0, source=row.get("source") or None)


def summary_table(summary: dict, title: str = "certification") -> Table:
    """The summary as a Rich table (count, percentage)."""
    table = Table(title=title)
    table.add_column("")
    table.add_column("samples", justify="right")
    table.add_column("%", justify="right")
    counts, rates = summary["counts"], summary["rates"]
    for key in ("natural", "adversarial", "certified"):
        table.add_row(key, str(counts[key]), f"{100 * rates[key]:.2f}")
    for method, number in summary["certified_by"].items():
        table.add_row(f"  by {method}", str(number), f"{100 * summary['certified_by_rate'][method]:.2f}")
    for key in ("unknown", "falsified", "misclassified"):
        table.add_row(key, str(counts[key]), f"{100 * rates[key]:.2f}")
    table.add_row("time / sample", f"{summary['seconds_per_sample']:.3f} s", "")
    return table
