"""Read an external verifier's VNN-COMP results back and merge them with tapsc's verdicts.

Accepted inputs:
- a CSV: any row holding a ``.vnnlib`` path (or ``.vnnlib.gz``) and a result word in
  some column (VNN-COMP's own results.csv has both; so does ``vnnlib_path,result``);
- a folder of result files, one per instance, whose name starts with the instance's
  VNN-LIB file stem (``prop_17.txt``, ``prop_17.vnnlib.result``...) and whose first
  line is the result word (a ``sat`` witness may follow).

Result words: ``unsat`` (robust), ``sat`` (counterexample), ``timeout``, ``unknown``,
``error``; older spellings ``holds``/``violated`` are read as ``unsat``/``sat``.

A verifier ``unsat`` for a sample tapsc falsified, or ``sat`` for one tapsc certified,
is a soundness conflict: one of the two tools is wrong. Conflicts are collected and
reported, never silently resolved.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from tapsc.certify.cascade import SampleVerdict
from tapsc.errors import Diagnostic, TapscError

RESULT_WORDS = {"unsat": "unsat", "holds": "unsat", "sat": "sat", "violated": "sat", "timeout": "timeout",
                "unknown": "unknown", "error": "error"}


@dataclass(frozen=True)
class Conflict:
    """The verifier and tapsc disagree about one sample."""

    index: int
    instance: str
    tapsc: str
    verifier: str

    def message(self) -> str:
        return (f"SOUNDNESS CONFLICT on sample {self.index} ({self.instance}): tapsc says {self.tapsc}, "
                f"the verifier says {self.verifier}")


def _word(text: str) -> str | None:
    return RESULT_WORDS.get(text.strip().lower())


def _instance_key(path: str) -> str:
    name = PurePosixPath(path.strip().replace("\\", "/")).name
    for suffix in (".gz", ".vnnlib"):
        name = name.removesuffix(suffix)
    return name


def read_results(path: Path) -> dict[str, str]:
    """Verifier results keyed by the VNN-LIB file stem (``prop_17``)."""
    path = Path(path)
    if not path.exists():
        raise TapscError(Diagnostic(code="no-verifier-results", message=f"verifier results not found: {path}",
                                    help="give a results CSV or a folder with one result file per instance"))
    return _read_folder(path) if path.is_dir() else _read_csv(path)


def _read_csv(path: Path) -> dict[str, str]:
    results: dict[str, str] = {}
    with path.open(newline="") as handle:
        for row in csv.reader(handle):
            instances = [cell for cell in row if ".vnnlib" in cell]
            words = [_word(cell) for cell in row if _word(cell)]
            if instances and words:
                results[_instance_key(instances[-1])] = words[-1]
    if not results:
        raise TapscError(Diagnostic(code="bad-verifier-results", message=f"no result rows in {path}",
                                    help="each row needs a .vnnlib path and one of: sat, unsat, timeout, unknown, error"))
    return results


def _read_folder(path: Path) -> dict[str, str]:
    results: dict[str, str] = {}
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        lines = file.read_text(errors="replace").split("\n", 1)
        word = _word(lines[0]) if lines else None
        if word is not None:
            results[_instance_key(file.name.split(".")[0])] = word
    return results


def merge(verdicts: Sequence[SampleVerdict], manifest: dict, results: dict[str, str]):
    """Combine tapsc's verdicts with verifier results (keyed by instance stem).

    Returns:
        (merged verdicts, conflicts, verifier result counts). A verifier ``unsat``
        turns an unknown sample into ``certified`` by method ``"verifier"``; a ``sat``
        turns it into ``falsified``.
    """
    by_index = {v.index: v for v in verdicts}
    merged = dict(by_index)
    conflicts: list[Conflict] = []
    counts: dict[str, int] = {}
    for instance in manifest["instances"]:
        word = results.get(_instance_key(instance["vnnlib"]))
        if word is None:
            continue
        counts[word] = counts.get(word, 0) + 1
        ours = by_index.get(instance["index"])
        tapsc_says = ours.verdict if ours is not None else instance.get("verdict", "unknown")
        if (word == "unsat" and tapsc_says in ("falsified", "misclassified")) or (
                word == "sat" and tapsc_says == "certified"):
            conflicts.append(Conflict(instance["index"], instance["vnnlib"], tapsc_says, word))
        elif ours is not None and ours.verdict == "unknown" and word in ("sat", "unsat"):
            merged[ours.index] = replace(ours, verdict="certified" if word == "unsat" else "falsified",
                                         method="verifier" if word == "unsat" else None)
    return [merged[v.index] for v in verdicts], conflicts, counts
