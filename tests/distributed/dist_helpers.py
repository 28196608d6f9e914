"""Helpers for the multi-process tests: a tiny spec, `python -m tapsc` in a subprocess,
worker process ids. Everything runs on the CPU with Gloo."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from cli_helpers import digits_taps_spec

ROOT = Path(__file__).resolve().parents[2]

# TAPS on the 8x8 digits, small enough for 2 processes on 2 cores; sync BatchNorm on.
DIST_SPEC = digits_taps_spec(
    "batch 32; train_subset 320; test_subset 64; validation 64",
    "lr 2e-3; decay 0.5 at (6); epochs 8; seed 3",
    "eval { metrics (natural, ibp, crown_ibp); select ibp; attack pgd(steps = 5, restarts = 1, margin) }",
    "distributed { sync_batchnorm true }")


def environment(threads: int = 1) -> dict[str, str]:
    """The test process's environment, one thread per worker (2 workers on 2 cores)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}


def tapsc(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m tapsc ARGS`` to completion; output captured as text."""
    return subprocess.run([sys.executable, "-m", "tapsc", *map(str, args)], cwd=ROOT, env=environment(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def start_tapsc(*args) -> subprocess.Popen:
    """``python -m tapsc ARGS`` in the background (stderr piped)."""
    return subprocess.Popen([sys.executable, "-m", "tapsc", *map(str, args)], cwd=ROOT, env=environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def children(pid: int) -> list[int]:
    """Process ids of ``pid``'s children (Linux /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def worker_with_rank(launcher: int, rank: int, timeout: float = 60) -> int:
    """The pid of the worker of ``launcher`` whose RANK is ``rank``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children(launcher):
            try:
                variables = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in variables:
                return child
        time.sleep(0.05)
    raise AssertionError(f"no worker with RANK={rank} under process {launcher}")
