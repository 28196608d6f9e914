"""Timing and peak memory of one call, and the benchmarks' output: torch only, so that the
peer drivers (``peer_drivers/``), which run in other projects' environments without tapsc,
measure exactly as the tapsc benchmarks do.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds for one call of ``fn`` (device work included)."""
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


def cpu_timed(fn) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) of one call of ``fn`` (CPU work only)."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def random_batch(batch: int, shape: tuple[int, ...], classes: int = 10, seed: int = 0):
    """The benchmarks' random images in [0, 1] and labels: the same tensors in every process
    with the same torch version (one seeded generator, images then labels)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((batch,) + tuple(shape), generator=generator)
    return x, torch.randint(0, classes, (batch,), generator=generator)


def peak_memory_bytes(fn, device: torch.device) -> int:
    """Peak bytes of tensors allocated during one call of ``fn``, above what was live before it.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the allocation/free events of
    ``torch.profiler`` (profile_memory) replayed in time order; this counts tensor storage
    the way the CUDA figure does, and needs no subprocess or tracemalloc.
    """
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and "CPU" in str(e.device_type())]
    live = peak = 0
    for _, nbytes in sorted(events):
        live += nbytes
        peak = max(peak, live)
    return int(peak)


def log(message: str) -> None:
    """A progress line, on stderr (stdout holds the tables)."""
    print(message, file=sys.stderr, flush=True)


def write_json(path: Path, result: dict) -> None:
    """The benchmark's result as indented JSON (folders made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def settings(args) -> dict:
    """The parsed command line, JSON-ready (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
