"""`tapsc sweep`: a grid of `--set` overrides, each point an ordinary run directory.

    tapsc sweep SPEC --set split.relus_in_classifier=0,1,3 --set method.taps.weight=1,5

A ``--set`` with several comma-separated values is an axis of the grid; one with a single
value applies to every point. Commas inside parentheses, brackets, braces or quotes do not
split, so ``--set "eval.metrics=(natural, taps),(natural, pgd)"`` has two values.

The sweep folder holds ``sweep.json`` (the spec path, the ``--set`` texts and the points),
one run directory per point (``03-path=value``), ``sweep.csv`` (rewritten after every
point) and the plots. Points run one after another in this process, or with ``parallel``
N > 1 up to N at once, each a ``tapsc run`` subprocess (its own GPU where there are several).
Running the same sweep again (or ``tapsc sweep --resume DIR``) skips finished points (they
have results.json), resumes an interrupted one through ``tapsc.train.run.resume_run`` (or
``tapsc run --resume``) and starts the rest.

This module knows nothing of Rich: progress goes to the ``on_point`` callback and the
runner's events to the emit that ``make_emit`` returns for each point.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tapsc import measures
from tapsc.errors import Diagnostic, TapscError

PR_SET_PDEATHSIG = 1  # prctl(2) option: a signal for this process when its parent dies

SWEEP_JSON, SWEEP_CSV = "sweep.json", "sweep.csv"
POINT_LOG = "sweep.log"  # a parallel point's stdout and stderr, inside its run directory
# the measures shown in a sweep (tapsc/measures.py): the computed ones from results.json, "complete"
# (certified accuracy after `tapsc verify`, a complete verifier on the cascade's unknown samples) from
# the run's certify.json
METRIC_COLUMNS = measures.names(measures.SWEEP)
CERTIFIED_ORDER = measures.names(measures.SWEEP, "sound")[::-1]  # the tightest certified accuracy a point has
_OPEN, _CLOSE = "([{", ")]}"


# ---------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Axis:
    """One swept setting: its override path and the values, as written."""

    path: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Point:
    index: int
    values: dict[str, str]  # swept path -> value text
    name: str  # the run directory's name inside the sweep folder

    def overrides(self) -> list[str]:
        return [f"{path}={value}" for path, value in self.values.items()]


def split_values(text: str) -> list[str]:
    """Split at top-level commas: not inside (), [], {} or quotes.

    >>> split_values("0.05,0.1, 8/255")
    ['0.05', '0.1', '8/255']
    >>> split_values("(natural, taps),(pgd)")
    ['(natural, taps)', '(pgd)']
    """
    parts, depth, quote, current = [], 0, None, []
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def parse_sets(sets: Sequence[str]) -> tuple[list[str], list[Axis]]:
    """(fixed overrides, axes) from ``--set path=v1,v2,...`` texts.

    Raises:
        TapscError: no ``=``, an empty value, or the same path given twice.
    """
    fixed, axes, seen = [], [], set()
    for text in sets:
        path, sep, rest = text.partition("=")
        path = path.strip()
        if not sep or not path:
            raise TapscError(Diagnostic(code="bad-sweep-set", message=f"cannot read `--set {text}`",
                                        help="write `--set path=v1,v2,...`, e.g. `--set perturbation.eps=0.05,0.1`"))
        values = split_values(rest)
        if any(not v for v in values):
            raise TapscError(Diagnostic(code="bad-sweep-set", message=f"`--set {text}` has an empty value",
                                        help="separate values with single commas: `path=v1,v2`"))
        if path in seen:
            raise TapscError(Diagnostic(code="bad-sweep-set", message=f"`{path}` is set twice",
                                        help="give every value of a setting in one `--set path=v1,v2,...`"))
        seen.add(path)
        if len(values) == 1:
            fixed.append(f"{path}={values[0]}")
        else:
            if len(set(values)) != len(values):
                raise TapscError(Diagnostic(code="bad-sweep-set", message=f"`--set {text}` repeats a value",
                                            help="list each value once"))
            axes.append(Axis(path, tuple(values)))
    return fixed, axes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_")[:80]


def grid(axes: Sequence[Axis]) -> list[Point]:
    """Every combination of the axes' values, first axis slowest."""
    points = []
    for index, combo in enumerate(itertools.product(*(axis.values for axis in axes))):
        values = {axis.path: value for axis, value in zip(axes, combo)}
        label = "_".join(f"{path.rsplit('.', 1)[-1]}={value}" for path, value in values.items()) or "point"
        points.append(Point(index, values, f"{index:02d}-{_slug(label)}"))
    return points


# ---------------------------------------------------------------- the sweep


