"""Training-step benchmark: every method's step against the IBP step of the same run.

    .venv/bin/python benchmarks/train_step.py [--device cpu|cuda] [--quick] [--json out.json]

Two workloads, each timed and reported on its own, each against its own IBP step:
- random: CNN7 (the library block ``cnn7``, through the real spec -> IR -> compile path),
  Shi-initialised, on synthetic CIFAR-10-shaped (batch 128) and MNIST-shaped (batch 256)
  data, fixed seed; every step starts from the initial weights (restored, untimed): after a
  few Adam steps on the one batch the latent attack's rows start to stop early, and the step's
  cost would depend on how many steps ran before it;
- trained: the network a shipped spec trains on real data (default specs/quickstart.taps,
  sklearn's 8x8 digits, about a minute; ``--trained-spec specs/study/fashion_taps.taps`` for
  the Fashion-MNIST study net), trained once by ``tapsc run`` and cached, or ``--trained-run
  DIR``; its own batch of real training images (``benchmarks/trained_workload.py``). Every
  step starts from the trained weights (restored, untimed, before each step).
For each method: the median seconds of a full training step (forward, backward, gradient
clipping, Adam step) after warm-up, and the peak memory of one step; then each method's
ratio to the IBP step measured in the same run. Methods are interleaved within every
repetition (in a rotating order), so load on a shared machine hits all of them alike.
Then certification throughput (``benchmarks/certify_throughput.py``) unless ``--no-certify``.

On CUDA every method also runs with bf16 autocast and with ``torch.compile`` (four
variants, each with its own IBP baseline). ``--quick`` is a smoke test (tiny width and
batch, one repetition), not a measurement.

Every spec of one shape compiles to the same layers and differs only in ``split`` (and
the phase), so one network and one Adam state serve every method of a shape: the
methods are timed on the same weights and the benchmark holds one model in memory.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import SHAPES, Shape, load, median, optimizer_step, peak_memory_bytes, spec_text, timed
from measure import cpu_timed, random_batch, settings, write_json
from measure import log as _log
from trained_workload import split_for, trained_workload

from tapsc.compile import compile_network
from tapsc.language import ir
from tapsc.language.shapes import count_relus
from tapsc.method import phase_loss
from tapsc.precision import attack_precision, fast_attack_dtype, tf32_matmuls

BASELINE = "ibp"
STEPS = (20, 8)  # the paper's attack (20 steps, 1 restart) and a cheaper one
QUICK_STEPS = (2,)  # --quick: exercise every code path, measure nothing
CNN7_RELUS = 6
# the expressive-loss phases (De Palma et al. 2024): the kinds with an `alpha` setting
EXPRESSIVE = tuple(cls.model_fields["kind"].default for cls in ir.PHASE_CLASSES if "alpha" in cls.model_fields)


@dataclass(frozen=True)
class Method:
    """One benchmarked training step: a phase (spec text) at a split and eps."""

    name: str
    kind: str
    phase: str
    relus_in_classifier: int = 0
    attack_steps: int | None = None
    estimators: str = "multi"  # TAPS: the paper's K - 1 margin attacks, or one attack on the CE loss
    eps_fraction: float = 1.0  # eps = fraction * target; Shi's regularizer is on only during the ramp


def all_methods(steps=STEPS, estimation_batch: int | None = None, relus: int = CNN7_RELUS) -> list[Method]:
    """natural, IBP, IBP + Shi, CROWN-IBP (halfway up the ramp, so beta = 0.5 and the CROWN-IBP
    bound is computed: at the target eps beta = 0 and the step is IBP's), then per attack setting:
    PGD, SABR, TAPS at every split, TAPS with one estimator (split 1), STAPS with K - 1 estimators
    and with one, and the expressive losses MTL-IBP, CC-IBP, Exp-IBP (alpha 0.5). ``relus``: the
    network's ReLU count (the TAPS splits run 0..relus)."""
    cap = f", estimation_batch = {estimation_batch}" if estimation_batch else ""
    methods = [Method("natural", "natural", "natural"),
               Method("ibp", "ibp", "ibp"),
               Method("ibp_shi", "ibp", "ibp with shi_regularizer 0.5", eps_fraction=0.5),
               Method("crown_ibp", "crown_ibp", "crown_ibp", eps_fraction=0.5)]
    for s in steps:
        methods.append(Method(f"pgd_steps{s}", "pgd", f"pgd {{ attack pgd(steps = {s}) }}", attack_steps=s))
        methods.append(Method(f"sabr_steps{s}", "sabr", f"sabr {{ lambda 0.7; attack pgd(steps = {s}) }}",
                              attack_steps=s))
        for n in range(relus + 1):
            methods.append(Method(f"taps_relu{n}_steps{s}", "taps",
                                  f"taps {{ attack pgd(steps = {s}, multi{cap}); weight 5 }}", n, s))
        methods.append(Method(f"taps_single_relu1_steps{s}", "taps",
                              f"taps {{ attack pgd(steps = {s}, single{cap}); weight 5 }}", 1, s, "single"))
        methods.append(Method(f"staps_relu1_steps{s}", "staps",
                              f"staps {{ attack pgd(steps = {s}, multi{cap}); weight 5; lambda 0.7 }}", 1, s))
        methods.append(Method(f"staps_single_relu1_steps{s}", "staps",
                              f"staps {{ attack pgd(steps = {s}, single{cap}); weight 5; lambda 0.7 }}", 1, s,
                              "single"))
        for kind in EXPRESSIVE:
            methods.append(Method(f"{kind}_steps{s}", kind, f"{kind} {{ alpha 0.5; attack pgd(steps = {s}) }}",
                                  attack_steps=s))
    return methods


def select(methods: list[Method], patterns: str | None) -> list[Method]:
    """The methods matching any comma-separated glob; the IBP baseline is always kept."""
    if not patterns:
        return methods
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    return [m for m in methods if m.name == BASELINE or any(fnmatch.fnmatch(m.name, p) for p in wanted)]


@dataclass
class Case:
    method: Method
    split: int
    phase: object
    eps: float
    eps_target: float


@dataclass(frozen=True)
class Timing:
    """How one variant is timed: repetitions, warm-up steps, precision and compilation, memory."""

    reps: int
    warmup: int
    amp: bool = False
    compiled: bool = False
    memory: bool = True
    tf32: bool = False
    clock: str = "wall"  # or "cpu": this process's CPU seconds (CPU device only), blind to other jobs' load
    attack_bf16: bool = False  # the attacks iterate in bf16 (tapsc.precision.attack_precision), as `tapsc run` trains

    def seconds(self, step, device) -> float:
        return cpu_timed(step)[0] if self.clock == "cpu" else timed(step, device)


def classifier_share(network, input_shape, split: int) -> float:
    """Share of one sample's forward multiply-adds (conv, linear) spent in ``layers[split:]``."""
    macs: list[tuple[int, int]] = []
    hooks = []
    for index, layer in enumerate(network.layers):
        def hook(module, inputs, output, index=index):
            weight = getattr(module, "weight", None)
            if weight is not None and weight.dim() in (2, 4):
                per_output = weight[0].numel()
                macs.append((index, output[0].numel() * per_output))
        hooks.append(layer.register_forward_hook(hook))
    was_training = network.training
    network.eval()
    with torch.no_grad():
        network(torch.zeros((1,) + tuple(input_shape), device=next(network.parameters()).device))
    network.train(was_training)
    for handle in hooks:
        handle.remove()
    total = sum(m for _, m in macs)
    return sum(m for i, m in macs if i >= split) / max(total, 1)


def mac_model_ratio(share: float, steps: int, estimators: int = 9) -> float:
    """The TAPS step over the IBP step predicted by counting multiply-adds.

    An IBP step costs about 9 forward passes per sample (clean forward and the two
    interval convolutions, each with a backward pass of twice its cost). TAPS adds, per
    sample and for each estimator (K - 1 of them, or 1 for the single-estimator attack), one
    classifier forward and one latent gradient per attack step plus a final scoring pass:
    estimators (2 steps + 1) classifier passes of ``share`` of a forward each.
    """
    return 1 + share * estimators * (2 * steps + 1) / 9


def make_step(network, optimizer, case: Case, x, y, amp: bool, compiled: bool, clip: float,
              attack_bf16: bool = False):
    def loss_of():
        with attack_precision(torch.bfloat16 if attack_bf16 else None):
            return phase_loss(network, case.phase, x, y, case.eps, case.eps_target)[0]

    loss_fn = loss_of
    if compiled:
        import torch._dynamo.config as dynamo_config

        # Every method's closure shares one code object and guards on network.split: raise the
        # recompile limit so later methods are compiled too rather than silently run eagerly.
        name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        setattr(dynamo_config, name, max(getattr(dynamo_config, name), 256))
        loss_fn = torch.compile(loss_of)

    def step():
        network.split = case.split
        optimizer_step(network, optimizer, loss_fn, x.device.type, amp, clip)

    return step


def build_cases(shape: Shape, batch: int, width: int, methods: list[Method], device):
    """One network for the shape and a Case per method (each spec compiled to find its split)."""
    network = None
    cases = []
    for method in methods:
        spec = load(spec_text(shape, batch, method.phase, method.relus_in_classifier, width))
        torch.manual_seed(0)
        compiled = compile_network(spec)
        if network is None:
            network, reference = compiled.to(device).train(), spec
        elif [type(layer) for layer in compiled.layers] != [type(layer) for layer in network.layers]:
            raise AssertionError(f"{method.name}: the spec compiles to different layers")
        target = float(spec.perturbation.eps)
        cases.append(Case(method, compiled.split, spec.method.phases[0], method.eps_fraction * target, target))
    return network, reference, cases


def bench_variant(shape: Shape, batch: int, width: int, methods: list[Method], device, timing: Timing,
                  log=print) -> list[dict]:
    """Time (and measure the memory of) every method for one shape and variant (random workload)."""
    network, spec, cases = build_cases(shape, batch, width, methods, device)
    x, y = (t.to(device) for t in random_batch(batch, shape.input_shape))
    label = {"workload": "random", "shape": shape.name, "batch": batch, "width": width}
    initial = {k: v.detach().clone() for k, v in network.state_dict().items()}

    def reset():  # a few Adam steps on one batch drift the weights until attack rows stop early
        network.load_state_dict(initial)

    return time_cases(network, cases, x, y, spec.optimizer, label, timing, log, reset)


def trained_cases(workload, methods: list[Method]) -> list[Case]:
    """A Case per method that fits the trained model (TAPS splits it has no boundary for are left out).

    The phase is read from the same spec text as on the random workload (a phase does not
    depend on the model); eps is the trained spec's training target.
    """
    cases = []
    for method in methods:
        split = split_for(workload.spec, method.relus_in_classifier)
        if split is None:
            continue
        phase = load(spec_text(SHAPES["mnist"], 2, method.phase, 0, 1)).method.phases[0]
        cases.append(Case(method, split, phase, method.eps_fraction * workload.eps_target, workload.eps_target))
    return cases


def bench_trained(workload, methods: list[Method], timing: Timing, log=print) -> list[dict]:
    """Time every method on the trained network and its real images, each step from the trained weights."""
    network = workload.network
    trained_state = {k: v.detach().clone() for k, v in network.state_dict().items()}

    def reset():  # Adam steps on one batch would otherwise drift the trained network, step after step
        network.load_state_dict(trained_state)

    label = {"workload": "trained", "shape": workload.source["dataset"], "batch": int(workload.x.shape[0]),
             "width": None}
    return time_cases(network, trained_cases(workload, methods), workload.x, workload.y, workload.spec.optimizer,
                      label, timing, log, reset)


def time_cases(network, cases: list[Case], x, y, optimizer_settings, label: dict, timing: Timing, log=print,
               reset=None) -> list[dict]:
    """Median step time (and peak memory) of every case on one network and batch, and its ratio to
    the IBP case of the same call. ``reset`` (untimed) runs before every step when given."""
    optimizer = torch.optim.Adam(network.parameters(), lr=optimizer_settings.lr)
    clip = optimizer_settings.clip or 10.0
    steps = {c.method.name: make_step(network, optimizer, c, x, y, timing.amp, timing.compiled, clip,
                                      timing.attack_bf16) for c in cases}
    prepare = reset or (lambda: None)
    errors: dict[str, str] = {}
    for name, step in list(steps.items()):
        try:
            for _ in range(max(timing.warmup, 1 if timing.compiled else 0)):  # never time the compilation
                prepare()
                step()
        except Exception as error:  # noqa: BLE001  (a variant that cannot run, e.g. torch.compile, is reported)
            errors[name] = f"{type(error).__name__}: {error}"[:300]
            del steps[name]
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    variant = variant_name(timing.amp, timing.compiled, timing.tf32, timing.attack_bf16)
    for rep in range(timing.reps):
        shift = rep % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            prepare()
            times[name].append(timing.seconds(steps[name], x.device))
        log(f"  {label['workload']} {label['shape']} {variant}: repetition {rep + 1}/{timing.reps} done")
    peaks = {}
    for name, step in steps.items() if timing.memory else ():
        prepare()
        peaks[name] = peak_memory_bytes(step, x.device)
    base_time = median(times.get(BASELINE, []))
    base_peak = peaks.get(BASELINE)
    label = {**label, "clock": timing.clock}
    return [_row(network, case, label, variant, times, peaks, errors, base_time, base_peak) for case in cases]


def _row(network, case: Case, label: dict, variant: str, times, peaks, errors, base_time, base_peak) -> dict:
    name = case.method.name
    row = {**label, "variant": variant, **{k: v for k, v in asdict(case.method).items() if k != "phase"},
           "phase": case.method.phase, "eps": case.eps, "split": case.split}
    if case.method.kind in ("taps", "staps"):
        share = classifier_share(network, network.input_shape, case.split)
        row["classifier_share"] = round(share, 4)
        if case.method.kind == "taps":
            estimators = network.num_classes - 1 if case.method.estimators == "multi" else 1
            row["mac_model_ratio"] = round(mac_model_ratio(share, case.method.attack_steps, estimators), 3)
    if name in errors:
        row["error"] = errors[name]
    else:
        row.update(median_s=median(times[name]), times_s=times[name], ratio_to_ibp=median(times[name]) / base_time)
        if name in peaks:
            row.update(peak_mb=peaks[name] / 2**20, memory_ratio_to_ibp=peaks[name] / max(base_peak, 1))
    return row


def variant_name(amp: bool, compiled: bool, tf32: bool = False, attack_bf16: bool = False) -> str:
    return (("bf16" if amp else "tf32" if tf32 else "fp32") + ("+compile" if compiled else "")
            + ("+bf16 attack" if attack_bf16 else ""))


def variants(device, amp: str, compile_: str, attack_bf16: str = "off") -> list[tuple[bool, bool, bool]]:
    """(autocast, torch.compile, bf16 attack iterations) triples: on CPU only eager, without autocast,
    unless asked; the attack in bf16 where `tapsc run` would train so ("auto": the device has native bf16)."""
    cuda = device.type == "cuda"
    amps = {"on": [True], "off": [False], "both": [False, True], "auto": [False, True] if cuda else [False]}[amp]
    compiles = {"on": [True], "off": [False], "both": [False, True],
                "auto": [False, True] if cuda else [False]}[compile_]
    native = fast_attack_dtype(device) is not None
    attacks = {"on": [True], "off": [False], "both": [False, True], "auto": [native]}[attack_bf16]
    # under autocast the attack is bf16 already
    return [(a, c, b) for a in amps for c in compiles for b in (attacks if not a else [False])]


def render(rows: list[dict], certify: dict | None, trained: dict | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=130)  # logs and pipes: do not squeeze the table to 80 columns
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row.get("workload", "random"), row["shape"], row["batch"], row["width"], row["variant"],
               row.get("clock", "wall"))
        groups.setdefault(key, []).append(row)
    for (workload, shape, batch, width, variant, clock), group in groups.items():
        variant = f"{variant}, {'process CPU' if clock == 'cpu' else 'wall'} seconds"
        if workload == "trained":
            model = Path(trained["spec"]).name if trained and trained.get("spec") else trained and trained["run_dir"]
            title = f"training step, trained workload: {model} on {shape}, {batch} real images, {variant}"
        else:
            title = f"training step, random workload: CNN7 (width {width}) {shape} batch {batch}, {variant}"
        table = Table(title=title)
        for column in ("method", "ReLUs in clf", "clf share", "median s", "x IBP", "MAC model x IBP", "peak MiB",
                       "mem x IBP"):
            table.add_column(column, justify="left" if column == "method" else "right", no_wrap=column == "method")
        for row in group:
            if "error" in row:
                table.add_row(row["name"], "", "", "[red]error[/red]", "", "", "", "")
                continue
            share = row.get("classifier_share")
            model = row.get("mac_model_ratio")
            table.add_row(row["name"], str(row["relus_in_classifier"]) if share is not None else "",
                          f"{share:.1%}" if share is not None else "", f"{row['median_s']:.3f}",
                          f"{row['ratio_to_ibp']:.2f}", f"{model:.2f}" if model is not None else "",
                          f"{row['peak_mb']:.0f}" if "peak_mb" in row else "",
                          f"{row['memory_ratio_to_ibp']:.2f}" if "memory_ratio_to_ibp" in row else "")
        console.print(table)
    if certify:
        from certify_throughput import render as render_certify

        render_certify(certify, console)


