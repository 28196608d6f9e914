"""The latent attack iterating in bf16 against float32: the points' strength and the step's time.

    .venv/bin/python benchmarks/attack_precision.py [--trained-run DIR] [--steps 20] [--seeds 5] [--reps 5]
                                                    [--json out.json]

``tapsc run`` lets the training passes' attacks iterate in bf16 where the CPU multiplies bf16
natively (``tapsc.precision.attack_precision``; ``--no-attack-bf16`` turns it off). The points
then differ from the float32 attack's: this script measures by how much, where it matters,
on the margins the TAPS loss is computed from. For each seed it runs the latent attack
(1 ReLU in the classifier, K - 1 estimators, the paper's schedule) both ways from the same
random start, then scores both sets of points in float32 (``margins_at``, as the loss does):

- ``margin_gain``: the bf16 points' margin minus the float32 points', per (sample, wrong
  class); its mean, 1st percentile and the share of entries where bf16 found a weaker point
  by more than 1e-4 (relative to the margin's scale: the mean |margin|);
- ``loss``: the TAPS loss term (cross-entropy of the estimated margins) both ways.

Then it times the full TAPS training step both ways and the IBP step, interleaved, in
process CPU seconds (one thread). Workload: a trained run (``--trained-run``, its first
images) or the random CNN7 of benchmarks/train_step.py (CIFAR-10 shape, batch 128).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attack_ab import workload
from measure import cpu_timed, median, write_json
from train_step import make_step

from tapsc.language import ir
from tapsc.method.input_attack import input_box
from tapsc.method.latent_attack import latent_attack, margins_at
from tapsc.precision import attack_precision, fast_attack_dtype

WEAKER = 1e-4  # a bf16 point counts as weaker when its margin is lower by more than this x the margin scale


def compare_points(network, x, y, eps: float, split: int, steps: int, seeds: int) -> dict:
    """Per seed: the float32-scored margins of the float32 and the bf16 attack's points."""
    network.split = split
    network(x)  # the clean forward first: BatchNorm's batch statistics, as in a training step
    with torch.no_grad():
        z_lo, z_hi = network.extractor_box(*input_box(x, eps))
    attack = ir.LatentAttack(steps=steps)
    gains, weaker, losses, same, scales = [], [], {"float32": [], "bf16": []}, [], []
    for seed in range(seeds):
        points = {}
        for name, dtype in (("float32", None), ("bf16", torch.bfloat16)):
            torch.manual_seed(seed)
            with attack_precision(dtype):
                points[name] = latent_attack(network, z_lo, z_hi, y, attack)
        with torch.no_grad():
            margin = {name: margins_at(network, z, y, multi=True) for name, z in points.items()}
        for name, m in margin.items():
            losses[name].append(float(torch.nn.functional.cross_entropy(m, y)))
        wrong = torch.ones_like(margin["float32"], dtype=torch.bool).scatter_(1, y[:, None], False)
        gain = (margin["bf16"] - margin["float32"])[wrong]
        scale = float(margin["float32"][wrong].abs().mean())
        gains.append(gain)
        scales.append(scale)
        weaker.append(float((gain < -WEAKER * scale).float().mean()))
        same.append(float((points["bf16"] == points["float32"]).float().mean()))
    gain = torch.cat(gains)
    return {"margin_scale": sum(scales) / len(scales), "margin_gain_mean": float(gain.mean()),
            "margin_gain_p01": float(gain.quantile(0.01)),
            "margin_gain_min": float(gain.min()), "weaker_share": weaker, "same_coordinates_share": same,
            "loss_float32": losses["float32"], "loss_bf16": losses["bf16"]}


def time_steps(network, x, y, cases, lr: float, reps: int) -> dict:
    """Process CPU seconds of the IBP step and of the TAPS step with each attack precision."""
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    steps = {"ibp": make_step(network, optimizer, cases[0], x, y, False, False, 10.0),
             "taps_float32": make_step(network, optimizer, cases[1], x, y, False, False, 10.0),
             "taps_bf16": make_step(network, optimizer, cases[1], x, y, False, False, 10.0, attack_bf16=True)}

    def run(name: str) -> float:
        network.load_state_dict(state)
        torch.manual_seed(0)
        return cpu_timed(steps[name])[0]

    times = {name: [] for name in steps}
    for name in steps:
        run(name)  # warm-up
    for rep in range(reps):
        for name in list(steps) if rep % 2 == 0 else list(steps)[::-1]:
            times[name].append(run(name))
    return {"times": times, **{f"{name}_cpu_s": median(t) for name, t in times.items()}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trained-run", type=Path, help="a finished `tapsc run` folder (default: random CNN7)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=5, help="attacks compared, each from its own random start")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of each step")
    parser.add_argument("--batch", type=int, default=128, help="random workload only")
    parser.add_argument("--width", type=int, default=64, help="random workload only: CNN7 width")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        network, x, y, eps, cases, lr = workload(args.trained_run, args.steps, args.batch, args.width)
        result = {"workload": str(args.trained_run) if args.trained_run else "random CNN7, CIFAR-10 shape",
                  "native_bf16": fast_attack_dtype(torch.device("cpu")) is not None, "steps": args.steps,
                  "batch": int(x.shape[0]), "eps": eps}
        result["points"] = compare_points(network, x, y, eps, cases[1].split, args.steps, args.seeds)
        result["timing"] = time_steps(network, x, y, cases, lr, args.reps) if args.reps else None
    finally:
        torch.set_num_threads(threads)  # main() may run inside another process (the tests)
    points, timing = result["points"], result["timing"]
    print(f"{result['workload']}: bf16 points' margin - float32 points' margin (margins' scale, the mean |margin|: "
          f"{points['margin_scale']:.4g}): mean {points['margin_gain_mean']:+.3g} "
          f"({points['margin_gain_mean'] / points['margin_scale']:+.2e} x scale),"
          f" 1st percentile {points['margin_gain_p01']:+.3g}, min {points['margin_gain_min']:+.3g}; weaker by more "
          f"than {WEAKER:g} x scale: {', '.join(f'{w:.1%}' for w in points['weaker_share'])}; TAPS loss float32 "
          f"{median(points['loss_float32']):.4f} / bf16 {median(points['loss_bf16']):.4f}")
    if timing:
        ibp = timing["ibp_cpu_s"]
        print(f"CPU s per step: IBP {ibp:.4f}; TAPS float32 attack {timing['taps_float32_cpu_s']:.4f} "
              f"({timing['taps_float32_cpu_s'] / ibp:.2f}x IBP), bf16 attack {timing['taps_bf16_cpu_s']:.4f} "
              f"({timing['taps_bf16_cpu_s'] / ibp:.2f}x IBP): bf16/float32 "
              f"{timing['taps_bf16_cpu_s'] / timing['taps_float32_cpu_s']:.3f}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
