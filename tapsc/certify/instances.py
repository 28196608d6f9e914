"""Run a complete verifier on benchmark instances the way VNN-COMP's runner does, and
resumably: one process group per instance, a timeout that kills the whole group, N at a
time, and one result file per instance written atomically when it finishes.

Per instance ``<onnx stem>_<vnnlib stem>`` (the runner's name):

- ``prepare`` (if the verifier has one) runs first, killed after `PREPARE_LIMIT` s; a
  non-zero exit is the runner's ``prepare_instance_error_N`` (N = 124 when killed) and
  the run is skipped;
- the run gets ``timeout`` seconds (passed to the tool) and is killed, with every process
  of its session (SIGTERM, then SIGKILL after `TERM_GRACE` s), at ``timeout + grace``:
  ``run_instance_timeout``; a non-zero exit is ``error_exit_code_N``; an empty or missing
  result file is ``no_result_in_file``; otherwise the tool's file is kept as it is (first
  line the word, a witness after a ``sat``);
- ``results/<name>.txt`` is then written atomically; what the tool printed goes to
  ``logs/<name>.log``.

An instance whose result file already says ``sat`` or ``unsat`` is not run again
(`decided`), so an interrupted `run_instances` resumes where it stopped. Nothing here
judges an answer: ``tapsc.certify.merge`` does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tapsc.certify.results import normal_word

PREPARE_LIMIT = 600.0  # seconds, as VNN-COMP's runner allows prepare_instance.sh
PREPARE_KILLED = 124  # the code recorded for a prepare killed at its limit (GNU timeout's)
TERM_GRACE = 2.0  # seconds between SIGTERM and SIGKILL of a timed-out process group


@dataclass(frozen=True)
class Job:
    """One instance to run: its runner name and absolute paths."""

    name: str  # <onnx stem>_<vnnlib stem>
    onnx: Path
    vnnlib: Path


@dataclass(frozen=True)
class Outcome:
    """What happened to one instance: the result word, seconds spent, whether it was skipped."""

    name: str
    word: str
    seconds: float
    skipped: bool = False


class Commands:
    """What a verifier driver gives the runner (see tapsc.certify.verifiers)."""

    cwd: Path | None = None

    def prepare(self, job: Job) -> list[str] | None:  # pragma: no cover - interface
        return None

    def run(self, job: Job, result_file: Path, timeout: float) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError


def result_path(folder: Path, job: Job) -> Path:
    return Path(folder) / "results" / f"{job.name}.txt"


def decided(path: Path) -> str | None:
    """``sat``/``unsat`` if ``path`` is a result file that already says so, else None."""
    if not path.is_file():
        return None
    word = normal_word(path.read_text(errors="replace").partition("\n")[0])
    return word if word in ("sat", "unsat") else None


class _Live:
    """The process groups running now, so an interrupt can kill them all."""

    def __init__(self):
        self.lock = threading.Lock()
        self.processes: set[subprocess.Popen] = set()
        self.stopping = False  # set by kill_all: what the kill ends is no verifier's answer

    def add(self, process: subprocess.Popen) -> None:
        with self.lock:
            self.processes.add(process)

    def discard(self, process: subprocess.Popen) -> None:
        with self.lock:
            self.processes.discard(process)

    def kill_all(self) -> None:
        with self.lock:
            self.stopping = True
            processes = list(self.processes)
        for process in processes:
            kill_group(process)


def kill_group(process: subprocess.Popen) -> None:
    """SIGTERM the process's group, SIGKILL what is left after `TERM_GRACE` s, reap the leader."""
    for sig, wait in ((signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)  # the group outlives its leader while any member runs
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


def _sweep_group(pgid: int) -> None:
    """Kill what a finished tool left running in its session (daemons, workers)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _spawn(argv: list[str], cwd: Path | None, log, env: dict | None, live: _Live, limit: float) -> int | None:
    """Run ``argv`` in a new session; its exit code, or None when killed at ``limit`` seconds."""
    process = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True, env=env)
    live.add(process)
    try:
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            kill_group(process)
            return None
        _sweep_group(process.pid)
        return code
    finally:
        live.discard(process)


def run_instance(commands: Commands, job: Job, folder: Path, timeout: float, grace: float,
                 env: dict | None = None, live: _Live | None = None) -> Outcome:
    """Prepare and run one instance; writes ``folder/results/<name>.txt`` atomically."""
    from tapsc.train.rundir import atomic_write_text

    live = live or _Live()
    folder = Path(folder).resolve()  # the tool may run in another working directory
    final = result_path(folder, job)
    scratch = Path(folder) / "work" / f"{job.name}.out"
    log_path = Path(folder) / "logs" / f"{job.name}.log"
    for path in (final, scratch, log_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    scratch.unlink(missing_ok=True)
    started = time.perf_counter()
    text = None
    with log_path.open("w") as log:
        prepare = commands.prepare(job)
        code = 0
        if prepare is not None:
            code = _spawn(prepare, commands.cwd, log, env, live, PREPARE_LIMIT)
        if code != 0:
            word = f"prepare_instance_error_{PREPARE_KILLED if code is None else code}"
        else:
            log.flush()
            code = _spawn(commands.run(job, scratch, timeout), commands.cwd, log, env, live, timeout + grace)
            body = scratch.read_text(errors="replace") if scratch.is_file() else ""
            first = body.partition("\n")[0].strip()
            if code is None:
                word = "run_instance_timeout"
            elif code != 0:
                word = f"error_exit_code_{code}"
                if code < 0:
                    log.write(f"\ntapsc: the verifier was ended by signal {-code} "
                              f"({signal.Signals(-code).name}) before its timeout; SIGKILL from "
                              "outside tapsc is often the kernel's out-of-memory killer\n")
            elif not first:
                word = "no_result_in_file"
            else:
                word, text = normal_word(first), body if body.endswith("\n") else body + "\n"
    scratch.unlink(missing_ok=True)
    if live.stopping:  # interrupted: leave no result, so a later run runs it again
        return Outcome(job.name, "interrupted", time.perf_counter() - started)
    atomic_write_text(final, text if text is not None else word + "\n")
    return Outcome(job.name, word, time.perf_counter() - started)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread while instances run, so the
    verifiers' process groups (their own sessions) are killed, not orphaned. Returns the
    previous handler (None off the main thread, where signals cannot be set)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:
        return None


def run_instances(commands: Commands, jobs: Sequence[Job], folder: Path, timeout: float, grace: float,
                  parallel: int = 1, env: dict | None = None,
                  on_done: Callable[[Outcome], None] = lambda outcome: None) -> list[Outcome]:
    """Run every job not yet decided, ``parallel`` at a time; ``on_done`` sees each outcome.

    Decided instances (a result file saying sat/unsat) come back with ``skipped=True``. On an
    interrupt (Ctrl-C) every running process group is killed before the exception goes on.
    """
    outcomes: list[Outcome] = []
    todo = []
    for job in jobs:
        word = decided(result_path(folder, job))
        if word is not None:
            outcomes.append(Outcome(job.name, word, 0.0, skipped=True))
            on_done(outcomes[-1])
        else:
            todo.append(job)
    live = _Live()
    pool = ThreadPoolExecutor(max_workers=max(1, parallel))
    previous = _terminate_as_interrupt()
    try:
        futures = [pool.submit(run_instance, commands, job, folder, timeout, grace, env, live) for job in todo]
        for future in as_completed(futures):
            outcomes.append(future.result())
            on_done(outcomes[-1])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        live.kill_all()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    pool.shutdown(wait=True)
    order = {job.name: k for k, job in enumerate(jobs)}
    return sorted(outcomes, key=lambda o: order[o.name])