def timing_of(args, amp: bool, compiled: bool, tf32: bool, attack_bf16: bool = False) -> Timing:
    return Timing(args.reps, args.warmup, amp, compiled, not args.no_memory, tf32, args.clock, attack_bf16)


def machine(device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "device": str(device)}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")]
        info["cpu"] = models[0] if models else None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: width 4, batch 2, 2-step attacks, one repetition, no warm-up")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--shapes", default="cifar10,mnist", help="random workload, comma-separated: cifar10, mnist")
    parser.add_argument("--workloads", default="random,trained", help="comma-separated: random, trained")
    parser.add_argument("--trained-spec", type=Path, help="spec of the trained workload, trained once and cached "
                        "under $TAPSC_CACHE_DIR/benchmarks/trained (default specs/quickstart.taps)")
    parser.add_argument("--trained-run", type=Path, help="a finished `tapsc run` folder to use as the trained "
                        "workload instead")
    parser.add_argument("--trained-batch", type=int, help="images of the trained workload (default: its spec's batch)")
    parser.add_argument("--methods", help="comma-separated globs over method names, e.g. 'ibp*,taps_relu1_*'")
    parser.add_argument("--batch", type=int, help="override every shape's batch (default 128 CIFAR, 256 MNIST)")
    parser.add_argument("--width", type=int, default=64, help="CNN7 width (64 is the paper's)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method first")
    parser.add_argument("--estimation-batch", type=int, help="cap the latent attack's rows (TAPS, STAPS)")
    parser.add_argument("--amp", choices=("auto", "on", "off", "both"), default="auto")
    parser.add_argument("--compile", choices=("auto", "on", "off", "both"), default="auto")
    parser.add_argument("--attack-bf16", choices=("auto", "on", "off", "both"), default="auto",
                        help="the attacks' iterations in bf16 (auto: where `tapsc run` trains so, a device with "
                             "native bf16; both: time the float32 attack too)")
    parser.add_argument("--tf32", action="store_true",
                        help="float32 variants with TF32 matrix products on CUDA (as `tapsc run` trains); "
                             "default: PyTorch's default, full float32 matrix products")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall seconds, or this process's CPU seconds (CPU device only: on a shared machine "
                             "they do not count the time other jobs hold the cores)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    parser.add_argument("--no-certify", action="store_true", help="skip certification throughput")
    parser.add_argument("--run-dir", type=Path, help="trained run for the CROWN-vs-IBP count (default: train "
                        "specs/quickstart.taps here)")
    args = parser.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.clock == "cpu" and device.type != "cpu":
        parser.error("--clock cpu measures CPU work only: use it with --device cpu")
    if args.quick:
        args.width, args.reps, args.warmup = 4, 1, 0
        args.batch = args.batch or 2
        args.threads = args.threads or 1  # tiny ops: threads only contend on a shared machine
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, device)
    finally:
        torch.set_num_threads(threads)  # main() may run inside another process (the tests)


