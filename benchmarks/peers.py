"""tapsc against CTRAIN and the authors' code (eth-sri/TAPS): the same training steps, interleaved in one run.

    .venv/bin/python benchmarks/peers.py [--ctrain-python PY] [--authors-dir DIR --authors-python PY]
                                         [--repeats 5] [--json out.json]
                                         [--workload trained [--trained-spec SPEC | --trained-run DIR]]

Each implementation runs in its own process (its own environment's python) through a small
driver in ``benchmarks/peer_drivers/`` that builds the implementation's own CNN7 as its
training script does (CIFAR-10 shape, Shi-style init), the same random batch (batch 128,
seeded; the same tensors in every process) and one full training step per method: natural,
IBP and TAPS at eps 8/255 with one ReLU in the classifier, 9 estimators and 20 (and 8)
attack steps; clean forward, loss, backward, clipping at norm 10, Adam. Every process uses
one torch thread. After one untimed warm-up step per method, every repetition runs every
method in every implementation, the implementations in a rotating order, one at a time
(the others wait on their pipe), so load on a shared machine hits all of them alike. Time
is the driver's process CPU seconds per step (``time.process_time``), reported as the median
of the repetitions; peak memory is the torch allocations of one step above what was live
before it (profiler, as benchmarks/train_step.py measures it). Ratios: each step over the
same implementation's IBP step, and CTRAIN's and the authors' step over tapsc's.

``--workload trained`` times the same steps on a trained network and real images instead
(tapsc's latent attack retires the rows that reach a fixed point, which on a trained network
is most of them; the peers' attacks run every row for every step): the network a spec trains
(default specs/bench/cnn7_fashion_trained.taps: CNN7, Fashion-MNIST, eps 0.1; trained once by
``tapsc run`` and cached, as ``benchmarks/train_step.py --workloads trained`` does) or a run
you trained (``--trained-run DIR``), and the first ``--batch`` images of its training split.
peers.py writes them to one workload file (``peer_drivers/protocol.py`` says what it holds);
every driver builds its own CNN7 for the input shape, copies the trained tensors in, checks
its logits against tapsc's (refusing above 1e-3; the differences are in the JSON) and starts
every step from the trained tensors. eps is the spec's training target; the spec's
normalisation (none for the MNIST shapes) replaces CIFAR-10's.

A peer whose python or folder is not given (flags, or $TAPSC_CTRAIN_PYTHON,
$TAPSC_AUTHORS_DIR, $TAPSC_AUTHORS_PYTHON) or does not start is skipped with a message
saying why. Installing the peers: docs/benchmarks.md, "Rerunning the peer comparison".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DRIVERS = HERE / "peer_drivers"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(DRIVERS))

from measure import log as _log
from measure import median, settings, write_json
from protocol import WORKLOAD_FORMAT, method_names, ordered_tensors

TAPSC = "tapsc"
TRAINED_SPEC = HERE.parent / "specs" / "bench" / "cnn7_fashion_trained.taps"


@dataclass
class Peer:
    """One implementation: how to start its driver, or why it is skipped."""

    name: str
    command: list[str] | None
    skipped: str | None = None
    process: subprocess.Popen | None = None
    info: dict = field(default_factory=dict)
    log: Path | None = None

    def request(self, op: str, method: str) -> dict:
        self.process.stdin.write(json.dumps({"op": op, "method": method}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}'s driver exited; its stderr ends:\n{self.log_tail()}")
        return json.loads(line)

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log and self.log.is_file() else ""


def peers_from(args) -> list[Peer]:
    """tapsc, CTRAIN and the authors' code, each with its driver command or the reason it is skipped."""
    common = ["--batch", str(args.batch), "--eps", str(args.eps), "--steps", args.steps, "--methods", args.methods,
              "--width", str(args.width), "--threads", str(args.threads)]
    if getattr(args, "workload_file", None):
        common += ["--workload-file", str(args.workload_file)]
    ours = ["--no-attack-bf16"] if getattr(args, "no_attack_bf16", False) else []
    peers = [Peer(TAPSC, [sys.executable, str(DRIVERS / "tapsc_driver.py"), *common, *ours])]
    ctrain = args.ctrain_python or os.environ.get("TAPSC_CTRAIN_PYTHON")
    if not ctrain:
        peers.append(Peer("CTRAIN", None, "no --ctrain-python (or $TAPSC_CTRAIN_PYTHON): the python of an "
                          "environment with ctrain installed"))
    elif not Path(ctrain).is_file():
        peers.append(Peer("CTRAIN", None, f"--ctrain-python {ctrain} does not exist"))
    else:
        peers.append(Peer("CTRAIN", [ctrain, str(DRIVERS / "ctrain_driver.py"), *common]))
    authors_dir = args.authors_dir or os.environ.get("TAPSC_AUTHORS_DIR")
    authors_python = args.authors_python or os.environ.get("TAPSC_AUTHORS_PYTHON")
    name = "authors"
    if not authors_dir:
        peers.append(Peer(name, None, "no --authors-dir (or $TAPSC_AUTHORS_DIR): a checkout of eth-sri/TAPS"))
    elif not (Path(authors_dir) / "torch_model_wrapper.py").is_file():
        peers.append(Peer(name, None, f"--authors-dir {authors_dir} holds no torch_model_wrapper.py "
                          "(not an eth-sri/TAPS checkout)"))
    elif not authors_python:
        peers.append(Peer(name, None, "no --authors-python (or $TAPSC_AUTHORS_PYTHON): the python of an "
                          "environment with torch, numpy, scipy and tqdm"))
    elif not Path(authors_python).is_file():
        peers.append(Peer(name, None, f"--authors-python {authors_python} does not exist"))
    else:
        peers.append(Peer(name, [authors_python, str(DRIVERS / "authors_driver.py"), *common,
                                 "--authors-dir", str(Path(authors_dir).resolve())]))
    return peers


