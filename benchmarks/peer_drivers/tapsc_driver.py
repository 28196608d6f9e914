"""tapsc's side of the peer comparison: CNN7 from the library block, as benchmarks/train_step.py
times it (the spec -> IR -> compile path, Shi init, the runner's step), behind the protocol.

With ``--workload-file`` (the trained workload): the network the file's spec text compiles to,
the file's trained tensors copied in and its logits checked like every peer's, the TAPS split
at one ReLU in the classifier (``split_for``), the file's images, labels and eps, and the
phases as ``train_step.py --workloads trained`` builds them.

The attack's precision is what ``tapsc run`` trains with on this machine: bf16 iterations on a
CPU with native bf16 (``tapsc.train.run.attack_dtype_for``), float32 with ``--no-attack-bf16``
or elsewhere; the driver's info says which."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS.parent))
sys.path.insert(0, str(BENCHMARKS))

from bench_common import SHAPES, optimizer_step
from measure import random_batch
from protocol import (
    arguments,
    claim_stdout,
    load_tensors,
    logit_difference,
    method_names,
    read_workload,
    serve,
    snapshot,
    workload_info,
)
from train_step import Method, build_cases, trained_cases


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


def trained_network(workload: dict):
    """The file's spec compiled, its tensors copied in (past a Normalize layer: the file holds the
    mean and std apart) and its eval-mode logits checked: (spec, network in training mode, max diff)."""
    import torch

    from tapsc.compile import compile_network
    from tapsc.language.spec import load_spec_text

    spec = load_spec_text(workload["spec_text"], "<workload file>")
    network = compile_network(spec)
    offset = 1 if spec.data.normalize is not None else 0
    load_tensors(torch.nn.ModuleList(network.layers[offset:]), workload, "tapsc's network")
    network.eval()
    with torch.no_grad():
        difference = logit_difference(network(workload["x"]), workload, "tapsc's network")
    return spec, network.train(), difference


def main() -> None:
    replies = claim_stdout()
    import torch

    import tapsc
    from tapsc.method import phase_loss

    from tapsc.precision import attack_precision
    from tapsc.train.run import RunOptions, attack_dtype_for

    args = arguments(__doc__.split("\n")[0],
                     lambda p: p.add_argument("--no-attack-bf16", action="store_true",
                                              help="the attack in float32 (`tapsc run --no-attack-bf16`)"))
    attack_dtype = attack_dtype_for(RunOptions(attack_bf16=not args.no_attack_bf16), torch.device("cpu"))
    methods = methods_for(method_names(args.methods, args.steps))
    info = {"name": "tapsc", "version": getattr(tapsc, "__version__", "?"), "torch": torch.__version__,
            "attack": "bf16 iterations" if attack_dtype is not None else "float32"}
    reset = None
    if args.workload_file:
        workload = read_workload(args.workload_file)
        spec, network, difference = trained_network(workload)
        cases = trained_cases(SimpleNamespace(spec=spec, eps_target=float(workload["eps"])), methods)
        missing = {m.name for m in methods} - {c.method.name for c in cases}
        if missing:
            raise SystemExit(f"the workload's network has no split for {sorted(missing)}")
        x, y = workload["x"], workload["y"]
        reset = snapshot(network)
        info.update(workload_info(workload, {"network": difference}),
                    splits={c.method.name: c.split for c in cases})
    else:
        network, spec, cases = build_cases(SHAPES["cifar10"], args.batch, args.width, methods, torch.device("cpu"))
        x, y = random_batch(args.batch, SHAPES["cifar10"].input_shape)
        for case in cases:
            case.eps = case.eps_target = args.eps
    optimizer = torch.optim.Adam(network.parameters(), lr=spec.optimizer.lr)
    steps = {}
    for case in cases:
        def step(case=case):
            network.split = case.split
            with attack_precision(attack_dtype):  # as `tapsc run` trains on this machine
                optimizer_step(network, optimizer, lambda: phase_loss(network, case.phase, x, y, case.eps,
                                                                      case.eps_target)[0], "cpu", False, 10.0)
        steps[case.method.name] = step
    serve(replies, steps, info, reset)


if __name__ == "__main__":
    main()
