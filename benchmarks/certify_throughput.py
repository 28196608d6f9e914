"""Certification throughput and what CROWN adds over IBP.

    .venv/bin/python benchmarks/certify_throughput.py [--device cpu|cuda] [--quick] [--json out.json]

1. Samples per second of IBP, CROWN-IBP and CROWN bounds (``tapsc.certify``) on CNN7 with
   CIFAR-10-shaped input (eval mode, float32, eps 2/255). CROWN back-substitutes from every
   unstable pre-ReLU neuron, which on CNN7's 64-channel 32x32 convolutions takes minutes per
   sample on a CPU; on CPU it is therefore measured on CNN7 of width 8 unless ``--crown-width``
   says otherwise (the width is in the output).
2. On a trained model (``--run-dir``, or specs/quickstart.taps trained here with the
   library's own step), how many test samples each method certifies, and the gain of
   CROWN over IBP.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import SHAPES, load, spec_text, synchronize

from tapsc.certify import certified
from tapsc.compile import compile_network

REPO = Path(__file__).resolve().parents[1]
METHODS = ("ibp", "crown_ibp", "crown")
CERTIFY_EPS = 2 / 255


def throughput(device, samples: int, width: int, methods=METHODS, repeats: int = 1) -> list[dict]:
    """Samples/s of each bound method on CNN7 (CIFAR-10 shape) with random Shi-initialised weights."""
    shape = SHAPES["cifar10"]
    spec = load(spec_text(shape, samples, "ibp", 0, width))
    torch.manual_seed(0)
    network = compile_network(spec).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((samples,) + shape.input_shape, generator=generator).to(device)
    y = torch.randint(0, 10, (samples,), generator=generator).to(device)
    rows = []
    for method in methods:
        certified(network, x[:1], y[:1], CERTIFY_EPS, "ibp")  # warm-up (rule registration, kernels)
        best = float("inf")
        for _ in range(repeats):
            synchronize(device)
            started = time.perf_counter()
            proven = certified(network, x, y, CERTIFY_EPS, method)
            synchronize(device)
            best = min(best, time.perf_counter() - started)
        rows.append({"method": method, "width": width, "samples": samples, "seconds": best,
                     "samples_per_s": samples / best, "certified": int(proven.sum())})
    return rows


def train_quickstart(device, epochs: int | None, log=print, max_batches: int | None = None):
    """specs/quickstart.taps trained for ``epochs`` (all by default) with tapsc's phase_loss step."""
    from tapsc.data import load_dataset
    from tapsc.language.spec import load_spec
    from tapsc.method import eps_at, phase_loss

    spec = load_spec(REPO / "specs" / "quickstart.taps")
    epochs = spec.optimizer.epochs if epochs is None else min(epochs, spec.optimizer.epochs)
    torch.manual_seed(spec.optimizer.seed)
    network = compile_network(spec).to(device).train()
    opt = spec.optimizer
    optimizer = torch.optim.Adam(network.parameters(), lr=opt.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(opt.milestones), opt.decay_factor)
    shape = tuple(spec.model.input_shape)
    loader = torch.utils.data.DataLoader(load_dataset(spec.data, train=True, shape=shape), batch_size=spec.data.batch,
                                         shuffle=True, generator=torch.Generator().manual_seed(opt.seed))
    pert = spec.perturbation
    target = pert.train_eps if pert.train_eps is not None else pert.eps
    for epoch in range(epochs):
        phase = next(p for p in spec.method.phases if p.start <= epoch and (p.end is None or epoch < p.end))
        for index, (x, y) in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            eps = eps_at(pert.schedule, target, epoch, index, len(loader))
            optimizer.zero_grad(set_to_none=True)
            loss, _ = phase_loss(network, phase, x, y, eps, target, l1=opt.l1)
            loss.backward()
            if opt.clip is not None:
                torch.nn.utils.clip_grad_norm_(network.parameters(), opt.clip)
            optimizer.step()
        scheduler.step()
        log(f"  quickstart epoch {epoch + 1}/{epochs} ({phase.kind})")
    return spec, network.eval()


def certified_counts(spec, network, device, samples: int | None) -> dict:
    """Test samples certified by each method at the spec's eps; CROWN's gain over IBP."""
    from tapsc.data import load_dataset

    test = load_dataset(spec.data, train=False, shape=tuple(spec.model.input_shape))
    count = len(test) if samples is None else min(samples, len(test))
    x = torch.stack([torch.as_tensor(test[i][0], dtype=torch.float32) for i in range(count)]).to(device)
    y = torch.tensor([int(test[i][1]) for i in range(count)], device=device)
    with torch.no_grad():
        correct = network(x).argmax(1) == y
    counts = {}
    for method in METHODS:
        counts[method] = int((certified(network, x, y, float(spec.perturbation.eps), method) & correct).sum())
    return {"samples": count, "eps": float(spec.perturbation.eps), "natural": int(correct.sum()),
            "certified": counts, "crown_gain_over_ibp": counts["crown"] - counts["ibp"]}


def certify_throughput(device, quick: bool = False, run_dir: Path | None = None, crown_width: int | None = None,
                       samples: int | None = None, log=print) -> dict:
    """Both measurements as one JSON-able dict."""
    if quick:  # CROWN's cost is its unstable conv neurons; it is exercised on the trained model below
        rows = throughput(device, samples or 2, 4, ("ibp", "crown_ibp"))
    else:
        n = samples or 32
        rows = throughput(device, n, 64, ("ibp", "crown_ibp"))
        width = crown_width or (64 if device.type == "cuda" else 8)
        rows += throughput(device, n if width == 64 else max(2, n // 8), width, ("crown",))
    log("  certification throughput done")
    if run_dir is not None:
        from tapsc.train.rundir import load_run

        spec, network = load_run(run_dir)
        network = network.to(device).eval()
        source = str(run_dir)
    else:
        spec, network = train_quickstart(device, 1 if quick else None, log=log, max_batches=4 if quick else None)
        source = "specs/quickstart.taps, trained here" + (" for 4 batches" if quick else "")
    counts = certified_counts(spec, network, device, 16 if quick else None)
    return {"device": str(device), "eps": CERTIFY_EPS, "throughput": rows, "trained": {"model": source, **counts}}


def render(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=130)
    table = Table(title=f"certification throughput, CNN7 CIFAR-10 shape, eps 2/255 ({result['device']})")
    for column in ("method", "CNN7 width", "samples", "seconds", "samples/s"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in result["throughput"]:
        table.add_row(row["method"], str(row["width"]), str(row["samples"]), f"{row['seconds']:.2f}",
                      f"{row['samples_per_s']:.2f}")
    console.print(table)
    trained = result["trained"]
    counts = trained["certified"]
    console.print(f"trained model ({trained['model']}), {trained['samples']} test samples at eps {trained['eps']:g}: "
                  f"natural {trained['natural']}, IBP {counts['ibp']}, CROWN-IBP {counts['crown_ibp']}, "
                  f"CROWN {counts['crown']} (CROWN certifies {trained['crown_gain_over_ibp']} more than IBP)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--run-dir", type=Path)
    parser.add_argument("--crown-width", type=int, help="CNN7 width for CROWN (default 64 on CUDA, 8 on CPU)")
    parser.add_argument("--samples", type=int, help="samples per throughput measurement (default 32)")
    args = parser.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    result = certify_throughput(device, args.quick, args.run_dir, args.crown_width, args.samples,
                                log=lambda m: print(m, file=sys.stderr, flush=True))
    render(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
