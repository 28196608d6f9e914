"""Merge external verifiers' VNN-COMP results into tapsc's verdicts, checking every claim.

A verifier's word is never taken as it is:

- the benchmark must be the one certified: its manifest's provenance (eps, norm, dataset,
  split, checkpoint and spec sha256) must equal certify.json's, its ONNX file must be the
  one exported (sha256), and each property read back must state the manifest's eps and
  the sample's label (`load_benchmark`, `check_provenance`; a mismatch is an error);
- a ``sat`` counts only with a witness that lies in the property's box (up to the VNN-COMP
  scorer's 1e-4 input slack) and that, clipped into the box and replayed through the
  exported ONNX with onnxruntime, lands in the property's unsafe region (zero tolerance);
  otherwise the sample stays unknown and the answer is a problem naming the tool, the
  instance and the reason (`check_answer`);
- an ``unsat`` for a sample with a counterexample (tapsc's attack, a misclassified box
  centre, or another tool's checked witness) is a conflict: reported, never counted;
- every other word (timeout, unknown, error, the runner's own words) is counted as
  unknown with its reason.

Merges accumulate: each merged results file is kept (tool, path, sha256, every checked
answer), and the verdicts are recomputed from the in-house verdicts and all merged
answers (`combine`), so two tools, or two runs of one, add up; merging the same file of
the same tool again replaces it.

API (used by ``tapsc certify --merge``)::

    benchmark = load_benchmark(folder)
    check_provenance(certify_settings, benchmark)
    report = merge(verdicts, benchmark, [ResultsFile(path, "neuralsat")], previous)
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from tapsc.certify.cascade import SampleVerdict
from tapsc.certify.linear import METHODS
from tapsc.certify.results import (
    Answer,
    InstanceIndex,
    ResultsFile,
    non_answer_reason,
    parse_witness,
    read_answers,
)
from tapsc.errors import Diagnostic, TapscError
from tapsc.export.vnnlib import Property, read_property

PROVENANCE_FIELDS = ("eps", "norm", "dataset", "split", "test_subset", "checkpoint_sha256", "spec_sha256")
INPUT_SLACK = 1e-4  # the VNN-COMP scorer's "correct up to tolerance" on a witness's inputs
INHOUSE_SOURCES = frozenset(METHODS) | {"attack", "prediction"}


# ---------------------------------------------------------------- the benchmark


@dataclass(frozen=True)
class Instance:
    index: int
    label: int
    onnx: str  # relative to the benchmark folder
    vnnlib: str


@dataclass
class Benchmark:
    """An exported VNN-COMP folder: manifest, instances, properties and ONNX sessions (read lazily)."""

    folder: Path
    manifest: dict
    instances: dict[tuple[str, str], Instance]
    _properties: dict = field(default_factory=dict)
    _sessions: dict = field(default_factory=dict)

    def index(self) -> InstanceIndex:
        return InstanceIndex(self.folder, list(self.instances))

    def property(self, instance: Instance) -> Property:
        """The instance's property, checked against the manifest (eps, label).

        Raises:
            TapscError: the file is missing, unreadable, or states another eps or label.
        """
        if instance.vnnlib not in self._properties:
            path = self.folder / instance.vnnlib
            try:
                prop = read_property(path)
            except (OSError, ValueError, UnicodeDecodeError) as error:
                raise TapscError(Diagnostic(code="bad-benchmark", message=f"cannot read {path}: {error}",
                                            help="re-export the benchmark with `tapsc export`")) from None
            _check_property(prop, instance, float(self.manifest["eps"]), path)
            self._properties[instance.vnnlib] = prop
        return self._properties[instance.vnnlib]

    def replay(self, onnx: str, x: np.ndarray) -> np.ndarray:
        """The ONNX network's output on the flat input ``x`` (C order, batch 1), with onnxruntime on CPU."""
        import onnxruntime

        if onnx not in self._sessions:
            self._sessions[onnx] = onnxruntime.InferenceSession(str(self.folder / onnx),
                                                                providers=["CPUExecutionProvider"])
        session = self._sessions[onnx]
        node = session.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in node.shape]
        if math.prod(shape) != x.size:
            raise ValueError(f"the witness has {x.size} inputs, {onnx} takes {math.prod(shape)}")
        return np.asarray(session.run(None, {node.name: x.astype(np.float32).reshape(shape)})[0]).reshape(-1)