@dataclass
class Sweep:
    """A grid over one spec, stored in ``folder``."""

    spec_path: Path
    sets: list[str]
    folder: Path
    fixed: list[str] = field(default_factory=list)
    axes: list[Axis] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)

    @classmethod
    def create(cls, spec_path: Path, sets: Sequence[str], folder: Path) -> Sweep:
        fixed, axes = parse_sets(sets)
        sweep = cls(Path(spec_path).resolve(), list(sets), Path(folder), fixed, axes, grid(axes))
        stored = sweep.folder / SWEEP_JSON
        if stored.is_file():
            before = json.loads(stored.read_text())
            if before.get("spec") != str(sweep.spec_path) or before.get("sets") != sweep.sets:
                raise TapscError(Diagnostic(
                    code="sweep-mismatch", message=f"{sweep.folder} holds a different sweep "
                    f"({before.get('spec')} with {' '.join('--set ' + s for s in before.get('sets', []))})",
                    help=f"resume it with `tapsc sweep --resume {sweep.folder}`, or choose another `--out`"))
        elif sweep.folder.exists() and (not sweep.folder.is_dir() or any(sweep.folder.iterdir())):
            raise TapscError(Diagnostic(code="sweep-folder-taken", message=f"{sweep.folder} exists and is not a sweep",
                                        help="choose another `--out`"))
        return sweep

    @classmethod
    def load(cls, folder: Path) -> Sweep:
        stored = Path(folder) / SWEEP_JSON
        if not stored.is_file():
            raise TapscError(Diagnostic(code="not-a-sweep", message=f"no {SWEEP_JSON} in {folder}",
                                        help="give the folder a `tapsc sweep` wrote (it holds sweep.json)"))
        data = json.loads(stored.read_text())
        return cls.create(Path(data["spec"]), data["sets"], Path(folder))

    def check(self) -> list[Any]:
        """Load the spec of every point (torch-free): a bad value fails before any training."""
        if not self.spec_path.is_file():
            raise TapscError(Diagnostic(code="missing-spec", message=f"no spec file at {self.spec_path}",
                                        help="pass the path of a .taps file"))
        from tapsc.language.spec import load_spec

        return [load_spec(self.spec_path, [*self.fixed, *point.overrides()]) for point in self.points]

    def write_manifest(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = {"spec": str(self.spec_path), "sets": self.sets, "fixed": self.fixed,
                    "axes": {axis.path: list(axis.values) for axis in self.axes},
                    "points": [{"index": p.index, "dir": p.name, "values": p.values} for p in self.points]}
        (self.folder / SWEEP_JSON).write_text(json.dumps(manifest, indent=2) + "\n")

    def run_dir(self, point: Point) -> Path:
        return self.folder / point.name


def point_status(run_dir: Path) -> str:
    """"done" (results.json), "interrupted" (a started run), or "new"."""
    if (run_dir / "results.json").is_file():
        return "done"
    if (run_dir / "ir.json").is_file():
        return "interrupted"
    return "new"


OnPoint = Callable[[Point, str, int], None]  # (point, what is happening, number of points)


def check_parallel(parallel: int) -> None:
    """Raises TapscError unless ``parallel`` (points trained at once) is at least 1."""
    if parallel < 1:
        raise TapscError(Diagnostic(code="bad-parallel", message=f"`--parallel {parallel}` would train no point",
                                    help="give how many points train at once: 1 (one after another, the "
                                         "default) or more, e.g. `--parallel 2`"))


def run_sweep(sweep: Sweep, options, make_emit: Callable[[Point], Any], on_point: OnPoint = lambda *a: None,
              parallel: int = 1) -> list[dict[str, Any]]:
    """Run every point not finished yet; returns the sweep.csv rows.

    Args:
        sweep: the grid (``Sweep.create`` or ``Sweep.load``).
        options: ``tapsc.train.run.RunOptions`` for every point.
        make_emit: gives the event receiver for one point's run (and may start a display);
            unused when ``parallel`` > 1 (each point's output goes to its sweep.log).
        on_point: told "skip", "resume", "start", "failed: ..." or "done" per point.
        parallel: 1 runs the points in order in this process; N > 1 runs up to N at once,
            each as a ``tapsc run`` subprocess (see ``run_parallel``).

    Raises:
        TapscError: ``parallel`` < 1, a spec point that does not check, a bad device, or
            (one at a time only) missing data. A point whose loss diverges (with N > 1: any
            point whose process fails) is recorded as failed and the sweep goes on.
    """
    from tapsc.train.run import TrainingDiverged, resume_run, start_run

    check_parallel(parallel)
    specs = sweep.check()
    sweep.write_manifest()
    if parallel > 1:
        return run_parallel(sweep, options, on_point, parallel)
    text = sweep.spec_path.read_text()
    failures: dict[int, str] = {}
    for point, spec in zip(sweep.points, specs):
        run_dir = sweep.run_dir(point)
        status = point_status(run_dir)
        if status == "done":
            on_point(point, "skip", len(sweep.points))
            continue
        on_point(point, "resume" if status == "interrupted" else "start", len(sweep.points))
        emit = make_emit(point)
        try:
            if status == "interrupted":
                resume_run(run_dir, options, emit)
            else:
                start_run(spec, text, run_dir, options, emit)
        except TrainingDiverged as error:
            failures[point.index] = error.diagnostics[0].message
            on_point(point, f"failed: {failures[point.index]}", len(sweep.points))
        finally:
            close = getattr(emit, "close", None)
            if close is not None:
                close()
        write_csv(sweep, collect(sweep, failures))
        on_point(point, "done", len(sweep.points))
    rows = collect(sweep, failures)
    write_csv(sweep, rows)
    return rows


# ---------------------------------------------------------------- several points at once


@dataclass
class _Job:
    point: Point
    process: subprocess.Popen
    log: IO[bytes]


def point_command(sweep: Sweep, point: Point, status: str, options) -> list[str]:
    """The ``tapsc run`` command line that trains (or resumes) one point exactly as the
    in-process sweep would: the same spec file and the same overrides in the same order."""
    run_dir = sweep.run_dir(point).resolve()
    if status == "interrupted":
        args = ["--resume", str(run_dir)]
    else:
        overrides = [*sweep.fixed, *point.overrides()]
        args = [str(sweep.spec_path), "--out", str(run_dir), *(a for o in overrides for a in ("--set", o))]
    return [sys.executable, "-m", "tapsc", "run", *args, *options.command_flags()]


def point_environment(slot: int, device: str, on_cpu: bool, parallel: int) -> dict[str, str]:
    """The environment of the subprocess in ``slot``: its own GPU (``device`` auto or cuda),
    or on the CPU an equal share of the cores unless OMP_NUM_THREADS is set already."""
    from tapsc.train.distributed import slot_environment

    env = dict(os.environ)
    if device in ("auto", "cuda"):  # "cuda:N" or "cpu" name the device for every point
        env.update(slot_environment(slot))
    if on_cpu and "OMP_NUM_THREADS" not in env:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores // parallel))
    return env


def run_parallel(sweep: Sweep, options, on_point: OnPoint, parallel: int) -> list[dict[str, Any]]:
    """Train up to ``parallel`` points at once, each a ``tapsc run`` subprocess writing into
    its run directory's sweep.log; a slot freed by a finished point takes the next one.

    A point that exits non-zero (or without results.json) is recorded as failed, with the
    end of its log, and the sweep goes on. Ctrl-C or SIGTERM stops the running points; they
    resume on the next run.
    """
    from tapsc.train.runtime import resolve_device

    on_cpu = resolve_device(options.device).type == "cpu"  # a bad device: one message, nothing started
    total, failures = len(sweep.points), {}
    pending = []
    for point in sweep.points:
        status = point_status(sweep.run_dir(point))
        if status == "done":
            on_point(point, "skip", total)
        else:
            pending.append((point, status))
    running: dict[int, _Job] = {}
    with _sigterm_as_interrupt():
        try:
            while pending or running:
                for slot in [s for s in range(parallel) if s not in running][:len(pending)]:
                    point, status = pending.pop(0)
                    on_point(point, "resume" if status == "interrupted" else "start", total)
                    running[slot] = _launch(sweep, point, status, options, point_environment(
                        slot, options.device, on_cpu, parallel))
                finished = [slot for slot, job in running.items() if job.process.poll() is not None]
                if not finished:
                    time.sleep(0.2)
                for slot in finished:
                    job = running.pop(slot)
                    job.log.close()
                    if job.process.returncode != 0 or point_status(sweep.run_dir(job.point)) != "done":
                        failures[job.point.index] = _failure(sweep.run_dir(job.point), job.process.returncode)
                    write_csv(sweep, collect(sweep, failures))
                    on_point(job.point, f"failed: {failures[job.point.index]}" if job.point.index in failures
                             else "done", total)
        finally:
            _stop([*running.values()])
    rows = collect(sweep, failures)
    write_csv(sweep, rows)
    return rows


def _launch(sweep: Sweep, point: Point, status: str, options, env: dict[str, str]) -> _Job:
    run_dir = sweep.run_dir(point)
    run_dir.mkdir(parents=True, exist_ok=True)  # `tapsc run --out` accepts a folder without ir.json
    log = (run_dir / POINT_LOG).open("ab")
    try:
        process = subprocess.Popen(point_command(sweep, point, status, options), stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=False,
                                   preexec_fn=_terminate_with_parent(os.getpid()))  # noqa: PLW1509
    except BaseException:
        log.close()
        raise
    return _Job(point, process, log)


def _terminate_with_parent(parent: int) -> Callable[[], None] | None:
    """For Popen's preexec_fn on Linux: the child gets SIGTERM when the sweep dies, even by
    SIGKILL (which no handler sees), so no point trains on as an orphan holding a GPU. Its
    last checkpoint stays, and ``tapsc sweep --resume`` picks it up."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:  # looked up here: between fork and exec the child should only make the call
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the sweep died before the request took hold
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def _failure(run_dir: Path, code: int, lines: int = 6) -> str:
    """The end of a failed point's log (where `tapsc run` printed its error)."""
    log = run_dir / POINT_LOG
    tail = [line.rstrip() for line in log.read_text(errors="replace").splitlines() if line.strip()][-lines:]
    return "\n".join([f"exit code {code}; the end of {log}:", *tail])


def _stop(jobs: Sequence[_Job], grace: float = 10.0) -> None:
    """Terminate the running points (their last checkpoints stay), killing any that linger."""
    for job in jobs:
        if job.process.poll() is None:
            job.process.terminate()
    for job in jobs:
        try:
            job.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            job.process.kill()
            job.process.wait()
        job.log.close()


@contextmanager
def _sigterm_as_interrupt():
    """While active (main thread only), SIGTERM raises KeyboardInterrupt, so `kill` of the
    sweep runs its cleanup and stops the points instead of orphaning them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


# ---------------------------------------------------------------- results


def collect(sweep: Sweep, failures: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """One row per point from its results.json (accuracies None where missing)."""
    rows = []
    for point in sweep.points:
        run_dir = sweep.run_dir(point)
        row: dict[str, Any] = {"point": point.index, **point.values}
        results_path = run_dir / "results.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        status = point_status(run_dir)
        if failures and point.index in failures:
            status = "failed"
        row["status"] = status
        metrics = results.get("metrics", {})
        row.update({name: metrics.get(name) for name in METRIC_COLUMNS})
        row["complete"] = _complete_rate(run_dir)
        row["train_seconds"] = results.get("train_seconds")
        best = results.get("best") or {}
        row["best_epoch"] = best.get("epoch")
        row["run_dir"] = str(run_dir)
        rows.append(row)
    return rows


def _complete_rate(run_dir: Path) -> float | None:
    from tapsc.certify.report import read_complete

    complete = read_complete(run_dir)
    return None if complete is None else complete.get("rate")


def columns(sweep: Sweep) -> list[str]:
    return ["point", *(axis.path for axis in sweep.axes), "status", *METRIC_COLUMNS, "train_seconds", "best_epoch",
            "run_dir"]


def write_csv(sweep: Sweep, rows: Sequence[dict[str, Any]]) -> Path:
    """Write sweep.csv atomically-enough (a temporary file renamed over the old one)."""
    path = sweep.folder / SWEEP_CSV
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns(sweep), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    tmp.replace(path)
    return path


def certified_column(rows: Sequence[dict[str, Any]]) -> str | None:
    """The tightest certification metric every finished point has."""
    done = [r for r in rows if r["status"] == "done"]
    for name in CERTIFIED_ORDER:
        if done and all(r.get(name) is not None for r in done):
            return name
    return None


def taps_accuracy_correlation(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Table 9 over the points: TAPS accuracy against PGD and certified accuracy (sweep.json's
    ``correlation``)."""
    from tapsc.experiments.analysis import correlation

    done = [r for r in rows if r["status"] == "done" and r.get("taps") is not None]
    result: dict[str, Any] = {"points": len(done)}
    if done and all(r.get("pgd") is not None for r in done):
        result["taps_vs_pgd"] = correlation([r["taps"] for r in done], [r["pgd"] for r in done])
    certified = certified_column(done)
    if certified:
        result["certified_metric"] = certified
        result["taps_vs_certified"] = correlation([r["taps"] for r in done], [r[certified] for r in done])
    return result


def plot(sweep: Sweep, rows: Sequence[dict[str, Any]]) -> list[Path]:
    """One PNG per swept setting: accuracies against its values."""
    from tapsc.experiments.plots import sweep_accuracy

    done = [r for r in rows if r["status"] == "done"]
    if not done or not sweep.axes:
        return []
    paths = []
    for axis in sweep.axes:
        others = [a.path for a in sweep.axes if a is not axis]
        name = f"sweep-{_slug(axis.path)}.png"
        paths.append(sweep_accuracy(done, axis.path, others, METRIC_COLUMNS, sweep.folder / name,
                                    title=f"{sweep.spec_path.name}: accuracy vs {axis.path}"))
    return paths


def default_folder(spec_path: Path) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(spec_path).stem) or "sweep"
    return Path("runs") / f"sweep-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
