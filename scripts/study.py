"""The Fashion-MNIST study (docs/results.md): train every spec in specs/study/, certify a
subset with CROWN, and write the results table.

    .venv/bin/python scripts/study.py [--runs runs/study] [--crown-samples 200] [--only taps,ibp]

Each method is one ordinary `tapsc run` into runs/study/<method>; a finished run (it has
results.json) is skipped and a started one is resumed, so the script can be re-run after a
kill. Then `tapsc certify` runs IBP, CROWN-IBP and CROWN on the first --crown-samples test
images. docs/results.md is rewritten from the run directories; text below the line
`<!-- discussion -->` in the existing file is kept.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("natural", "pgd", "ibp", "sabr", "taps", "staps")
MARKER = "<!-- discussion -->"
TAPSC = [sys.executable, "-m", "tapsc"]
# One torch thread per process by default: on a 2-core machine shared with other work, two
# intra-op threads per process were measured 6-9x SLOWER than one (threads wait for each other
# at every parallel region while the cores are busy elsewhere). `--threads` changes it.
ENV = dict(os.environ)


# CROWN on a PGD-trained network bounds every unstable neuron of every sample PGD leaves
# standing (most of them): minutes per batch on this CPU. It gets the first 100 test images.
CROWN_SAMPLES = {"pgd": 100}


def run(command: list[str], log: Path) -> float:
    """Run ``command`` in the repository root, appending its output to ``log``; returns seconds."""
    printable = " ".join(shlex.quote(part) for part in ["tapsc", *command[len(TAPSC):]])
    print(f"$ {printable}", flush=True)
    started = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"$ {printable}\n")
        handle.flush()
        subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, check=True, env=ENV)
    return time.perf_counter() - started


def train(method: str, runs: Path, times: dict) -> None:
    run_dir, spec = runs / method, ROOT / "specs" / "study" / f"fashion_{method}.taps"
    if (run_dir / "results.json").is_file():
        print(f"{method}: finished already ({run_dir})", flush=True)
        return
    if run_dir.exists():
        command = [*TAPSC, "run", "--resume", str(run_dir), "--device", "cpu"]
    else:
        command = [*TAPSC, "run", str(spec.relative_to(ROOT)), "--out", str(run_dir), "--device", "cpu"]
    times.setdefault(method, {})["train_wall"] = times.get(method, {}).get("train_wall", 0) + run(
        command, runs / f"{method}.log")


def certify(method: str, runs: Path, samples: int, times: dict) -> None:
    run_dir = runs / method
    samples = min(samples, CROWN_SAMPLES.get(method, samples))
    done = run_dir / "certify.json"
    if done.is_file() and json.loads(done.read_text())["settings"]["samples"] == samples:
        return
    command = [*TAPSC, "certify", str(run_dir), "--samples", str(samples), "--methods", "ibp,crown_ibp,crown",
               "--device", "cpu"]
    times.setdefault(method, {})["certify_wall"] = run(command, runs / f"{method}.log")


ANALYZE_SAMPLES = 200
ANALYZE_METHODS = "ibp,crown_ibp,sabr,taps,pgd"
ANALYZED = ("ibp", "sabr", "taps", "staps")  # CROWN on natural/PGD nets is slow (every neuron unstable)


def analyze(runs: Path, samples: int) -> None:
    """`tapsc analyze` of the certifiably trained runs: margin estimates and their gaps."""
    out = runs / "analysis"
    if (out / "analysis_across_runs.json").is_file():
        return
    # CROWN itself is left out: on misclassified/falsified samples it is slow on this CPU, and the
    # cascade's bound for every sample (CROWN where it got that far) comes in through certify.json
    command = [*TAPSC, "analyze", *(str(runs / m) for m in ANALYZED), "--samples", str(samples), "--out", str(out),
               "--methods", ANALYZE_METHODS, "--device", "cpu"]
    run(command, runs / "analysis.log")
    figures = ROOT / "docs" / "results"
    figures.mkdir(parents=True, exist_ok=True)
    for method in ANALYZED:
        (figures / f"margins_{method}.png").write_bytes((out / method / "margins.png").read_bytes())


def analysis_lines(runs: Path, samples: int) -> list[str]:
    out = runs / "analysis"
    if not (out / "analysis_across_runs.json").is_file():
        return []
    names = {"ibp": "IBP", "crown_ibp": "CROWN-IBP", "sabr": "SABR", "taps": "TAPS", "pgd": "PGD"}
    lines = [f"### How close is each estimate to the worst case? (`tapsc analyze`, first {samples} test images)",
             "",
             ("Per sample, each method estimates the worst-case margin m* = min over the eps-box of "
             "min_j (o_y - o_j). IBP and CROWN-IBP are sound lower bounds, and so is the margin bound "
             "`tapsc certify` stored per sample (CROWN where the cascade got that far); PGD and the "
             "cascade's attack give upper bounds; m* lies between the tightest bound and the strongest "
             "attack. Mean difference of each "
             "estimate to the tightest sound bound / to the PGD margin (logit units; 0 = as tight as it):"),
             "",
             "| network | " + " | ".join(names[n] for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for method in ANALYZED:
        summary = json.loads((out / method / "analysis.json").read_text())["summary"]
        cells = []
        for name in names:
            sound = summary["difference_to_tightest_sound"].get(name, {}).get("mean")
            attack = summary["difference_to_strongest_attack"].get(name, {}).get("mean")
            cells.append("-" if sound is None else f"{sound:+.2f} / {attack:+.2f}")
        lines.append(f"| {method.upper()} | " + " | ".join(cells) + " |")
    lines += ["", ("Per-sample agreement of the TAPS verdict (all estimates < 0) with PGD's and with the "
              "tightest sound bound's:"), "", "| network | TAPS vs PGD | TAPS vs certified | soundness order |",
              "|---|---|---|---|"]
    for method in ANALYZED:
        summary = json.loads((out / method / "analysis.json").read_text())["summary"]
        corr = summary["taps_correlation"]
        ok = "holds" if summary["soundness"]["ok"] else "VIOLATED"
        lines.append(f"| {method.upper()} | {100 * corr['pgd']['verdict_agreement']:.1f}% | "
                     f"{100 * corr['tightest_sound']['verdict_agreement']:.1f}% | {ok} |")
    lines += ["", "Histograms (the paper's Fig. 6 at this scale): "
              + ", ".join(f"[{m.upper()}](results/margins_{m}.png)" for m in ANALYZED) + ".", ""]
    return lines


def machine() -> str:
    import torch

    threads = ENV.get("OMP_NUM_THREADS") or str(torch.get_num_threads())
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}, {threads} torch thread(s) per run")


def certified_any(run_dir: Path) -> dict | None:
    """Share of the certify.json samples proven by ANY sound method: the cascade's (IBP,
    CROWN-IBP, CROWN) or the difference-row IBP that training and `tapsc eval` use. (The
    cascade's IBP was once looser than the latter; both are the same now, and the union
    stays as a cross-check.)"""
    cached = run_dir / "certified_any.json"
    certify_file = run_dir / "certify.json"
    if not certify_file.is_file():
        return None
    if cached.is_file() and cached.stat().st_mtime >= certify_file.stat().st_mtime:
        return json.loads(cached.read_text())
    import torch

    from tapsc import rundir
    from tapsc.method.metrics import ibp_margin
    from tapsc.data import load_dataset

    rows = json.loads(certify_file.read_text())["samples"]
    spec, network = rundir.load_run(run_dir, "best")
    test_set = load_dataset(spec.data, train=False, shape=tuple(spec.model.input_shape))
    x = torch.stack([test_set[r["index"]][0] for r in rows])
    y = torch.tensor([int(test_set[r["index"]][1]) for r in rows])
    proven = (ibp_margin(network, x, y, json.loads(certify_file.read_text())["settings"]["eps"]) > 0).tolist()
    cascade = [r["verdict"] == "certified" for r in rows]
    result = {"samples": len(rows), "cascade": sum(cascade) / len(rows),
              "difference_row_ibp": sum(proven) / len(rows),
              "any": sum(a or b for a, b in zip(cascade, proven)) / len(rows),
              "ibp_only": sum(b and not a for a, b in zip(cascade, proven))}
    cached.write_text(json.dumps(result, indent=2) + "\n")
    return result


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def row(method: str, runs: Path, times: dict) -> dict:
    run_dir = runs / method
    results = json.loads((run_dir / "results.json").read_text())
    metrics = results["metrics"]
    certify_file = run_dir / "certify.json"
    crown = None
    if certify_file.is_file():
        summary = json.loads(certify_file.read_text())["summary"]
        crown = {"samples": summary["counts"]["samples"], "adversarial": summary["rates"]["adversarial"],
                 "any": certified_any(run_dir),
                 "certified": summary["rates"]["certified"], "by": summary["certified_by_rate"],
                 "seconds_per_sample": summary["seconds_per_sample"]}
    return {"method": method, "natural": metrics.get("natural"), "pgd": metrics.get("pgd"),
            "taps": metrics.get("taps"), "ibp": metrics.get("ibp"), "crown_ibp": metrics.get("crown_ibp"),
            "crown": crown, "train_seconds": results["train_seconds"], "samples": results["samples"],
            "best": results.get("best"), "wall": times.get(method, {})}


def table(rows: list[dict], crown_samples: int) -> list[str]:
    lines = [(f"| method | natural | PGD | TAPS | IBP-cert. | CROWN-IBP-cert. | CROWN-cert. (first {crown_samples}) "
             "| certified, any method | train time | best epoch |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        crown = r["crown"]
        crown_text = "-" if crown is None else pct(crown["certified"])
        if crown is not None and crown["samples"] != crown_samples:
            crown_text += f" (first {crown['samples']})"
        best = r["best"]["epoch"] + 1 if r["best"] else "-"
        union = "-" if crown is None or crown.get("any") is None else pct(crown["any"]["any"])
        if crown is not None and crown["samples"] != crown_samples and union != "-":
            union += f" (first {crown['samples']})"
        lines.append(f"| {r['method'].upper() if r['method'] != 'natural' else 'natural'} | {pct(r['natural'])} | "
                     f"{pct(r['pgd'])} | {pct(r['taps'])} | {pct(r['ibp'])} | {pct(r['crown_ibp'])} | "
                     f"{crown_text} | {union} | {r['train_seconds'] / 60:.1f} min | {best} |")
    return lines


def write_results(rows: list[dict], runs: Path, crown_samples: int, total_wall: float | None) -> Path:
    path = ROOT / "docs" / "results.md"
    discussion = ""
    if path.is_file() and MARKER in path.read_text():
        discussion = path.read_text().rsplit(MARKER, 1)[1]
    samples = rows[0]["samples"] if rows else 0
    pairs = [(r["taps"], r["pgd"], r["crown"]["certified"] if r["crown"] else r["crown_ibp"]) for r in rows
             if r["taps"] is not None and r["pgd"] is not None]
    from tapsc.analysis import correlation

    corr_pgd = correlation([p[0] for p in pairs], [p[1] for p in pairs])["pearson"]
    corr_cert = correlation([p[0] for p in pairs], [p[2] for p in pairs])["pearson"]
    lines = [
        "# Results: a Fashion-MNIST study at eps = 0.1 on a 2-core CPU",
        "",
        ("Generated by `scripts/study.sh` (`scripts/study.py`) from the run directories in "
        f"`{runs.relative_to(ROOT) if runs.is_relative_to(ROOT) else runs}`; the discussion after the "
        "table and the commands is written by hand (the script keeps it when it rewrites this file)."),
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        ("- specs: `specs/study/fashion_{natural,pgd,ibp,sabr,taps,staps}.taps`, all including "
        "`specs/study/lib/fashion_small.taps` (same CNN, data, eps ramp, optimizer, seed 0)"),
        (f"- accuracies in %, on the first {samples} Fashion-MNIST test images at eps = 0.1 (l_inf, [0, 1] "
        "pixels). natural, PGD (20 steps x 2 restarts, margin), TAPS, IBP- and CROWN-IBP-certified: "
        "`tapsc run`'s final evaluation of the checkpoint selected on 500 held-out training images. "
        f"CROWN-cert.: `tapsc certify` on the first {crown_samples} images (PGD, then its IBP, CROWN-IBP, "
        "CROWN; certified by any of the three). certified, any method: those samples proven by the "
        "cascade OR by the difference-row IBP of the IBP-cert. column (the cascade's IBP was looser "
        "when the study ran; fixed since, see below). train time: `results.json`'s `train_seconds` "
        "(training + per-epoch selection, not the final evaluation)"),
        "",
        *table(rows, crown_samples),
        "",
        ("Correlation (Pearson, over the methods above) of TAPS accuracy with PGD accuracy: "
        f"{'-' if corr_pgd is None else f'{corr_pgd:.3f}'}; with certified accuracy (CROWN where run): "
        f"{'-' if corr_cert is None else f'{corr_cert:.3f}'}."),
        "",
    ]
    lines += analysis_lines(runs, ANALYZE_SAMPLES)
    if total_wall is not None:
        lines += [f"Wall clock of this invocation of the script: {total_wall / 60:.1f} min.", ""]
    where = runs.relative_to(ROOT) if runs.is_relative_to(ROOT) else runs
    lines += ["Exact commands (from the repository root; `bash scripts/study.sh` runs them all):", "", "```"]
    for r in rows:
        lines.append(f"tapsc run specs/study/fashion_{r['method']}.taps --out {where}/{r['method']} --device cpu")
    for r in rows:
        count = min(crown_samples, CROWN_SAMPLES.get(r["method"], crown_samples))
        lines.append(f"tapsc certify {where}/{r['method']} --samples {count} "
                     "--methods ibp,crown_ibp,crown --device cpu")
    lines.append(f"tapsc analyze {' '.join(f'{where}/{m}' for m in ANALYZED)} --samples {ANALYZE_SAMPLES} "
                 f"--out {where}/analysis --methods {ANALYZE_METHODS} --device cpu")
    lines += ["```", "", MARKER]
    path.write_text("\n".join(lines) + (discussion if discussion else "\n"))
    (runs / "study.json").write_text(json.dumps(rows, indent=2) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--crown-samples", type=int, default=1000)
    parser.add_argument("--only", default=",".join(METHODS), help="comma-separated methods to train")
    parser.add_argument("--report-only", action="store_true", help="only rewrite docs/results.md")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (OMP_NUM_THREADS)")
    args = parser.parse_args()
    ENV["OMP_NUM_THREADS"] = ENV["MKL_NUM_THREADS"] = str(args.threads)
    runs = args.runs.resolve()
    runs.mkdir(parents=True, exist_ok=True)
    times_path = runs / "times.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    chosen = [m for m in args.only.split(",") if m]
    started = time.perf_counter()
    if not args.report_only:
        for method in chosen:
            train(method, runs, times)
            times_path.write_text(json.dumps(times, indent=2) + "\n")
        for method in chosen:
            certify(method, runs, args.crown_samples, times)
            times_path.write_text(json.dumps(times, indent=2) + "\n")
        if all((runs / m / "results.json").is_file() for m in ANALYZED):
            analyze(runs, ANALYZE_SAMPLES)
    rows = [row(m, runs, times) for m in METHODS if (runs / m / "results.json").is_file()]
    path = write_results(rows, runs, args.crown_samples, None if args.report_only else time.perf_counter() - started)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
