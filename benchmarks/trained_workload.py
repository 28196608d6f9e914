"""The trained workload of the step benchmarks: a network trained by a shipped spec, and real images.

The random workload (Shi-initialised CNN7, uniform noise images) makes the latent attack
work hardest: no row of the attack ever stops moving. A trained TAPS network on real data
behaves differently (on the Fashion-MNIST study net 68% of the attack's rows stop moving by
step 12, docs/benchmarks.md), so the benchmarks time both.

The network is trained by the real runner, once, and cached:

    tapsc run SPEC --out $TAPSC_CACHE_DIR/benchmarks/trained/<spec stem>-<key> --device DEVICE

(``$TAPSC_CACHE_DIR`` defaults to ``~/.cache/tapsc``; the key hashes the spec's text, the
device type and any quick-mode overrides, so an edited spec trains again). ``--trained-run
DIR`` uses a run you trained yourself instead. The images are the first ``batch`` images of
the spec's training split, as the runner loads them (its ``train_augment`` applied).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = REPO / "specs" / "quickstart.taps"
# --quick: a few batches of the same spec, enough to exercise the path (not a trained network)
QUICK_OVERRIDES = ("--epochs", "3", "--set", "data.validation=16", "--set", "data.train_subset=48",
                   "--set", "eval.samples=8")


@dataclass
class TrainedWorkload:
    """A trained network (training mode), one batch of its real images, and where both came from."""

    spec: object  # tapsc.language.ir.Spec of the run
    network: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps_target: float
    source: dict  # JSON-able: spec, run directory, the command that trained it, images


def cache_root() -> Path:
    """Where trained runs are cached: ``$TAPSC_CACHE_DIR/benchmarks/trained``."""
    return Path(os.environ.get("TAPSC_CACHE_DIR", "~/.cache/tapsc")).expanduser() / "benchmarks" / "trained"


def train_command(spec_path: Path, out: Path, device: torch.device, quick: bool) -> list[str]:
    """The ``tapsc run`` command that trains the cached run (shown in the output and JSON)."""
    return [sys.executable, "-m", "tapsc", "run", str(spec_path), "--out", str(out), "--device", device.type,
            *(QUICK_OVERRIDES if quick else ())]


def cached_run(spec_path: Path, device: torch.device, quick: bool = False, log=print) -> tuple[Path, list[str]]:
    """The cached run of ``spec_path`` (trained now when missing) and the command that trains it."""
    spec_path = spec_path.resolve()
    key = hashlib.sha256("\n".join([spec_path.read_text(), device.type, *(QUICK_OVERRIDES if quick else ())])
                         .encode()).hexdigest()[:12]
    run_dir = cache_root() / f"{spec_path.stem}{'-quick' if quick else ''}-{key}"
    command = train_command(spec_path, run_dir, device, quick)
    if (run_dir / "results.json").is_file():  # written last: the run finished
        return run_dir, command
    partial = run_dir.with_name(run_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted earlier attempt
    log(f"  training the trained workload: {' '.join(command)}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    done = subprocess.run(train_command(spec_path, partial, device, quick), check=False, env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"training the trained workload failed ({' '.join(command)}):\n{done.stdout[-3000:]}")
    shutil.rmtree(run_dir, ignore_errors=True)
    partial.rename(run_dir)
    return run_dir, command


def load_workload(run_dir: Path, batch: int | None, device: torch.device, command: list[str] | None = None,
                  ) -> TrainedWorkload:
    """The run's best checkpoint in training mode and the first ``batch`` training images."""
    from tapsc.data import load_dataset
    from tapsc.train.rundir import load_run

    spec, network = load_run(run_dir, "best")
    batch = batch or spec.data.batch
    dataset = load_dataset(spec.data, train=True, shape=tuple(spec.model.input_shape))
    count = min(batch, len(dataset))
    images, labels = zip(*(dataset[i] for i in range(count)))
    x = torch.stack([torch.as_tensor(image, dtype=torch.float32) for image in images]).to(device)
    y = torch.tensor([int(label) for label in labels], device=device)
    pert = spec.perturbation
    eps_target = float(pert.train_eps if pert.train_eps is not None else pert.eps)
    source = {"run_dir": str(run_dir), "dataset": spec.data.dataset,
              "command": " ".join(command) if command else None, "images": f"first {count} training images",
              "batch": count, "eps_target": eps_target}
    return TrainedWorkload(spec, network.to(device).train(), x, y, eps_target, source)


def trained_workload(device: torch.device, spec_path: Path | None = None, run_dir: Path | None = None,
                     batch: int | None = None, quick: bool = False, log=print) -> TrainedWorkload:
    """``run_dir``'s network, or the cached run of ``spec_path`` (default specs/quickstart.taps)."""
    command = None
    if run_dir is None:
        spec_path = spec_path or DEFAULT_SPEC
        run_dir, command = cached_run(spec_path, device, quick, log)
    workload = load_workload(run_dir, batch, device, command)
    workload.source["spec"] = str(spec_path) if spec_path is not None else None
    return workload


def split_for(spec, relus_in_classifier: int) -> int | None:
    """The network index where the classifier starts with ``relus_in_classifier`` ReLUs in it,
    or None when no top-level boundary of the trained model leaves exactly that many."""
    from tapsc.language import ir
    from tapsc.language.shapes import split_index

    try:
        index = split_index(spec.model, ir.SplitByRelus(count=relus_in_classifier))
    except ValueError:
        return None
    return index + (1 if spec.data.normalize is not None else 0)