def _run(args, device) -> dict:
    torch.manual_seed(0)
    steps = QUICK_STEPS if args.quick else STEPS
    workloads = {w.strip() for w in args.workloads.split(",") if w.strip()}
    unknown = workloads - {"random", "trained"}
    if unknown:
        raise SystemExit(f"unknown workload(s) {sorted(unknown)}: choose from random, trained")
    rows = []
    for name in [s.strip() for s in args.shapes.split(",") if s.strip()] if "random" in workloads else ():
        shape = SHAPES[name]
        methods = select(all_methods(steps, estimation_batch=args.estimation_batch), args.methods)
        for amp, compiled, attack_bf16 in variants(device, args.amp, args.compile, args.attack_bf16):
            tf32 = args.tf32 and not amp and device.type == "cuda"
            with tf32_matmuls(tf32):
                rows += bench_variant(shape, args.batch or shape.batch, args.width, methods, device,
                                      timing_of(args, amp, compiled, tf32, attack_bf16), log=_log)
    trained = None
    if "trained" in workloads:
        workload = trained_workload(device, args.trained_spec, args.trained_run, args.trained_batch, args.quick,
                                    log=_log)
        trained = workload.source
        relus = count_relus(workload.spec.model.layers)
        methods = select(all_methods(steps, estimation_batch=args.estimation_batch, relus=relus), args.methods)
        for amp, compiled, attack_bf16 in variants(device, args.amp, args.compile, args.attack_bf16):
            tf32 = args.tf32 and not amp and device.type == "cuda"
            with tf32_matmuls(tf32):
                torch.manual_seed(0)
                rows += bench_trained(workload, methods, timing_of(args, amp, compiled, tf32, attack_bf16), _log)
    certify = None
    if not args.no_certify:
        from certify_throughput import certify_throughput

        certify = certify_throughput(device, quick=args.quick, run_dir=args.run_dir, log=_log)
    result = {"machine": machine(device), "settings": settings(args), "baseline": BASELINE, "results": rows,
              "trained": trained, "certify": certify}
    render(rows, certify, trained)
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
