"""tapsc's side of the peer comparison: CNN7 from the library block, as benchmarks/train_step.py
times it (the spec -> IR -> compile path, Shi init, the runner's step), behind the protocol."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS.parent))
sys.path.insert(0, str(BENCHMARKS))

from bench_common import SHAPES, optimizer_step
from measure import random_batch
from protocol import arguments, claim_stdout, method_names, serve
from train_step import Method, build_cases


def methods_for(names: list[str]) -> list[Method]:
    """train_step's methods under the comparison's names (TAPS: 1 ReLU in the classifier, 9 estimators)."""
    methods = []
    for name in names:
        if name.startswith("taps_steps"):
            steps = int(name.removeprefix("taps_steps"))
            methods.append(Method(name, "taps", f"taps {{ attack pgd(steps = {steps}, multi); weight 5 }}", 1, steps))
        else:
            methods.append(Method(name, name, name))
    return methods


def main() -> None:
    replies = claim_stdout()
    import torch

    import tapsc
    from tapsc.method import phase_loss

    args = arguments(__doc__.split("\n")[0])
    network, spec, cases = build_cases(SHAPES["cifar10"], args.batch, args.width, methods_for(method_names(args.methods, args.steps)),
                                       torch.device("cpu"))
    x, y = random_batch(args.batch, SHAPES["cifar10"].input_shape)
    optimizer = torch.optim.Adam(network.parameters(), lr=spec.optimizer.lr)
    steps = {}
    for case in cases:
        def step(case=case):
            network.split = case.split
            optimizer_step(network, optimizer, lambda: phase_loss(network, case.phase, x, y, args.eps,
                                                                  args.eps)[0], "cpu", False, 10.0)
        steps[case.method.name] = step
    serve(replies, steps, {"name": "tapsc", "version": getattr(tapsc, "__version__", "?"), "torch": torch.__version__})


if __name__ == "__main__":
    main()