def write_workload_file(workload, path: Path) -> dict:
    """The trained workload (``trained_workload.TrainedWorkload``) as the drivers read it
    (``peer_drivers/protocol.py``); returns what the JSON records about it."""
    import torch

    from tapsc.language.printer import print_spec

    spec, network = workload.spec, workload.network
    normalize = spec.data.normalize
    layers = torch.nn.ModuleList(network.layers[1 if normalize is not None else 0:])  # the mean and std go apart
    named = ordered_tensors(layers)
    was_training = network.training
    network.eval()
    with torch.no_grad():
        logits = network(workload.x)
    network.train(was_training)
    tensors = [t.detach().cpu().clone() for _, t in named]
    last = next((t for t in reversed(tensors) if t.dim() == 2), None)  # the output layer's weight
    if last is None or tensors[0].dim() != 4:
        raise SystemExit(f"the trained workload's network ({workload.source.get('run_dir')}) does not start with a "
                         "conv and end with a linear layer: the peers train CNN7 only")
    content = {
        "format": WORKLOAD_FORMAT, "x": workload.x.detach().cpu().clone(), "y": workload.y.detach().cpu().clone(),
        "eps": float(workload.eps_target), "input_shape": [int(d) for d in spec.model.input_shape],
        "normalize": None if normalize is None else ([float(v) for v in normalize.mean],
                                                     [float(v) for v in normalize.std]),
        # CNN7's hyperparameters as its tensors say (a driver's shape check refuses any other network)
        "width": int(tensors[0].shape[0]), "linear_size": int(last.shape[1]), "classes": int(last.shape[0]),
        "names": [n for n, _ in named], "tensors": tensors, "reference_logits": logits.detach().cpu().float(),
        "spec_text": print_spec(spec), "source": {k: v for k, v in workload.source.items() if v is not None},
    }
    torch.save(content, path)
    return {"file_tensors": len(tensors), "input_shape": content["input_shape"], "normalize": content["normalize"],
            "width": content["width"], "linear_size": content["linear_size"], "classes": content["classes"]}


