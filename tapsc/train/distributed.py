"""Several processes, one run: tapsc on ``torch.distributed``.

Three parts, all thin layers over PyTorch's own machinery:

- **Launching.** ``tapsc run|certify --nproc-per-node N`` starts N local workers with
  torch's elastic launcher (``torch.distributed.launcher.api.elastic_launch``, what
  ``torchrun --standalone`` runs), each executing ``python -m tapsc ...`` without the
  flag. Multi-node runs use ``torchrun`` directly. A worker recognises itself by the
  ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` variables the launcher sets, and
  ``init_from_env`` joins the process group: NCCL on CUDA (one GPU per local rank),
  Gloo on CPU.
- **Collectives** used by the trainer and the certifier; each is a no-op in a single
  process, so the single-process path stays exactly what it was.
- **BatchNorm synchronisation** (``distributed { sync_batchnorm true }``): tapsc's
  BatchNorm is its own layer (it records batch statistics for the interval and attack
  passes), so ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does not apply; its
  ``statistics`` hook is set to ``global_statistics``, the batch mean and variance over every
  rank with the differentiable all-reduce (``_AllReduceSum``).

``device_for_slot`` places independent jobs (e.g. sweep grid points) on the GPUs.

Shape legend: B local batch, C channels.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from tapsc.errors import Diagnostic, TapscError
from tapsc.layers.batchnorm import BatchNorm

T = TypeVar("T")
ENV_KEYS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
BUCKET_BYTES = 25 * 1024 * 1024  # gradient all-reduce bucket (DDP's default size)
TIMEOUT = timedelta(minutes=60)  # rank 0 evaluates alone while the others wait in a collective


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "nccl" / "gloo" once the process group is up

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: collectives are real."""
        return self.world_size > 1


SINGLE = Context()
_current = SINGLE


def current() -> Context:
    """This process's context (``SINGLE`` until ``init_from_env`` joined a group)."""
    return _current


def launched() -> bool:
    """True inside a worker started by torchrun / ``--nproc-per-node``."""
    return all(key in os.environ for key in ENV_KEYS) and int(os.environ["WORLD_SIZE"]) > 1


def env_context() -> Context:
    """The rank, world size and local rank the launcher set (``SINGLE`` when none)."""
    if not launched():
        return SINGLE
    try:
        world, rank, local = (int(os.environ[key]) for key in ENV_KEYS)
    except ValueError:
        raise TapscError(Diagnostic(code="bad-launcher-env", message="WORLD_SIZE, RANK and LOCAL_RANK must be "
                                    f"integers, got {[os.environ[k] for k in ENV_KEYS]}")) from None
    return Context(rank=rank, world_size=world, local_rank=local)


