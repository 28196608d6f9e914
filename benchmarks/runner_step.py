"""The runner's TAPS step against the benchmark's bare step, on one network and one batch.

    .venv/bin/python benchmarks/runner_step.py [--device cuda] [--amp] [--steps 20] [--profile 5]

On the H100 a TAPS step inside ``tapsc run`` took 57 ms against 41 ms in
benchmarks/train_step.py. This script builds the real Trainer of
specs/bench/cifar_epoch_taps.taps (on random images in CIFAR-10's format) and times, on one
fixed batch, three steps over the same weights (``--spec``: another TAPS spec):

- ``bare``: phase_loss, backward, clipping, Adam (what train_step.py times);
- ``bare_l1``: the same plus the spec's L1 penalty;
- ``runner``: ``Trainer.step`` (the L1 penalty, every loss term read back as a float, the
  finiteness check before the backward pass).

Each is timed twice: the median of single steps with a device sync around each (``synced``),
and the mean of ``--steps`` steps queued back to back with one sync at the end (``queued``,
how an epoch runs them). ``--profile N`` adds torch.profiler's top operators over N runner
steps, by device time on CUDA and by CPU time otherwise. ``--epoch-images N`` then trains one
real epoch of N images (``Trainer.train_epoch``: the DataLoader, the probe, the bookkeeping)
with 4 loader workers and with none, and reports its seconds per step beside the above.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import optimizer_step, synchronize, timed
from epoch import SPECS, write_random_cifar10

from tapsc.language.spec import load_spec
from tapsc.method import phase_loss
from tapsc.precision import tf32_matmuls
from tapsc.train.run import RunOptions, Trainer, apply_options, phase_at, use_tf32


def make_steps(trainer: Trainer, x, y, eps: float) -> dict:
    """The three step functions over the trainer's network and optimizer."""
    network, optimizer, spec = trainer.network, trainer.optimizer, trainer.spec
    phase = phase_at(spec, 0)
    amp = trainer.options.amp

    def bare(l1: float):
        def loss_fn():
            return phase_loss(network, phase, x, y, eps, eps, l1=l1)[0]
        return lambda: optimizer_step(network, optimizer, loss_fn, x.device.type, amp, spec.optimizer.clip or 10.0)

    return {"bare": bare(0.0), "bare_l1": bare(spec.optimizer.l1),
            "runner": lambda: trainer.step(phase, x, y, eps, eps, 0, 0)}


def queued(step, device, count: int) -> float:
    """Mean seconds per step of ``count`` steps launched back to back."""
    synchronize(device)
    started = time.perf_counter()
    for _ in range(count):
        step()
    synchronize(device)
    return (time.perf_counter() - started) / count


def epoch_step(trainer: Trainer, workers: int) -> dict:
    """Seconds per batch of one real training epoch: in the steps alone and in all."""
    trainer.options = dataclasses.replace(trainer.options, workers=workers)
    row = trainer.train_epoch(0)
    batches = -(-len(trainer.train_set) // trainer.spec.data.batch)
    return {"batches": batches, "step": row["train_part_seconds"]["step"] / batches,
            "train": row["train_seconds"] / batches, "parts": row["train_part_seconds"]}


def profile_table(step, device, count: int, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(count):
            step()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast, as `tapsc run --amp`")
    parser.add_argument("--no-tf32", action="store_true", help="full float32 matrix products, as `--no-tf32`")
    parser.add_argument("--spec", type=Path, default=SPECS["taps"], help="a TAPS spec (default: the CIFAR-10 "
                        "epoch spec, on random images in CIFAR-10's format)")
    parser.add_argument("--batch", type=int, default=None, help="override the spec's batch")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--profile", type=int, default=0, help="profile N runner steps (0: no profile)")
    parser.add_argument("--epoch-images", type=int, default=0,
                        help="also train one epoch of N random images (CIFAR-10 spec only; 0: skip)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    overrides = [f"data.batch={args.batch}"] if args.batch else []
    spec = load_spec(args.spec, overrides)
    with tempfile.TemporaryDirectory(prefix="tapsc-runner-step-") as scratch:
        data_root = None
        if spec.data.dataset == "cifar10":
            per_batch = max(16, -(-args.epoch_images // 5))
            data_root = str(write_random_cifar10(Path(scratch) / "data", test_images=16, per_batch=per_batch))
        options = RunOptions(device=str(device), amp=args.amp, tf32=not args.no_tf32, data_root=data_root)
        trainer = Trainer(apply_options(spec, options), Path(scratch) / "run", options)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((spec.data.batch, *spec.model.input_shape), generator=generator).to(device)
    y = torch.randint(0, trainer.network.num_classes, (spec.data.batch,), generator=generator).to(device)
    eps = float(spec.perturbation.eps)
    steps = make_steps(trainer, x, y, eps)
    trainer.network.train()
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "amp": args.amp, "tf32": use_tf32(options, device),
              "batch": spec.data.batch, "steps": args.steps, "seconds": {}}
    with tf32_matmuls(use_tf32(options, device)):
        for step in steps.values():
            for _ in range(2):
                step()
        for name, step in steps.items():
            synced = statistics.median(timed(step, device) for _ in range(args.steps))
            result["seconds"][name] = {"synced": synced, "queued": queued(step, device, args.steps)}
        table = profile_table(steps["runner"], device, args.profile) if args.profile else None
        if args.epoch_images:
            result["epoch"] = {f"workers{w}": epoch_step(trainer, w) for w in (4, 0)}
    base = result["seconds"]["bare"]
    print(f"{result['device']}, torch {result['torch']}, batch {result['batch']}, "
          f"{'bf16' if args.amp else 'tf32' if result['tf32'] else 'fp32'}")
    print(f"{'step':<8} {'synced ms':>10} {'queued ms':>10} {'x bare (queued)':>16}")
    for name, value in result["seconds"].items():
        print(f"{name:<8} {1e3 * value['synced']:>10.1f} {1e3 * value['queued']:>10.1f} "
              f"{value['queued'] / base['queued']:>16.2f}")
    for name, value in result.get("epoch", {}).items():
        print(f"epoch, {name}: {1e3 * value['step']:.1f} ms in steps, {1e3 * value['train']:.1f} ms in all, "
              f"per batch ({value['batches']} batches)")
    if table:
        print(table)
        result["profile"] = table
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
