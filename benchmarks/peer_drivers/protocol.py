"""The line protocol between ``benchmarks/peers.py`` and one implementation's driver process.

A driver builds its implementation's CNN7, one batch of the benchmarks' random images
(or, with ``--workload-file``, the trained workload's network and real images: below)
and one training step per method, prints one JSON line ``{"ready": ..., "methods": [...]}``,
then answers each request line until ``{"op": "quit"}``:

    {"op": "time", "method": M}    -> {"cpu_s": process CPU seconds, "wall_s": seconds}
    {"op": "memory", "method": M}  -> {"peak_bytes": bytes allocated above the step's start}

or ``{"error": "..."}``. Replies go to the process's original stdout; everything the
implementation itself prints is sent to stderr (``claim_stdout``), so it cannot corrupt the
protocol. This file and ``measure.py`` import torch only: drivers run in the peers' environments.

The workload file (``torch.save`` of a dict, written by ``benchmarks/peers.py --workload
trained``) holds the images ``x``, labels ``y``, ``eps``, the ``input_shape``, the
``normalize`` mean and std (or None: raw [0, 1] pixels), the CNN7's ``width``,
``linear_size`` and ``classes``, the network's parameters and BatchNorm running statistics
in module order (``names``, ``tensors``: see ``ordered_tensors``), the ``reference_logits``
of the network in eval mode on ``x``, and ``spec_text`` (tapsc's canonical spec). A driver
builds its own CNN7 for the shape, copies the tensors in (``load_tensors``: every shape
checked), checks its eval-mode logits against the reference (``logit_difference``; above
``LOGIT_TOLERANCE`` it refuses to start) through the model it actually trains, and restores
the trained tensors (untimed, ``snapshot``) before every step, so every step of every
repetition starts from the trained network.
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
    parser.add_argument("--workload-file", type=Path, help="the trained workload (network, images, eps) to use "
                        "instead of a Shi-initialised CNN7 and random images; see the module docstring")
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


def serve(replies, steps: dict, info: dict, reset=None) -> None:
    """Answer requests until "quit" (see the module docstring) on ``replies`` (``claim_stdout``).
    ``steps`` maps a method to a callable running one full training step; ``reset`` (untimed),
    when given, runs before every step."""
    replies.write(json.dumps({"ready": True, "methods": list(steps), **info}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") == "quit":
            break
        try:
            step = steps[request["method"]]
            if reset is not None and request["op"] in ("time", "memory"):
                reset()
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


# ---------------------------------------------------------------- the trained workload

WORKLOAD_FORMAT = 1
LOGIT_TOLERANCE = 1e-3  # max |logit difference| a driver accepts between its model and the reference
BATCHNORM_STATISTICS = ("running_mean", "running_var")  # num_batches_tracked is not exchanged


class WorkloadMismatch(ValueError):
    """An implementation's model does not take the workload file's tensors, or computes other logits."""


def ordered_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and BatchNorm running statistic of ``model``, in module order: each
    module's ``weight`` and ``bias``, then its ``running_mean`` and ``running_var``.

    Raises:
        WorkloadMismatch: a module holds another parameter or buffer (the list would leave it out).
    """
    found = []
    for prefix, module in model.named_modules():
        parameters = dict(module.named_parameters(recurse=False))
        buffers = {k: v for k, v in module.named_buffers(recurse=False) if k != "num_batches_tracked"}
        for name in ("weight", "bias"):
            if parameters.get(name) is not None:
                found.append((f"{prefix}.{name}".lstrip("."), parameters.pop(name)))
        for name in BATCHNORM_STATISTICS:
            if buffers.get(name) is not None:
                found.append((f"{prefix}.{name}".lstrip("."), buffers.pop(name)))
        others = sorted(k for k, v in {**parameters, **buffers}.items() if v is not None)
        if others:
            raise WorkloadMismatch(f"module {prefix or '(root)'} ({type(module).__name__}) holds {others}: only "
                                   "weight, bias, running_mean and running_var are exchanged")
    return found


def read_workload(path: Path) -> dict:
    """The workload file written by ``benchmarks/peers.py`` (module docstring)."""
    workload = torch.load(path, map_location="cpu", weights_only=True)
    if workload.get("format") != WORKLOAD_FORMAT:
        raise WorkloadMismatch(f"{path}: workload format {workload.get('format')!r}, this driver reads "
                               f"{WORKLOAD_FORMAT}")
    return workload


def load_tensors(model: torch.nn.Module, workload: dict, what: str) -> None:
    """Copy the workload's tensors into ``model``'s (``ordered_tensors`` order), every shape checked first.

    Raises:
        WorkloadMismatch: another number of tensors, or a shape differs (the message names both sides).
    """
    targets = ordered_tensors(model)
    names, tensors = workload["names"], workload["tensors"]
    if len(targets) != len(tensors):
        raise WorkloadMismatch(f"{what} has {len(targets)} parameter and BatchNorm tensors "
                               f"({[n for n, _ in targets]}), the workload file {len(tensors)} ({names})")
    for (name, target), source_name, source in zip(targets, names, tensors):
        if tuple(target.shape) != tuple(source.shape):
            raise WorkloadMismatch(f"{what}'s {name} has shape {tuple(target.shape)}, the workload file's "
                                   f"{source_name} {tuple(source.shape)}")
    with torch.no_grad():
        for (_, target), source in zip(targets, tensors):
            target.copy_(source)


def logit_difference(logits: torch.Tensor, workload: dict, what: str) -> float:
    """max |logits - the reference logits| (``logits``: an implementation's eval-mode output on ``x``).

    Raises:
        WorkloadMismatch: another shape, or a difference above ``LOGIT_TOLERANCE``.
    """
    reference = workload["reference_logits"]
    if tuple(logits.shape) != tuple(reference.shape):
        raise WorkloadMismatch(f"{what}: logits of shape {tuple(logits.shape)}, the reference's "
                               f"{tuple(reference.shape)}")
    difference = float((logits.detach().float() - reference).abs().max())
    if not difference <= LOGIT_TOLERANCE:
        raise WorkloadMismatch(f"{what}: eval-mode logits differ from the reference by up to {difference:.3g} "
                               f"(tolerance {LOGIT_TOLERANCE:g}): the model is not the trained network")
    return difference


def snapshot(*modules: torch.nn.Module):
    """A callable that puts back every parameter and buffer of ``modules`` as they are now."""
    tensors = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            tensors.setdefault(id(tensor), (tensor, tensor.detach().clone()))

    def restore():
        with torch.no_grad():
            for tensor, saved in tensors.values():
                tensor.copy_(saved)

    return restore


def workload_info(workload: dict, differences: dict[str, float]) -> dict:
    """What the driver's ready line says about the trained workload it loaded."""
    return {"workload": "trained", "batch": int(workload["x"].shape[0]), "eps": workload["eps"],
            "logit_max_abs_diff": differences}