def worker_device(name: str, context: Context) -> torch.device:
    """The device of one worker: ``cuda:LOCAL_RANK`` on GPUs, else the CPU.

    Raises:
        TapscError: ``cuda:N`` under several processes, CUDA asked for but absent, or
            fewer GPUs than local ranks.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise TapscError(Diagnostic(code="device-per-worker", message=f"`--device {name}` names one device, "
                                    f"but this run has {context.world_size} processes",
                                    help="use `--device cuda` (worker i takes cuda:<local rank i>) or `cpu`; "
                                         "pick GPUs with CUDA_VISIBLE_DEVICES"))
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise TapscError(Diagnostic(code="no-cuda", message="`--device cuda` asked for, but torch sees no CUDA "
                                    "device (NCCL needs GPUs)", help="use `--device cpu` (Gloo)"))
    if context.local_rank >= count:
        raise TapscError(Diagnostic(code="too-few-gpus", message=f"local rank {context.local_rank} needs "
                                    f"cuda:{context.local_rank}, but this machine has {count} GPU(s)",
                                    help=f"start at most {count} processes per node, or use `--device cpu`"))
    return torch.device("cuda", context.local_rank)


def init_from_env(device_name: str) -> Context:
    """Join the process group when launched as a worker; a no-op otherwise.

    The backend follows the device: NCCL for CUDA, Gloo for the CPU.

    Raises:
        TapscError: a bad device for this worker, or the group cannot be joined.
    """
    global _current
    context = env_context()
    if not context.active:
        return _current
    if dist.is_initialized():
        return _current
    device = worker_device(device_name, context)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise TapscError(Diagnostic(code="no-nccl", message="this torch build has no NCCL",
                                    help="use `--device cpu` (Gloo), or install a CUDA build of torch"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, timeout=TIMEOUT, **({"device_id": device} if device.type == "cuda" else {}))
    except (RuntimeError, ValueError) as error:  # DistNetworkError, DistStoreError are RuntimeErrors
        raise TapscError(Diagnostic(code="rendezvous-failed", message=f"rank {context.rank} cannot join the "
                                    f"process group: {str(error).splitlines()[0]}",
                                    help="check MASTER_ADDR/MASTER_PORT (or torchrun's --rdzv-endpoint) "
                                         "and that every node can reach it")) from None
    _current = Context(context.rank, context.world_size, context.local_rank, backend)
    return _current


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    global _current
    if dist.is_initialized():
        dist.destroy_process_group()
    _current = SINGLE


# ---------------------------------------------------------------- collectives


def all_reduce_gradients(parameters: Iterable[torch.nn.Parameter], context: Context,
                         flags: torch.Tensor | None = None, bucket_bytes: int = BUCKET_BYTES):
    """Average the gradients over every rank, in flat buckets; sum ``flags`` alongside.

    This replaces DistributedDataParallel's reducer on purpose. DDP prepares its
    gradient hooks in the wrapper's ``forward()`` and expects one such call per
    ``backward()``. A TAPS step reaches the weights through several traversals of the
    one module list that are not ``forward()`` (``interval``/``extractor_box`` over the
    extractor and classifier, ``interval_trace`` for the Shi regularizer) and calls the
    network again and again inside the latent and input PGD attacks (with their own
    ``autograd.grad`` loops) before the one backward. Routing all of that through DDP
    means wrapping the whole objective as the DDP module, plus
    ``find_unused_parameters`` for any phase that leaves a parameter out, and DDP's
    per-forward buffer broadcast would replace each rank's BatchNorm running statistics
    by rank 0's. One bucketed all-reduce after ``backward()`` sees the finished
    gradients whatever traversals produced them (tests/distributed checks them against
    one process on the whole batch); it gives up DDP's overlap of communication with
    the backward, which costs little here because the attack passes dominate a step.

    Args:
        parameters: the model's parameters (a missing gradient counts as zero).
        context: this process's rank and world size.
        flags: a small float tensor summed over ranks in the same collective (e.g.
            "my loss is not finite"), so a rank-local failure stops every rank together.

    Returns:
        ``flags`` summed over ranks (``flags`` itself for one process).
    """
    if not context.active:
        return flags
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    tensors = [p.grad for p in params]
    if flags is not None:
        tensors.append(flags.to(params[0].device if params else flags.device, torch.float32))
    for bucket in _buckets(tensors, bucket_bytes):
        flat = torch.cat([t.reshape(-1).float() for t in bucket])
        dist.all_reduce(flat)
        offset = 0
        for t in bucket:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
    for g in tensors[:len(params)]:
        g.div_(context.world_size)
    return tensors[-1] if flags is not None else None


def _buckets(tensors: Sequence[torch.Tensor], limit: int) -> Iterable[list[torch.Tensor]]:
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        key = (tensor.device, tensor.dtype)
        if bucket and (size + tensor.numel() * 4 > limit or (bucket[0].device, bucket[0].dtype) != key):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += tensor.numel() * 4
    if bucket:
        yield bucket


def broadcast_module(module: torch.nn.Module, context: Context) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical starting weights)."""
    if not context.active:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_buffers(module: torch.nn.Module, context: Context) -> None:
    """Average floating buffers (BatchNorm running statistics) over the ranks, so every
    rank, and the checkpoint rank 0 writes, hold the same state."""
    if not context.active:
        return
    floats = [b for b in module.buffers() if b.is_floating_point()]
    if not floats:
        return
    flat = torch.cat([b.reshape(-1) for b in floats])
    dist.all_reduce(flat)
    flat.div_(context.world_size)
    offset = 0
    for b in floats:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def mean_over_ranks(values: torch.Tensor, context: Context) -> torch.Tensor:
    """The element-wise mean of ``values`` (detached) over the ranks."""
    total = values.detach().clone()
    if context.active:
        dist.all_reduce(total)
    return total / context.world_size


