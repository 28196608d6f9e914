"""The process a run lives in: which device, and the seeding and random-number state that make
a run reproducible and let a resumed run continue the same streams. Shared by training, evaluation,
certification and the experiments, none of which needs the trainer for it.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from tapsc.errors import Diagnostic, TapscError
from tapsc.train import distributed


def resolve_device(name: str) -> torch.device:
    """"auto" (CUDA when present), "cpu", "cuda" or "cuda:N"; in a worker of a
    distributed run, ``cuda:LOCAL_RANK`` or the CPU (``tapsc.train.distributed.worker_device``).

    Raises:
        TapscError: an unknown device, or CUDA asked for but absent.
    """
    context = distributed.current()
    if context.active:
        return distributed.worker_device(name, context)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise TapscError(Diagnostic(code="unknown-device", message=f"unknown device `{name}`",
                                    help="use `auto`, `cpu`, `cuda` or `cuda:N`"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TapscError(Diagnostic(code="no-cuda", message=f"device `{name}` asked for, but torch sees no CUDA device",
                                    help="use `--device cpu`, or install a CUDA build of torch"))
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise TapscError(Diagnostic(code="unknown-device", message=f"there is no {name}: "
                                    f"{torch.cuda.device_count()} CUDA device(s)"))
    return device


def seed_everything(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed torch, numpy and random from (seed, epoch, rank); epoch -1 is initialisation.
    Rank 0 gets the stream of a single process; other ranks draw their own attack starts."""
    value = (seed * 1_000_003 + epoch + 1 + rank * 7_919_000_003) % (2**32)
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
