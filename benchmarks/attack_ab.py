"""The TAPS training step with another commit's latent attack against the working tree's, interleaved.

    .venv/bin/python benchmarks/attack_ab.py --before REV [--trained-run DIR] [--steps 20] [--reps 15]

Loads ``_attack_chunk`` from ``git show REV:tapsc/method/latent_attack.py`` (its imports
resolve against the working tree) and times the full TAPS step (1 ReLU in the classifier,
K - 1 estimators) with it and with the working tree's, plus the IBP step, in one process:
the three in alternating order within every repetition, each step from the same weights,
process CPU seconds. Workload: a trained run (``--trained-run``, its first images), or the
random CNN7 of benchmarks/train_step.py (CIFAR-10 shape). Also checks that both attacks
return the same points from the same seed. Used for row retirement (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import SHAPES
from measure import cpu_timed, median, random_batch
from train_step import all_methods, build_cases, make_step, trained_cases
from trained_workload import load_workload

from tapsc.language import ir
from tapsc.method import latent_attack
from tapsc.method.input_attack import input_box

REPO = Path(__file__).resolve().parents[1]


def attack_at(rev: str):
    """The ``_attack_chunk`` of ``tapsc/method/latent_attack.py`` at commit ``rev``."""
    text = subprocess.run(["git", "show", f"{rev}:tapsc/method/latent_attack.py"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout
    # before the stage packages (tapsc/language/...), the IR was the top-level tapsc.ir
    text = text.replace("from tapsc import ir\n", "from tapsc.language import ir\n")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as file:
        file.write(text)
    spec = importlib.util.spec_from_file_location(f"latent_attack_{rev}", file.name)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        Path(file.name).unlink()
    return module._attack_chunk


def workload(run_dir: Path | None, steps: int, batch: int = 128, width: int = 64):
    """(network, x, y, eps, cases for IBP and TAPS, Adam's lr)."""
    methods = [m for m in all_methods((steps,)) if m.name in ("ibp", f"taps_relu1_steps{steps}")]
    if run_dir is not None:
        trained = load_workload(run_dir, None, torch.device("cpu"))
        return (trained.network, trained.x, trained.y, trained.eps_target, trained_cases(trained, methods),
                trained.spec.optimizer.lr)
    network, spec, cases = build_cases(SHAPES["cifar10"], batch, width, methods, torch.device("cpu"))
    x, y = random_batch(batch, SHAPES["cifar10"].input_shape)
    return network, x, y, cases[0].eps_target, cases, spec.optimizer.lr


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the commit whose latent attack is the baseline")
    parser.add_argument("--trained-run", type=Path, help="a finished `tapsc run` folder (default: random CNN7)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--batch", type=int, default=128, help="random workload only")
    parser.add_argument("--width", type=int, default=64, help="random workload only: CNN7 width")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _compare(args)
    finally:
        torch.set_num_threads(threads)  # main() may run inside another process (the tests)


def _compare(args) -> dict:
    chunks = {"before": attack_at(args.before), "after": latent_attack._attack_chunk}
    network, x, y, eps, cases, lr = workload(args.trained_run, args.steps, args.batch, args.width)
    network.split = cases[1].split
    network(x)
    with torch.no_grad():
        z_lo, z_hi = network.extractor_box(*input_box(x, eps))
    points = {}
    for name, chunk in chunks.items():
        latent_attack._attack_chunk = chunk
        torch.manual_seed(0)
        points[name] = latent_attack.latent_attack(network, z_lo, z_hi, y, ir.LatentAttack(steps=args.steps))
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    ibp, taps = (make_step(network, optimizer, case, x, y, False, False, 10.0) for case in cases)

    def run(variant: str) -> float:
        latent_attack._attack_chunk = chunks.get(variant, chunks["after"])
        network.load_state_dict(state)
        torch.manual_seed(0)
        return cpu_timed(ibp if variant == "ibp" else taps)[0]

    times = {"ibp": [], "before": [], "after": []}
    for variant in times:  # warm-up
        run(variant)
    for rep in range(args.reps):
        for variant in list(times) if rep % 2 == 0 else list(times)[::-1]:
            times[variant].append(run(variant))
    latent_attack._attack_chunk = chunks["after"]
    result = {"same_points": bool(torch.equal(points["before"], points["after"])),
              **{f"{k}_cpu_s": median(v) for k, v in times.items()}, "times": times}
    result["after_over_before"] = result["after_cpu_s"] / result["before_cpu_s"]
    print(f"same points: {result['same_points']}; CPU s per step: IBP {result['ibp_cpu_s']:.4f}, TAPS with "
          f"{args.before}'s attack {result['before_cpu_s']:.4f} ({result['before_cpu_s'] / result['ibp_cpu_s']:.2f}x "
          f"IBP), with the working tree's {result['after_cpu_s']:.4f} "
          f"({result['after_cpu_s'] / result['ibp_cpu_s']:.2f}x IBP): after/before {result['after_over_before']:.3f}")
    return result


if __name__ == "__main__":
    main()