def sum_values(values: dict[str, float], context: Context, device: torch.device | str = "cpu") -> dict[str, float]:
    """Sum a dict of floats over the ranks (every rank passes the same keys)."""
    if not context.active:
        return dict(values)
    keys = sorted(values)
    flat = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(flat)
    return dict(zip(keys, flat.tolist()))


def broadcast_object(value: T, context: Context) -> T:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not context.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any, context: Context) -> list[Any] | None:
    """Every rank's ``value``, in rank order, on rank 0; None on the other ranks."""
    if not context.active:
        return [value]
    gathered: list[Any] | None = [None] * context.world_size if context.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


class SharedError(TapscError):
    """A user mistake rank 0 found and every rank raises (only rank 0 prints it)."""


def main_first(fn: Callable[[], T], context: Context) -> T:
    """Run ``fn`` on rank 0 alone and hand its result, or its TapscError, to every rank.

    For what must happen once (create the run folder, read a checkpoint and send it to
    ranks that may not see the same disk), without leaving the others waiting forever
    when rank 0 fails.
    """
    if not context.active:
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    if context.is_main:
        try:
            outcome = ("ok", fn())
        except TapscError as error:
            outcome = ("error", error.diagnostics)
    outcome = broadcast_object(outcome, context)
    if outcome[0] == "error":
        raise SharedError(outcome[1])
    return outcome[1]


# ---------------------------------------------------------------- synchronised BatchNorm


