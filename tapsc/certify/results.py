"""Read an external verifier's VNN-COMP results: which instance, which word, which witness.

Nothing here judges an answer (`tapsc.certify.merge` checks witnesses and combines);
this module only reads, and matches every answer to a benchmark instance by its
(onnx, vnnlib) pair of paths, never by a file stem alone.

Accepted inputs:
- a CSV such as the VNN-COMP runner's ``results.csv`` (``category,onnx,vnnlib,prepare,
  result,time``, no header), or any CSV with a ``.vnnlib`` path, optionally an ``.onnx``
  path (needed when the benchmark has several networks), a result word, and optionally
  the witness text in a cell. A header row naming a ``result`` column is used when
  present. A ``sat`` row's witness may instead sit beside the CSV in the runner's
  counterexample file ``<onnx stem>_<vnnlib stem>.counterexample`` (or ``.gz``);
- a folder holding such CSVs (and counterexample files);
- a folder of one result file per instance, named as the runner names them,
  ``<onnx stem>_<vnnlib stem>`` plus any extension; the first line is the result word,
  the witness may follow (or sit in the ``.counterexample`` file).

Words: VNN-COMP's ``unsat``, ``sat``, ``timeout``, ``unknown``, ``error`` (and the older
``holds``/``violated``), and the runner's own ``run_instance_timeout``,
``error_exit_code_N``, ``prepare_instance_error_N``, ``no_result_in_file``. Every row
and file naming an instance is kept; a word that is none of these is kept too, and the
merge counts it as unknown with the reason.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tapsc.errors import Diagnostic, TapscError

ANSWERS = {"unsat": "unsat", "holds": "unsat", "sat": "sat", "violated": "sat"}
NON_ANSWERS = {
    "timeout": "the tool timed out",
    "unknown": "the tool answered unknown",
    "error": "the tool reported an error",
    "run_instance_timeout": "the runner killed run_instance.sh at its timeout",
    "no_result_in_file": "the tool wrote no result",
}
RUNNER_PATTERNS = (
    (re.compile(r"error_exit_code_(-?\d+)"), "run_instance.sh exited with code {}"),
    (re.compile(r"prepare_instance_error_(-?\d+)"), "prepare_instance.sh failed with code {}"),
)
WITNESS_PAIR = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")


def normal_word(text: str) -> str:
    """The result word as compared: stripped and lower case (``holds``/``violated`` renamed)."""
    word = text.strip().lower()
    return ANSWERS.get(word, word)


def known_word(word: str) -> bool:
    return word in ANSWERS.values() or word in NON_ANSWERS or any(p.fullmatch(word) for p, _ in RUNNER_PATTERNS)


def non_answer_reason(word: str) -> str:
    """Why a word that is neither ``sat`` nor ``unsat`` leaves the sample unknown."""
    if word in NON_ANSWERS:
        return NON_ANSWERS[word]
    for pattern, text in RUNNER_PATTERNS:
        if match := pattern.fullmatch(word):
            return text.format(match.group(1))
    return f"unrecognised result word {word[:40]!r}" if word else "no result word"


@dataclass(frozen=True)
class Answer:
    """One verifier answer for one benchmark instance, as read (nothing checked yet)."""

    tool: str
    where: str  # the file (and CSV row) it came from
    onnx: str  # the instance's paths, relative to the benchmark folder
    vnnlib: str
    word: str  # `normal_word` of what the tool (or runner) wrote
    witness: str | None  # the counterexample text, if any


@dataclass(frozen=True)
class ResultsFile:
    """A results file or folder and the tool that produced it."""

    path: Path
    tool: str

    def sha256(self) -> str:
        """A digest of the file (or of the folder's files, by name), to recognise a re-merge."""
        digest = hashlib.sha256()
        files = [self.path] if self.path.is_file() else sorted(p for p in self.path.rglob("*") if p.is_file())
        for file in files:
            digest.update(file.relative_to(self.path).as_posix().encode() if file != self.path else b"")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
        return digest.hexdigest()


def _clean(path: str) -> PurePosixPath:
    text = path.strip().replace("\\", "/")
    return PurePosixPath(text[2:] if text.startswith("./") else text)


def _stem(path: str) -> str:
    name = _clean(path).name
    for suffix in (".gz", ".onnx", ".vnnlib"):
        name = name.removesuffix(suffix)
    return name


def runner_name(onnx: str, vnnlib: str) -> str:
    """The VNN-COMP runner's per-instance file name: ``<onnx stem>_<vnnlib stem>``."""
    return f"{_stem(onnx)}_{_stem(vnnlib)}"


class InstanceIndex:
    """The benchmark's (onnx, vnnlib) pairs, to match the paths a results file names."""

    def __init__(self, folder: Path, pairs: Sequence[tuple[str, str]]):
        self.folder = Path(folder).resolve()
        self.pairs = list(pairs)
        self.onnx_files = sorted({onnx for onnx, _ in self.pairs})
        self.by_runner_name = {runner_name(o, v): (o, v) for o, v in self.pairs}

    def _same(self, given: str, ours: str) -> bool:
        """``given`` names the benchmark file ``ours`` (relative path, a path ending in it, or absolute)."""
        path, mine = _clean(given), PurePosixPath(ours)
        if path.is_absolute():
            return Path(str(path)).resolve() == self.folder / ours
        return path.parts[-len(mine.parts):] == mine.parts

    def match(self, onnx: str | None, vnnlib: str) -> tuple[str, str] | None:
        """The instance a row names; with no onnx path, only when the benchmark has one network."""
        if onnx is None and len(self.onnx_files) != 1:
            return None
        for ours_onnx, ours_vnnlib in self.pairs:
            if self._same(vnnlib, ours_vnnlib) and (onnx is None or self._same(onnx, ours_onnx)):
                return ours_onnx, ours_vnnlib
        return None


def read_answers(results: ResultsFile, instances: InstanceIndex) -> tuple[list[Answer], list[str]]:
    """Every answer in ``results`` that names an instance, and a note for each row or file that names none.

    Raises:
        TapscError: the path does not exist, holds no results, or names no instance of the benchmark.
    """
    path = results.path
    if not path.exists():
        raise TapscError(Diagnostic(code="no-verifier-results", message=f"verifier results not found: {path}",
                                    help="give a results CSV or a folder of result files"))
    if path.is_file():
        answers, unmatched = _read_csv(path, results.tool, instances)
    else:
        tables = sorted(path.glob("*.csv"))
        if tables:
            answers, unmatched = [], []
            for table in tables:
                more, missed = _read_csv(table, results.tool, instances)
                answers += more
                unmatched += missed
        else:
            answers, unmatched = _read_folder(path, results.tool, instances)
    if not answers:
        shown = "; ".join(unmatched[:3]) or "no result rows or files"
        raise TapscError(Diagnostic(
            code="unmatched-verifier-results", message=f"{path} holds no result for any instance of the benchmark "
            f"{instances.folder}: {shown}",
            help="give the results of this benchmark: CSV rows name the instance's onnx and vnnlib paths (as in "
                 "instances.csv), result files are named <onnx stem>_<vnnlib stem> as VNN-COMP's runner names them"))
    return answers, unmatched


def _counterexample_file(folder: Path, onnx: str, vnnlib: str) -> str | None:
    for name in (f"{runner_name(onnx, vnnlib)}.counterexample", f"{runner_name(onnx, vnnlib)}.counterexample.gz"):
        if (folder / name).is_file():
            return _read_text(folder / name)
    return None


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode(errors="replace")


def _read_csv(path: Path, tool: str, instances: InstanceIndex) -> tuple[list[Answer], list[str]]:
    with path.open(newline="", errors="replace") as handle:
        rows = list(csv.reader(handle))
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    result_column = header.index("result") if "result" in header and not any(".vnnlib" in c for c in header) else None
    answers, unmatched = [], []
    for number, row in enumerate(rows, start=1):
        vnnlib = [cell for cell in row if ".vnnlib" in cell and "(" not in cell]
        if not vnnlib:
            continue
        onnx = [cell for cell in row if cell.strip().endswith((".onnx", ".onnx.gz"))]
        where = f"{path}:{number}"
        pair = instances.match(onnx[-1] if onnx else None, vnnlib[-1])
        if pair is None:
            unmatched.append(f"{where} names {vnnlib[-1].strip()}"
                             + (f" with {onnx[-1].strip()}" if onnx else " (no onnx path)"))
            continue
        if result_column is not None and result_column < len(row):
            word = normal_word(row[result_column])
        else:
            words = [normal_word(cell) for cell in row if known_word(normal_word(cell))]
            word = words[0] if words else _unknown_word_cell(row, row.index(vnnlib[-1]))
        witness = next((cell for cell in row if WITNESS_PAIR.search(cell)), None)
        if witness is None and word == "sat":
            witness = _counterexample_file(path.parent, *pair)
        answers.append(Answer(tool, where, pair[0], pair[1], word, witness))
    return answers, unmatched


def _unknown_word_cell(row: list[str], at: int) -> str:
    """An unrecognised word, kept rather than dropped: the VNN-COMP runner's column (two after
    the vnnlib path, with a time after it) or else the cell after the vnnlib path."""
    column = at + 2 if len(row) >= at + 4 else at + 1
    return normal_word(row[column]) if column < len(row) else ""


def _read_folder(path: Path, tool: str, instances: InstanceIndex) -> tuple[list[Answer], list[str]]:
    answers, unmatched = [], []
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        if ".counterexample" in file.name:
            continue
        pair = _instance_of(file.name, instances)
        if pair is None:
            unmatched.append(f"{file.name} is not <onnx stem>_<vnnlib stem> of an instance")
            continue
        first, _, rest = _read_text(file).partition("\n")
        word = normal_word(first)
        witness = rest if WITNESS_PAIR.search(rest) else None
        if witness is None and word == "sat":
            witness = _counterexample_file(path, *pair)
        answers.append(Answer(tool, str(file), pair[0], pair[1], word, witness))
    return answers, unmatched


def _instance_of(name: str, instances: InstanceIndex) -> tuple[str, str] | None:
    """The instance a runner-named file belongs to (``net_prop_3.result`` -> net.onnx, prop_3.vnnlib)."""
    base = name
    while base:
        if base in instances.by_runner_name:
            return instances.by_runner_name[base]
        base = base.rsplit(".", 1)[0] if "." in base else ""
    return None


def parse_witness(text: str | None) -> tuple[list[float] | None, str | None]:
    """The X values of a VNN-COMP counterexample ``((X_0 v) ... (Y_0 v) ...)``, in index order.

    Returns:
        ``(values, None)``, or ``(None, reason)`` when there is no usable witness. The Y
        values are ignored: the output is replayed, never taken from the tool.
    """
    if text is None or not WITNESS_PAIR.search(text):
        return None, "sat without a counterexample (no ((X_0 v) ...) witness)"
    values: dict[int, float] = {}
    for kind, index, value in WITNESS_PAIR.findall(text):
        if kind != "X":
            continue
        try:
            number = float(value)
        except ValueError:
            return None, f"X_{index} = {value[:20]!r} is not a number"
        if int(index) in values:
            return None, f"X_{index} is given twice"
        values[int(index)] = number
    if not values:
        return None, "the counterexample has no X values"
    if sorted(values) != list(range(len(values))):
        missing = sorted(set(range(max(values) + 1)) - set(values))
        return None, f"the counterexample lacks X_{missing[0]}"
    return [values[i] for i in range(len(values))], None