def _check_property(prop: Property, instance: Instance, eps: float, path: Path) -> None:
    half = (prop.upper - prop.lower) / 2
    inside = (prop.lower > 0) & (prop.upper < 1)
    radius = float(half[inside].max()) if inside.any() else None
    if (half > eps + 1e-9).any() or (radius is not None and not math.isclose(radius, eps, rel_tol=1e-6,
                                                                               abs_tol=1e-9)):
        raise TapscError(Diagnostic(code="benchmark-mismatch", message=f"{path} states a box of radius "
                                    f"{float(half.max()):g}, manifest.json says eps {eps:g}",
                                    help="the folder mixes exports: re-export it with `tapsc export`"))
    label = prop.robustness_label()
    if label != instance.label:
        raise TapscError(Diagnostic(code="benchmark-mismatch", message=f"{path} is a property of label {label}, "
                                    f"manifest.json says sample {instance.index} has label {instance.label}",
                                    help="the folder mixes exports: re-export it with `tapsc export`"))


def load_benchmark(folder: Path) -> Benchmark:
    """Read an exported folder's manifest.json and check its ONNX files are the exported ones.

    Raises:
        TapscError: no manifest, a missing file, or an ONNX file whose sha256 differs.
    """
    from tapsc.export.benchmark import file_sha256

    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise TapscError(Diagnostic(code="no-manifest", message=f"no {path}",
                                    help="give the exported folder with `--benchmark DIR` (it holds manifest.json)"))
    try:
        manifest = json.loads(path.read_text())
        instances = {(m["onnx"], m["vnnlib"]): Instance(int(m["index"]), int(m["label"]), m["onnx"], m["vnnlib"])
                     for m in manifest["instances"]}
    except (ValueError, KeyError, TypeError) as error:
        raise TapscError(Diagnostic(code="bad-benchmark", message=f"{path} is not a tapsc export manifest "
                                    f"({error})", help="re-export the benchmark with `tapsc export`")) from None
    if not instances:
        raise TapscError(Diagnostic(code="bad-benchmark", message=f"{path} lists no instances",
                                    help="export properties with `tapsc export --vnnlib`"))
    for onnx in sorted({i.onnx for i in instances.values()}):
        file = folder / onnx
        if not file.is_file():
            raise TapscError(Diagnostic(code="bad-benchmark", message=f"{file} is missing",
                                        help="export the network with `tapsc export --onnx`"))
        expected = manifest.get("onnx_sha256")
        actual = file_sha256(file)
        if expected != actual:
            raise TapscError(Diagnostic(code="benchmark-mismatch", message=f"{file} has sha256 {actual}, "
                                        f"manifest.json says onnx_sha256 = {expected}",
                                        help="the network was re-exported after the properties: export both "
                                             "again (`tapsc export` without --onnx/--vnnlib)"))
    return Benchmark(folder, manifest, instances)


def check_provenance(certify_settings: dict, benchmark: Benchmark) -> None:
    """The benchmark was exported from what certify.json certified: every provenance field agrees.

    Raises:
        TapscError: one diagnostic per field that differs or is missing, naming both values.
    """
    ours = certify_settings.get("provenance") or {}
    theirs = benchmark.manifest.get("provenance") or {}
    for name, found, fix in (("certify.json", ours, "re-run `tapsc certify`"),
                             ("the benchmark's manifest.json", theirs, "re-export with `tapsc export`")):
        if not found:
            raise TapscError(Diagnostic(code="benchmark-mismatch", message=f"{name} records no provenance "
                                        "(eps, checkpoint and spec sha256): it was written by an older tapsc",
                                        help=f"{fix}, so the merge can check both come from the same network"))
    problems = []
    for name in PROVENANCE_FIELDS:
        mine, other = ours.get(name, "<missing>"), theirs.get(name, "<missing>")
        same = (math.isclose(mine, other, rel_tol=1e-9, abs_tol=1e-12)
                if isinstance(mine, float | int) and isinstance(other, float | int) else mine == other)
        if not same or name not in ours or name not in theirs:
            problems.append(Diagnostic(
                code="benchmark-mismatch", message=f"{name} differs: the benchmark's manifest.json says {other}, "
                f"certify.json says {mine}",
                help="merge results of a benchmark exported from the certified run, checkpoint and eps "
                     "(`tapsc export RUN`), or re-run `tapsc certify` to match it"))
    if problems:
        raise TapscError(problems)


# ---------------------------------------------------------------- checking answers


