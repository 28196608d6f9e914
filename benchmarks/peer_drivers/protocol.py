"""The line protocol between ``benchmarks/peers.py`` and one implementation's driver process.

A driver builds its implementation's CNN7, one batch of the benchmarks' random images
and one training step per method, prints one JSON line ``{"ready": ..., "methods": [...]}``,
then answers each request line until ``{"op": "quit"}``:

    {"op": "time", "method": M}    -> {"cpu_s": process CPU seconds, "wall_s": seconds}
    {"op": "memory", "method": M}  -> {"peak_bytes": bytes allocated above the step's start}

or ``{"error": "..."}``. Replies go to the process's original stdout; everything the
implementation itself prints is sent to stderr (``claim_stdout``), so it cannot corrupt the
protocol. This
file and ``measure.py`` import torch only: drivers run in the peers' environments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: measure.py

import torch
from measure import cpu_timed, peak_memory_bytes

CIFAR10_SHAPE = (3, 32, 32)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)  # tapsc's spec; the authors' code ships its own constants


def arguments(description: str, extra=None) -> argparse.Namespace:
    """The arguments every driver takes (``extra(parser)`` adds an implementation's own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--steps", default="20,8", help="attack steps of the TAPS methods")
    parser.add_argument("--methods", default="natural,ibp,taps", help="natural, ibp, taps (one per --steps)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return args


def method_names(methods: str, steps: str) -> list[str]:
    """natural, ibp, taps_steps{S} for each of ``steps``, in ``methods`` order (both comma-separated)."""
    names = []
    for kind in (m.strip() for m in methods.split(",") if m.strip()):
        names += [f"taps_steps{int(s)}" for s in steps.split(",")] if kind == "taps" else [kind]
    return names


def claim_stdout():
    """The process's stdout as the reply channel; from here on whatever the implementation
    prints (at import, too) goes to stderr. Call it before importing the implementation."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return replies


def serve(replies, steps: dict, info: dict) -> None:
    """Answer requests until "quit" (see the module docstring) on ``replies`` (``claim_stdout``).
    ``steps`` maps a method to a callable running one full training step."""
    replies.write(json.dumps({"ready": True, "methods": list(steps), **info}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") == "quit":
            break
        try:
            step = steps[request["method"]]
            if request["op"] == "time":
                cpu_s, wall_s = cpu_timed(step)
                reply = {"cpu_s": cpu_s, "wall_s": wall_s}
            elif request["op"] == "memory":
                reply = {"peak_bytes": peak_memory_bytes(step, torch.device("cpu"))}
            else:
                reply = {"error": f"unknown op {request['op']!r}"}
        except Exception as error:  # noqa: BLE001  (reported to peers.py, which marks the cell)
            traceback.print_exc()
            reply = {"error": f"{type(error).__name__}: {error}"[:500]}
        replies.write(json.dumps(reply) + "\n")
    replies.close()


def full_step(parameters, optimizer, loss_fn, clip: float = 10.0):
    """One training step as every implementation's loop takes it: zero grads, loss, backward,
    gradient clipping at norm ``clip``, the optimizer's update."""
    parameters = list(parameters)

    def step():
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, clip)
        optimizer.step()

    return step