def global_statistics(x: torch.Tensor, reduce_dims: tuple[int, ...]):
    """BatchNorm's statistics hook for data-parallel training: (mean, biased variance,
    unbiased variance) per channel of the GLOBAL batch.

    Two passes, each one differentiable all-reduce of per-channel sums (its backward all-reduces
    the gradient, so the loss on every rank reaches the inputs on every rank, as in
    ``torch.nn.SyncBatchNorm``). Only the clean forward records statistics; interval and attack
    passes reuse them, so each batch costs two small all-reduces per layer.
    """
    all_reduce = _AllReduceSum.apply
    x32 = x.float()  # under autocast, bf16 sums and counts would be too coarse
    count_local = x32.new_tensor([x.numel() // x.shape[1]])
    sums = all_reduce(torch.cat([x32.sum(reduce_dims), count_local]))
    count = sums[-1].detach()
    mean = sums[:-1] / count
    view = (1, -1) + (1,) * (x.dim() - 2)
    var = all_reduce((x32 - mean.reshape(view)).square().sum(reduce_dims)) / count
    return mean, var, var * (count / (count - 1).clamp(min=1))


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of every rank's copy of the sum
    flows back to every rank's input (the backward is the same all-reduce). This is
    ``torch.distributed.nn.functional.all_reduce``, which torch 2.9 deprecates."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def sync_batchnorm(network: torch.nn.Module) -> int:
    """Give every tapsc BatchNorm of ``network`` the global batch's statistics (its
    ``statistics`` hook becomes ``global_statistics``; parameters, buffers and state dict stay
    as they are); returns how many were switched."""
    count = 0
    for module in network.modules():
        if isinstance(module, BatchNorm) and module.statistics is not global_statistics:
            module.statistics = global_statistics
            count += 1
    return count


# ---------------------------------------------------------------- launching


def check_nproc(nproc: int) -> None:
    """``--nproc-per-node`` must be a positive count, and not given inside a worker.

    Raises:
        TapscError: otherwise.
    """
    if nproc < 1:
        raise TapscError(Diagnostic(code="bad-nproc", message=f"`--nproc-per-node {nproc}`: need at least 1 process",
                                    help="e.g. `--nproc-per-node 2`; 1 runs in this process"))
    if launched():
        raise TapscError(Diagnostic(code="nested-launch", message="`--nproc-per-node` inside a torchrun worker",
                                    help="give the process count to torchrun only: "
                                         "`torchrun --nproc-per-node N -m tapsc run SPEC`"))


def check_devices(device: str, nproc: int) -> None:
    """Fail before launching when N workers cannot each get a device.

    Raises:
        TapscError: ``cuda:N`` for several workers, CUDA absent, or fewer GPUs than workers.
    """
    worker_device(device, Context(rank=nproc - 1, world_size=nproc, local_rank=nproc - 1))


def free_port() -> int:
    """A TCP port nobody listens on right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ERROR_DIR_ENV = "TAPSC_WORKER_ERRORS"  # set by ``launch``: where workers leave their diagnostics


def write_worker_error(folder: str, rank: int, text: str) -> None:
    """One worker's rendered diagnostic, written whole (tmp + rename) for the launcher."""
    path = Path(folder) / f"rank-{rank}.txt"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def report_worker_errors(folder: str) -> None:
    """Print each distinct worker diagnostic once, naming the ranks when not all agree."""
    by_text: dict[str, list[int]] = {}
    for rank, path in sorted((int(p.stem.removeprefix("rank-")), p) for p in Path(folder).glob("rank-*.txt")):
        by_text.setdefault(path.read_text(encoding="utf-8").rstrip(), []).append(rank)
    for text, ranks in by_text.items():
        if len(by_text) == 1 and len(ranks) > 1:  # every reporting rank says the same: say it once
            print(text, file=sys.stderr)
        else:
            print(f"{text}\n  = (worker rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))})",
                  file=sys.stderr)


def launch(argv: Sequence[str], nproc: int, after_kill: str = "run the command again") -> int:
    """Run ``python -m tapsc ARGV`` as ``nproc`` local workers under torch's elastic agent.

    The rendezvous is a c10d store on a free localhost port (``torchrun --standalone``).
    Workers inherit this process's stdout and stderr; one that fails stops the others.
    ``after_kill`` says what to do when a worker is killed by a signal.
    On the CPU each worker gets ``cores // nproc`` threads unless OMP_NUM_THREADS is set.

    Returns:
        0 when every worker succeeded, else the first failed worker's exit code (a
        worker killed by a signal: 128 + the signal number, as a shell reports it).
    """
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    with tempfile.TemporaryDirectory(prefix="tapsc-errors-") as errors:
        os.environ[ERROR_DIR_ENV] = errors  # inherited by the spawned workers
        try:
            return _launch_workers(argv, nproc, after_kill)
        finally:
            del os.environ[ERROR_DIR_ENV]
            report_worker_errors(errors)


def _launch_workers(argv: Sequence[str], nproc: int, after_kill: str) -> int:
    import logging
    import signal
    import uuid

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # the agent logs every failure with its own formatting; workers leave their diagnostics
    # to ``launch``, and a worker that died without one is reported below in one line
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"tapsc-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}", max_restarts=0,
                          monitor_interval=0.2, start_method="spawn",
                          logs_specs=DefaultLogsSpecs(log_dir=os.devnull))  # no /tmp/torchelastic_* folders
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "tapsc", *argv)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        if failure.exitcode is not None and failure.exitcode < 0:
            name = signal.Signals(-failure.exitcode).name
            print(f"tapsc: worker rank {rank} (pid {failure.pid}) was killed by {name}; the other workers were "
                  f"stopped. To go on: {after_kill}", file=sys.stderr)
            return 128 - failure.exitcode
        return failure.exitcode or 1
    except SignalException as error:  # this process got SIGTERM/SIGINT: the agent stopped the workers
        return 128 + int(error.sigval)
    return 0


def device_for_slot(slot: int, devices: Sequence[str] | None = None) -> torch.device:
    """The device for the ``slot``-th of several independent jobs (e.g. sweep grid points).

    Slots go round-robin over ``devices`` (default: every visible GPU, so slot i gets
    ``cuda:<i mod GPUs>``), or to the CPU when there is no GPU. A subprocess can be pinned
    instead with ``CUDA_VISIBLE_DEVICES=<index>`` (see ``slot_environment``).
    """
    if devices:
        return torch.device(devices[slot % len(devices)])
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.device("cuda", slot % torch.cuda.device_count())
    return torch.device("cpu")


def slot_environment(slot: int) -> dict[str, str]:
    """Environment for a subprocess running the ``slot``-th job on one GPU of its own.

    Returns ``{"CUDA_VISIBLE_DEVICES": "<gpu>"}`` (the subprocess then uses ``cuda:0``),
    or ``{}`` when there is no GPU. Respects an existing CUDA_VISIBLE_DEVICES list.
    """
    device = device_for_slot(slot)
    if device.type != "cuda":
        return {}
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return {"CUDA_VISIBLE_DEVICES": visible[device.index] if device.index < len(visible) else str(device.index)}