@dataclass(frozen=True)
class Checked:
    """One answer after checking: ``outcome`` is ``sat`` or ``unsat`` when it counts, else ``unknown``."""

    tool: str
    where: str
    index: int
    onnx: str
    vnnlib: str
    word: str
    outcome: str
    reason: str | None = None  # why it does not count (or what the replay found)
    rejected: bool = False  # a sat whose witness failed a check: a wrong answer

    @classmethod
    def from_row(cls, row: dict) -> Checked:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})


def check_answer(answer: Answer, instance: Instance, benchmark: Benchmark) -> Checked:
    """Judge one answer: a ``sat`` needs a witness in the box that the ONNX replay confirms."""
    base = Checked(answer.tool, answer.where, instance.index, answer.onnx, answer.vnnlib, answer.word, "unknown")
    if answer.word == "unsat":
        return replace(base, outcome="unsat")
    if answer.word != "sat":
        return replace(base, reason=non_answer_reason(answer.word))
    reason = _witness_problem(answer, instance, benchmark)
    return replace(base, outcome="sat") if reason is None else replace(base, reason=reason, rejected=True)


def _witness_problem(answer: Answer, instance: Instance, benchmark: Benchmark) -> str | None:
    values, reason = parse_witness(answer.witness)
    if reason is not None:
        return reason
    prop = benchmark.property(instance)
    x = np.asarray(values, dtype=np.float64)
    if x.size != prop.lower.size:
        return f"the counterexample has {x.size} input values, the property has {prop.lower.size}"
    if not np.isfinite(x).all():
        return "the counterexample holds a non-finite value"
    excess = np.maximum(prop.lower - x, x - prop.upper)
    worst = int(excess.argmax())
    if excess[worst] > INPUT_SLACK:
        return (f"X_{worst} = {x[worst]:.6g} lies outside the box [{prop.lower[worst]:.6g}, "
                f"{prop.upper[worst]:.6g}] by {excess[worst]:.3g} (the scorer allows {INPUT_SLACK:g})")
    point = np.clip(x, prop.lower, prop.upper)
    try:
        y = benchmark.replay(answer.onnx, point)
    except (ValueError, RuntimeError) as error:
        return f"the counterexample cannot be replayed: {str(error).splitlines()[0]}"
    except ImportError:
        return "onnxruntime is not installed: the counterexample cannot be replayed"
    if y.size != prop.outputs:
        return f"{answer.onnx} gives {y.size} outputs, the property has {prop.outputs}"
    if not prop.violated_by(y):
        margin = float(y[instance.label] - np.delete(y, instance.label).max())
        return (f"replayed through {answer.onnx} with onnxruntime, the counterexample does not violate the "
                f"property (label {instance.label} still wins by {margin:.3g})")
    return None


# ---------------------------------------------------------------- merged files and the combination