def start(peer: Peer, threads: int, logs: Path, log=print) -> None:
    """Start the peer's driver and wait until it is ready; on failure mark it skipped, with why."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    peer.log = logs / f"{peer.name}.log"
    log(f"  starting {peer.name}: {' '.join(peer.command)}")
    with open(peer.log, "w") as stderr:
        peer.process = subprocess.Popen(peer.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                        text=True, env=env, cwd=HERE.parent)
    line = peer.process.stdout.readline()
    if not line:
        peer.process.wait()
        peer.skipped = (f"its driver did not start (exit code {peer.process.returncode}); its stderr ends:\n"
                        + peer.log_tail(1500))
        peer.process = None
        return
    peer.info = json.loads(line)


def stop(peer: Peer) -> None:
    if peer.process is None:
        return
    try:
        peer.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
        peer.process.stdin.close()
        peer.process.wait(timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        peer.process.kill()


def measure(peers: list[Peer], methods: list[str], repeats: int, warmup: int, memory: bool, log=print) -> dict:
    """{peer: {method: {"cpu_s": [...], "wall_s": [...], "peak_bytes": int}}}, interleaved."""
    running = [p for p in peers if p.process is not None]
    if not running:
        raise SystemExit("no implementation started: " + "; ".join(f"{p.name}: {p.skipped}" for p in peers))
    results = {p.name: {m: {"cpu_s": [], "wall_s": []} for m in methods} for p in running}

    def run(peer, op, method):
        if "error" in results[peer.name][method]:
            return None
        try:
            reply = peer.request(op, method)
        except (OSError, RuntimeError, ValueError) as error:  # the driver died: its cells say why, the run goes on
            reply = {"error": f"{type(error).__name__}: {error}"[:800]}
        if "error" in reply:
            results[peer.name][method]["error"] = reply["error"]
            log(f"  {peer.name} {method}: {reply['error']}")
            return None
        return reply

    for method in methods:
        for peer in running:
            for _ in range(warmup):
                run(peer, "time", method)
    for rep in range(repeats):
        for index, method in enumerate(methods):
            shift = (rep + index) % len(running)
            for peer in running[shift:] + running[:shift]:
                reply = run(peer, "time", method)
                if reply is not None:
                    results[peer.name][method]["cpu_s"].append(reply["cpu_s"])
                    results[peer.name][method]["wall_s"].append(reply["wall_s"])
        log(f"  repetition {rep + 1}/{repeats} done")
    for method in methods if memory else ():
        for peer in running:
            reply = run(peer, "memory", method)
            if reply is not None:
                results[peer.name][method]["peak_bytes"] = reply["peak_bytes"]
    return results


def summarise(results: dict, methods: list[str]) -> list[dict]:
    """One row per (method, implementation): median CPU seconds, x its own IBP, x tapsc, peak MiB."""
    rows = []
    for method in methods:
        for name, by_method in results.items():
            cell = by_method[method]
            row = {"method": method, "implementation": name, "repeats": len(cell["cpu_s"])}
            if "error" in cell or not cell["cpu_s"]:
                rows.append({**row, "error": cell.get("error", "no measurement")})
                continue
            cpu = median(cell["cpu_s"])
            ibp = median(by_method.get("ibp", {}).get("cpu_s", []))
            ours = median(results.get(TAPSC, {}).get(method, {}).get("cpu_s", []))
            row.update(median_cpu_s=cpu, median_wall_s=median(cell["wall_s"]), cpu_s=cell["cpu_s"],
                       ratio_to_own_ibp=cpu / ibp, ratio_to_tapsc=cpu / ours)
            if "peak_bytes" in cell:
                row["peak_mib"] = cell["peak_bytes"] / 2**20
            rows.append(row)
    return rows


def render(rows: list[dict], peers: list[Peer], settings: dict, workload: dict | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=130)
    for peer in peers:
        if peer.skipped:
            console.print(f"[yellow]skipped {peer.name}[/yellow]: {_escape(peer.skipped)}")
        elif peer.name == TAPSC and "attack" in peer.info:
            console.print(f"tapsc's latent attack: {peer.info['attack']}")
    table = Table(title=f"training step, {title(workload, settings)}, "
                        f"{settings['threads']} thread(s): process CPU s, medians of {settings['repeats']}")
    for column in ("method", "implementation", "median CPU s", "x own IBP", "x tapsc", "peak MiB"):
        table.add_column(column, justify="left" if column in ("method", "implementation") else "right")
    for row in rows:
        if "error" in row:
            table.add_row(row["method"], row["implementation"], "[red]error[/red]", "", "", "")
            continue
        table.add_row(row["method"], row["implementation"], f"{row['median_cpu_s']:.2f}",
                      f"{row['ratio_to_own_ibp']:.2f}", f"{row['ratio_to_tapsc']:.2f}",
                      f"{row['peak_mib']:.0f}" if "peak_mib" in row else "")
    console.print(table)


def title(workload: dict | None, settings: dict) -> str:
    """The workload part of the table's title."""
    if workload is None or workload["kind"] == "random":
        return f"random workload: CNN7 CIFAR-10 shape, batch {settings['batch']}, eps {settings['eps']:.5g}"
    trained = f"{Path(workload['spec']).name} (run {workload['run_dir']})" if workload.get("spec") else \
        f"run {workload['run_dir']}"
    return (f"trained workload: {trained}, {workload['dataset']} {workload['images']}, "
            f"eps {workload['eps_target']:.5g}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def trained_peer_workload(args, path: Path) -> dict:
    """Train (or find) the trained workload, write its file to ``path``; what the JSON says about it."""
    import torch
    from trained_workload import trained_workload

    spec = None if args.trained_run else (args.trained_spec or TRAINED_SPEC)
    workload = trained_workload(torch.device("cpu"), spec, args.trained_run, args.batch, args.quick, log=_log)
    return {"kind": "trained", **workload.source, **write_workload_file(workload, path)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ctrain-python", help="python of an environment with ctrain (default $TAPSC_CTRAIN_PYTHON)")
    parser.add_argument("--authors-dir", help="eth-sri/TAPS checkout (default $TAPSC_AUTHORS_DIR)")
    parser.add_argument("--authors-python", help="python for the authors' code (default $TAPSC_AUTHORS_PYTHON)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per method and implementation")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method and implementation first")
    parser.add_argument("--methods", default="natural,ibp,taps", help="comma-separated: natural, ibp, taps")
    parser.add_argument("--steps", default="20,8", help="attack steps of the TAPS rows, comma-separated")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--width", type=int, default=64, help="CNN7 width (64 is the paper's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every implementation's process")
    parser.add_argument("--no-attack-bf16", action="store_true", help="tapsc's attack in float32 (by default it "
                        "iterates in bf16 on a CPU with native bf16, as `tapsc run` trains there)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    parser.add_argument("--workload", choices=("random", "trained"), default="random",
                        help="random: Shi-initialised CNN7, CIFAR-10 shape, random images; trained: a trained "
                        "CNN7 and real images (the module docstring)")
    parser.add_argument("--trained-spec", type=Path, help="spec of the trained workload, trained once and cached "
                        "under $TAPSC_CACHE_DIR/benchmarks/trained (default specs/bench/cnn7_fashion_trained.taps)")
    parser.add_argument("--trained-run", type=Path, help="a finished `tapsc run` folder of a CNN7 to use as the "
                        "trained workload instead")
    parser.add_argument("--quick", action="store_true", help="smoke test: width 4, batch 4, 2-step attacks, 1 repeat "
                        "(trained workload: the spec's quick run, unless --trained-run)")
    parser.add_argument("--json", type=Path, help="write the raw times and the table here")
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.batch, args.steps, args.repeats, args.warmup = 4, 4, "2", 1, 0
    if "ibp" not in args.methods.split(","):
        args.methods = "ibp," + args.methods  # every ratio needs the IBP step
    if args.workload == "random" and (args.trained_spec or args.trained_run):
        parser.error("--trained-spec and --trained-run need --workload trained")
    if args.trained_spec and args.trained_run:
        parser.error("give --trained-spec or --trained-run, not both")
    methods = method_names(args.methods, args.steps)
    with tempfile.TemporaryDirectory(prefix="tapsc-peers-") as logs:
        workload = {"kind": "random"}
        if args.workload == "trained":
            workload = trained_peer_workload(args, Path(logs) / "workload.pt")
            args.eps, args.workload_file = workload["eps_target"], Path(logs) / "workload.pt"
        peers = peers_from(args)
        try:
            for peer in peers:
                if peer.command is not None and not peer.skipped:
                    start(peer, args.threads, Path(logs), log=_log)
            results = measure(peers, methods, args.repeats, args.warmup, not args.no_memory, log=_log)
        finally:
            for peer in peers:
                stop(peer)
    rows = summarise(results, methods)
    run_settings = settings(args)
    run_settings.pop("workload_file", None)  # a temporary file, gone now
    result = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpu_count": os.cpu_count()},
              "settings": run_settings, "workload": workload,
              "implementations": {p.name: p.info for p in peers if not p.skipped},
              "skipped": {p.name: p.skipped for p in peers if p.skipped}, "raw": results, "rows": rows}
    if args.workload == "trained":
        workload["logit_max_abs_diff"] = {p.name: p.info.get("logit_max_abs_diff") for p in peers if not p.skipped}
    render(rows, peers, result["settings"], workload)
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
