"""tapsc against CTRAIN and the authors' code (eth-sri/TAPS): the same training steps, interleaved in one run.

    .venv/bin/python benchmarks/peers.py [--ctrain-python PY] [--authors-dir DIR --authors-python PY]
                                         [--repeats 5] [--json out.json]

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
from protocol import method_names

TAPSC = "tapsc"


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
    peers = [Peer(TAPSC, [sys.executable, str(DRIVERS / "tapsc_driver.py"), *common])]
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


def render(rows: list[dict], peers: list[Peer], settings: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=130)
    for peer in peers:
        if peer.skipped:
            console.print(f"[yellow]skipped {peer.name}[/yellow]: {_escape(peer.skipped)}")
    table = Table(title=f"training step, CNN7 CIFAR-10 shape, batch {settings['batch']}, eps {settings['eps']:.5g}, "
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


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


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
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    parser.add_argument("--quick", action="store_true", help="smoke test: width 4, batch 4, 2-step attacks, 1 repeat")
    parser.add_argument("--json", type=Path, help="write the raw times and the table here")
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.batch, args.steps, args.repeats, args.warmup = 4, 4, "2", 1, 0
    if "ibp" not in args.methods.split(","):
        args.methods = "ibp," + args.methods  # every ratio needs the IBP step
    methods = method_names(args.methods, args.steps)
    peers = peers_from(args)
    with tempfile.TemporaryDirectory(prefix="tapsc-peers-") as logs:
        try:
            for peer in peers:
                if peer.command is not None and not peer.skipped:
                    start(peer, args.threads, Path(logs), log=_log)
            results = measure(peers, methods, args.repeats, args.warmup, not args.no_memory, log=_log)
        finally:
            for peer in peers:
                stop(peer)
    rows = summarise(results, methods)
    result = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpu_count": os.cpu_count()},
              "settings": settings(args), "implementations": {p.name: p.info for p in peers if not p.skipped},
              "skipped": {p.name: p.skipped for p in peers if p.skipped}, "raw": results, "rows": rows}
    render(rows, peers, result["settings"])
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
