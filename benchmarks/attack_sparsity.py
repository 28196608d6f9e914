"""How much the latent attack's iterate and first-layer ReLU pattern change per step.

    .venv/bin/python benchmarks/attack_sparsity.py [--run-dir RUN] [--steps 20] [--batch 128]

An incremental attack (h <- h + W dz for the first classifier layer, g <- g + W^T (v * dm)
for its gradient) would pay off only if few latent coordinates move and few ReLUs flip
per step. This prints both, per step, for the multi-estimator attack of tapsc (same
start, step rule and learning-rate decay as tapsc.method.latent_attack): on a trained run's
training images (``--run-dir``), or on the training benchmark's Shi-initialised CNN7 with
random CIFAR-10-shaped data (the default). Numbers in docs/benchmarks.md ("Open").
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from tapsc.method.latent_attack import LR_DECAY, LR_DECAY_AT, _margin_signs, _objective, wrong_classes


def network_and_batch(run_dir: Path | None, batch: int, width: int = 64):
    """(network in training mode, x, y, eps): a trained run's first training images, or random data."""
    if run_dir is None:
        from bench_common import SHAPES, load, spec_text

        from tapsc.compile import compile_network

        shape = SHAPES["cifar10"]
        network = compile_network(load(spec_text(shape, batch, "taps", 1, width)))
        return network.train(), torch.rand((batch, *shape.input_shape)), torch.randint(0, 10, (batch,)), 8 / 255
    from tapsc.data import load_dataset
    from tapsc.train.rundir import load_run

    spec, network = load_run(run_dir, "best")
    dataset = load_dataset(spec.data, train=True, shape=tuple(spec.model.input_shape))
    x, y = zip(*(dataset[i] for i in range(batch)))
    eps = spec.perturbation.train_eps or spec.perturbation.eps
    return network.train(), torch.stack(x), torch.tensor(y), eps


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, help="a trained run (default: random CNN7, CIFAR-10 shape)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=64, help="CNN7 width without --run-dir (64 is the paper's)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    network, x, y, eps = network_and_batch(args.run_dir, args.batch, args.width)
    relus = [layer for layer in network.layers[network.split:] if type(layer).__name__ == "ReLU"]
    if not relus:
        parser.error("the classifier has no ReLU")
    seen = {}
    relus[0].register_forward_hook(lambda module, inputs, output: seen.__setitem__("pre", inputs[0].detach()))
    network(x)  # the clean batch sets BatchNorm's statistics
    rows = []
    with network.frozen_batchnorm(detach=True), torch.enable_grad():
        z_lo, z_hi = (b.detach() for b in network.extractor_box((x - eps).clamp(0, 1), (x + eps).clamp(0, 1)))
        estimators, latent = network.num_classes - 1, tuple(z_lo.shape[1:])
        count = args.batch * estimators
        lo, hi = z_lo[:, None], z_hi[:, None]
        y_N = y[:, None].expand(-1, estimators).reshape(count)
        wrong_N = wrong_classes(y, network.num_classes).reshape(count)
        sign_NK = _margin_signs(y_N, wrong_N, network.num_classes, z_lo.dtype)
        z = torch.rand((args.batch, estimators, *latent)).mul_(hi - lo).add_(lo)
        lr0, decay_step = max(0.2, 2 / args.steps), math.ceil(LR_DECAY_AT * args.steps)
        before = None
        for step in range(args.steps + 1):
            z.requires_grad_(True)
            value = _objective(network.classifier(z.reshape(count, *latent)), y_N, sign_NK)
            state = (seen["pre"] > 0, z.detach().reshape(count, -1).clone())
            if before is not None:
                flips = (state[0] != before[0]).sum(1).float()
                moved = state[1] != before[1]
                rows.append({"step": step, "flips_per_row": float(flips.mean()), "units": state[0].shape[1],
                             "coords_moved": float(moved.float().mean()),
                             "rows_still": float((moved.sum(1) == 0).float().mean()),
                             "objective": float(value.detach().mean())})
                r = rows[-1]
                print(f"step {step:2d}: {r['flips_per_row']:7.2f} of {r['units']} ReLUs flip per row, "
                      f"{r['coords_moved']:6.1%} of coordinates move, {r['rows_still']:5.1%} of rows still, "
                      f"mean margin {r['objective']:.4g}")
            before = state
            if step == args.steps:
                break
            grad, = torch.autograd.grad(value.sum(), z)
            lr = lr0 * (LR_DECAY if step >= decay_step else 1.0)
            z = (z.detach() + grad.sign() * lr * (hi - lo)).clamp(lo, hi)
    return rows


if __name__ == "__main__":
    main()
