"""Seconds per CIFAR-10 training epoch, TAPS against IBP, through the real runner.

    .venv/bin/python benchmarks/epoch.py [--device cuda] [--precision bf16,tf32,fp32] [--images N]

Each measurement is one ``tapsc run`` of a shipped one-epoch spec (specs/bench/: CNN7,
batch 128, 8/255, TAPS with 1 ReLU in the classifier and the 20-step multi-estimator
attack, or IBP) in a fresh process: data loading, augmentation, the training step and
the per-batch bookkeeping all count, as in a real run. The figure is the epoch's
``train_seconds`` from metrics.jsonl (the training passes alone; the per-epoch selection
evaluation is reported beside it). Without CIFAR-10 under ``--data-root`` it writes
random images in CIFAR-10's own pickled format first (the cost of a step does not depend
on pixel values). The target of issue 6: a TAPS epoch in at most 30 s on an H100 with
``--amp``. Precisions: bf16 (``--amp``), tf32 (float32 with TF32 matrix products on CUDA,
``tapsc run``'s default) and fp32 (``--no-tf32``: matrix products in full float32; cuDNN's
convolutions keep PyTorch's default TF32).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPECS = {"taps": ROOT / "specs" / "bench" / "cifar_epoch_taps.taps",
         "ibp": ROOT / "specs" / "bench" / "cifar_epoch_ibp.taps"}
TRAIN_BATCHES, PER_BATCH = 5, 10_000


def write_random_cifar10(root: Path, test_images: int = 1000, seed: int = 0, per_batch: int = PER_BATCH) -> Path:
    """cifar-10-batches-py as the official archive lays it out, with random pixels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = [(f"data_batch_{i}", per_batch) for i in range(1, TRAIN_BATCHES + 1)] + [("test_batch", test_images)]
    for name, count in files:
        rows = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({"batch_label": name, "data": rows, "labels": labels, "filenames": []}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)
    return root


def has_cifar10(root: Path) -> bool:
    folder = root / "cifar-10-batches-py"
    return all((folder / name).is_file() for name in
               [f"data_batch_{i}" for i in range(1, TRAIN_BATCHES + 1)] + ["test_batch", "batches.meta"])


PRECISION_FLAGS = {"bf16": ["--amp"], "tf32": [], "fp32": ["--no-tf32"]}


def time_epoch(method: str, device: str, precision: str, data_root: Path, images: int | None, out: Path,
               epochs: int = 1) -> dict:
    """One ``tapsc run`` of the method's epoch spec; its last epoch's timings plus the wall time."""
    run_dir = out / f"{method}-{precision}"
    command = [sys.executable, "-m", "tapsc", "run", str(SPECS[method]), "--device", device,
               "--data-root", str(data_root), "--out", str(run_dir), *PRECISION_FLAGS[precision]]
    if images is not None:
        command += ["--set", f"data.train_subset={images}"]
    if epochs != 1:
        command += ["--set", f"optimizer.epochs={epochs}"]
    environment = {**os.environ, "TAPSC_OFFLINE": "1"}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}"
                         f"\n{result.stderr[-3000:]}")
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    row = history[-1]  # with --epochs 2 or more: an epoch after start-up (cuDNN autotuning, lazy init)
    from tapsc.language.spec import load_spec

    batches = -(-(images or TRAIN_BATCHES * PER_BATCH) // load_spec(SPECS[method]).data.batch)
    return {"method": method, "precision": precision, "device": device, "images": images or TRAIN_BATCHES * PER_BATCH,
            "batches": batches, "epochs": epochs, "train_seconds": row["train_seconds"],
            "first_train_seconds": history[0]["train_seconds"], "parts": row.get("train_part_seconds"),
            "epoch_seconds": row["seconds"],
            "process_seconds": round(wall, 1), "command": " ".join(command[1:])}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    parser.add_argument("--precision", default="bf16",
                        help="comma-separated, from: bf16 (autocast), tf32, fp32 (default bf16, the target)")
    parser.add_argument("--methods", default="ibp,taps", help="comma-separated, from: " + ", ".join(SPECS))
    parser.add_argument("--images", type=int, default=None, help="train on the first N images (default: all 50k)")
    parser.add_argument("--epochs", type=int, default=1,
                        help="train N epochs and report the last (N >= 2 leaves start-up costs out)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder holding cifar-10-batches-py (default: random images in a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="where the run folders go (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    import torch  # after argument parsing: --help stays fast

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if not precisions or set(precisions) - set(PRECISION_FLAGS):
        parser.error(f"--precision takes a comma-separated list from: {', '.join(PRECISION_FLAGS)}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in SPECS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(SPECS)}")
    with tempfile.TemporaryDirectory(prefix="tapsc-epoch-") as scratch:
        data_root = args.data_root
        if data_root is None or not has_cifar10(data_root):
            data_root = write_random_cifar10(data_root or Path(scratch) / "data")
            print(f"random CIFAR-10-format images written to {data_root}", flush=True)
        out = args.out or Path(scratch) / "runs"
        rows = []
        for precision in precisions:
            for method in methods:
                rows.append(time_epoch(method, device, precision, data_root, args.images, out, args.epochs))
                print(json.dumps(rows[-1]), flush=True)
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    print(f"\ndevice: {gpu or 'cpu'}; torch {torch.__version__}")
    print(f"{'method':<6} {'precision':<9} {'images':>7} {'train s/epoch':>14} {'images/s':>9} {'x IBP':>6}  "
          "seconds in data / step / probe / display")
    for row in rows:
        ibp = next((r for r in rows if r["method"] == "ibp" and r["precision"] == row["precision"]), None)
        ratio = f"{row['train_seconds'] / ibp['train_seconds']:.2f}" if ibp else "-"
        print(f"{row['method']:<6} {row['precision']:<9} {row['images']:>7} "
              f"{row['train_seconds']:>14.1f} {row['images'] / row['train_seconds']:>9.0f} {ratio:>6}  "
              + " / ".join(f"{v:.1f}" for v in (row["parts"] or {}).values()))
    if args.json:
        args.json.write_text(json.dumps({"gpu": gpu, "torch": torch.__version__, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