@dataclass
class MergedFile:
    """One merged results file: its tool, what it said, and what was made of it."""

    tool: str
    path: str
    sha256: str
    benchmark: str
    answers: list[Checked]
    unmatched: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Words as the tool (or runner) wrote them, plus how many sats were rejected."""
        counts = Counter(a.word or "no result word" for a in self.answers)
        rejected = sum(a.rejected for a in self.answers)
        return {**dict(sorted(counts.items())), **({"sat rejected": rejected} if rejected else {})}

    def row(self) -> dict:
        return {"tool": self.tool, "path": self.path, "sha256": self.sha256, "benchmark": self.benchmark,
                "counts": self.counts(), "unmatched": self.unmatched, "answers": [asdict(a) for a in self.answers]}

    @classmethod
    def from_row(cls, row: dict) -> MergedFile:
        return cls(row["tool"], row["path"], row["sha256"], row.get("benchmark", ""),
                   [Checked.from_row(a) for a in row.get("answers", [])], list(row.get("unmatched", [])))


@dataclass(frozen=True)
class Problem:
    """An answer that does not count, or a result row that names no instance."""

    tool: str
    where: str
    instance: str
    reason: str

    def message(self) -> str:
        return f"{self.tool}: {self.instance}: {self.reason} ({self.where})"


@dataclass(frozen=True)
class Conflict:
    """A proof (``unsat`` or an in-house certificate) against a checked counterexample."""

    index: int
    instance: str
    proved_by: str
    falsified_by: str

    def message(self) -> str:
        return (f"SOUNDNESS CONFLICT on sample {self.index} ({self.instance}): {self.proved_by} says robust, "
                f"{self.falsified_by} has a counterexample; the proof is not counted")


@dataclass
class MergeReport:
    verdicts: list[SampleVerdict]
    files: list[MergedFile]
    problems: list[Problem]
    conflicts: list[Conflict]


def check_tool_name(tool: str) -> None:
    """A tool name is a plain word and not an in-house source (it becomes a sample's ``source``)."""
    if not tool or not all(c.isalnum() or c in "_.-" for c in tool) or tool in INHOUSE_SOURCES:
        raise TapscError(Diagnostic(code="bad-tool-name", message=f"`{tool}` cannot name a verifier",
                                    help="use letters, digits, `_`, `.`, `-`, and not one of "
                                         f"{', '.join(sorted(INHOUSE_SOURCES))}"))


def read_file(results: ResultsFile, benchmark: Benchmark) -> MergedFile:
    """Read and check every answer of one results file against ``benchmark``."""
    check_tool_name(results.tool)
    answers, unmatched = read_answers(results, benchmark.index())
    checked = [check_answer(a, benchmark.instances[(a.onnx, a.vnnlib)], benchmark) for a in answers]
    return MergedFile(results.tool, str(results.path), results.sha256(), str(benchmark.folder), checked, unmatched)


def merge(verdicts: Sequence[SampleVerdict], benchmark: Benchmark, results: Sequence[ResultsFile],
          previous: Sequence[MergedFile] = ()) -> MergeReport:
    """Check ``results`` against ``benchmark`` and combine them, and the ``previous`` merges, with ``verdicts``.

    A previous merge of the same file (same tool and sha256) is replaced, not counted twice.
    """
    new = [read_file(r, benchmark) for r in results]
    fresh = {(f.tool, f.sha256) for f in new}
    files = [f for f in previous if (f.tool, f.sha256) not in fresh] + new
    merged, problems, conflicts = combine(verdicts, files)
    return MergeReport(merged, files, problems, conflicts)


def inhouse(verdict: SampleVerdict) -> SampleVerdict:
    """The cascade's own verdict: one a merge decided goes back to unknown."""
    if verdict.source is None or verdict.source in INHOUSE_SOURCES:
        return verdict
    return replace(verdict, verdict="unknown", method=None, source=None)


def combine(verdicts: Sequence[SampleVerdict], files: Sequence[MergedFile]):
    """Verdicts from the in-house ones and every checked answer of ``files`` (in order).

    An unknown sample becomes ``falsified`` on a checked ``sat`` (source: that tool) or
    else ``certified`` on an ``unsat`` (method and source: that tool). An ``unsat``
    against a counterexample, or a checked ``sat`` against an in-house certificate, is
    a conflict; the verdict then rests on the counterexample (or stays the in-house one).

    Returns:
        (verdicts, problems, conflicts)
    """
    base = {v.index: inhouse(v) for v in verdicts}
    answers: dict[int, list[Checked]] = {}
    problems = []
    for file in files:
        problems += [Problem(file.tool, note.split(" ", 1)[0], "-", "names no instance of the benchmark: " + note)
                     for note in file.unmatched]
        for answer in file.answers:
            if answer.rejected:
                problems.append(Problem(answer.tool, answer.where, answer.vnnlib, answer.reason or "rejected"))
            if answer.index not in base:
                problems.append(Problem(answer.tool, answer.where, answer.vnnlib,
                                        f"sample {answer.index} is not in certify.json; not merged"))
                continue
            answers.setdefault(answer.index, []).append(answer)
    merged, conflicts = dict(base), []
    for index, given in answers.items():
        ours = base[index]
        sats = [a for a in given if a.outcome == "sat"]
        unsats = [a for a in given if a.outcome == "unsat"]
        falsifier = (f"tapsc ({ours.source or ours.verdict})" if ours.verdict in ("falsified", "misclassified")
                     else f"{sats[0].tool} (checked witness)" if sats else None)
        for unsat in unsats:
            if falsifier is not None:
                conflicts.append(Conflict(index, unsat.vnnlib, unsat.tool, falsifier))
        if ours.verdict == "certified" and sats:
            conflicts.append(Conflict(index, sats[0].vnnlib, f"tapsc ({ours.method})",
                                      f"{sats[0].tool} (checked witness)"))
        if ours.verdict != "unknown":
            continue
        if sats:
            merged[index] = replace(ours, verdict="falsified", method=None, source=sats[0].tool)
        elif unsats:
            merged[index] = replace(ours, verdict="certified", method=unsats[0].tool, source=unsats[0].tool)
    return [merged[v.index] for v in verdicts], problems, conflicts
