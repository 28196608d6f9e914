"""The Fashion-MNIST study (docs/results.md): every method of specs/study/ trained with several
seeds, evaluated on the full test set, certified and completely verified on a fixed subset, and
summarised as mean and standard deviation per method with a test of which differences are
larger than their noise.

    .venv/bin/python scripts/study.py [--runs runs/study] [--seeds 0,1,2] [--jobs 2]
                                      [--verify-samples 200] [--only taps,ibp] [--report-only]

Each (method, seed) is one ordinary `tapsc run` into runs/study/<method>/seed<k>, with
`--set optimizer.seed=k`; a finished run (it has results.json) is skipped and a started one is
resumed, so the script can be re-run after a kill. For the certifiably trained methods, `tapsc
certify` then runs its cascade (PGD, IBP, CROWN-IBP) on the first --verify-samples test
images and `tapsc verify` hands the samples it left unknown to NeuralSAT (`tapsc verify --setup
neuralsat` installs it). docs/results.md is rewritten from the run directories; text below the
line `<!-- discussion -->` in the existing file is kept.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("natural", "pgd", "ibp", "crown_ibp", "sabr", "mtl_ibp", "taps", "staps")
LABELS = {"natural": "natural", "pgd": "PGD", "ibp": "IBP", "crown_ibp": "CROWN-IBP", "sabr": "SABR",
          "mtl_ibp": "MTL-IBP", "taps": "TAPS", "staps": "STAPS"}
# Certified and completely verified on the subset: the networks trained for it. CROWN and a
# complete verifier on the natural and PGD networks (almost every neuron unstable) would take
# hours on this CPU for a number the in-house columns already show to be near zero.
CERTIFIED = ("ibp", "crown_ibp", "sabr", "mtl_ibp", "taps", "staps")
MARKER = "<!-- discussion -->"
TAPSC = [sys.executable, "-m", "tapsc"]
# One torch thread per process: on a 2-core machine, two intra-op threads per process were
# measured 6-9x SLOWER than one when the cores are busy elsewhere. `--threads` changes it.
ENV = dict(os.environ)
VERIFY_TIMEOUT = 30.0  # seconds per NeuralSAT instance
ANALYZE_SAMPLES = 200
ANALYZE_METHODS = "ibp,crown_ibp,sabr,taps,pgd"
_print_lock = threading.Lock()


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


def run(command: list[str], log: Path) -> float:
    """Run ``command`` in the repository root, appending its output to ``log``; returns seconds."""
    printable = " ".join(shlex.quote(part) for part in ["tapsc", *command[len(TAPSC):]])
    say(f"$ {printable}")
    started = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"$ {printable}\n")
        handle.flush()
        subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, check=True, env=ENV)
    return time.perf_counter() - started


def run_dir(runs: Path, method: str, seed: int) -> Path:
    return runs / method / f"seed{seed}"


def spec_path(method: str) -> Path:
    return ROOT / "specs" / "study" / f"fashion_{method}.taps"


def train_command(runs: Path, method: str, seed: int) -> list[str]:
    out = run_dir(runs, method, seed)
    if out.exists():
        return [*TAPSC, "run", "--resume", str(out), "--device", "cpu"]
    return [*TAPSC, "run", str(spec_path(method).relative_to(ROOT)), "--out", str(out), "--device", "cpu",
            "--set", f"optimizer.seed={seed}"]


# The cascade without CROWN: on this CPU, CROWN (float64, batch-independent) on the samples PGD
# falsifies or the network misclassifies, which certify re-checks with every method, took most of
# 15 minutes per network; CROWN certified no sample that CROWN-IBP had not (TAPS, STAPS, seed 0),
# and NeuralSAT, after the cascade, decides more than CROWN could.
CERTIFY_METHODS = "ibp,crown_ibp"


def certify_command(runs: Path, method: str, seed: int, samples: int) -> list[str]:
    return [*TAPSC, "certify", str(run_dir(runs, method, seed)), "--samples", str(samples),
            "--methods", CERTIFY_METHODS, "--device", "cpu"]


def verify_command(runs: Path, method: str, seed: int) -> list[str]:
    return [*TAPSC, "verify", str(run_dir(runs, method, seed)), "--timeout", f"{VERIFY_TIMEOUT:g}"]


def one(runs: Path, method: str, seed: int, samples: int, verify: bool = True) -> None:
    """Train, certify and verify one (method, seed); the log line says each stage's wall time."""
    out, log, times = run_dir(runs, method, seed), runs / "logs" / f"{method}-seed{seed}.log", {}
    if not (out / "results.json").is_file():
        times["train"] = run(train_command(runs, method, seed), log)
    if method in CERTIFIED:
        certify_file = out / "certify.json"
        document = json.loads(certify_file.read_text()) if certify_file.is_file() else None
        if document is None or document["settings"]["samples"] != samples:
            times["certify"] = run(certify_command(runs, method, seed, samples), log)
            document = json.loads(certify_file.read_text())
        if verify and "complete" not in document:
            times["verify"] = run(verify_command(runs, method, seed), log)
    spent = ", ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in times.items())
    say(f"done: {method} seed {seed}" + (f" ({spent})" if spent else ""))


def analyze(runs: Path, seed: int) -> None:
    """`tapsc analyze` of each certifiably trained network of one seed: margin estimates and their gaps."""
    figures = ROOT / "docs" / "results"
    figures.mkdir(parents=True, exist_ok=True)
    for method in CERTIFIED:
        out = runs / "analysis" / method
        if not (out / "analysis.json").is_file():
            # CROWN itself is left out: on misclassified/falsified samples it is slow on this CPU, and
            # the cascade's bound for every sample (CROWN where it got that far) comes in through
            # certify.json
            run([*TAPSC, "analyze", str(run_dir(runs, method, seed)), "--samples", str(ANALYZE_SAMPLES),
                 "--out", str(out), "--methods", ANALYZE_METHODS, "--device", "cpu"], runs / "logs" / "analysis.log")
        if (out / "margins.png").is_file():
            (figures / f"margins_{method}.png").write_bytes((out / "margins.png").read_bytes())


# ---------------------------------------------------------------------------- the report

MEASURES = (  # (key, column title); all in % of the samples named in the header
    ("natural", "natural"), ("pgd", "PGD"), ("ibp", "IBP-cert."), ("taps", "TAPS est."),
    ("crown_ibp", "IBP or CROWN-IBP (subset)"), ("complete", "complete (subset)"))
FULL_SET = ("natural", "pgd", "ibp", "taps")


def measures(out: Path) -> dict:
    """The numbers of one run directory, in [0, 1] (None where not measured)."""
    results = json.loads((out / "results.json").read_text())
    row = {key: results["metrics"].get(key) for key in FULL_SET}
    row.update(samples=results["samples"], train_seconds=results["train_seconds"],
               best=results.get("best", {}).get("epoch") if results.get("best") else None,
               crown_ibp=None, cascade=None, complete=None, subset=None, unknown=None)
    certify_file = out / "certify.json"
    if certify_file.is_file():
        document = json.loads(certify_file.read_text())
        summary = document["summary"]
        by = summary["certified_by_rate"]
        row.update(cascade=summary["rates"]["certified"], subset=summary["counts"]["samples"],
                   crown_ibp=by.get("ibp", 0.0) + by.get("crown_ibp", 0.0),
                   seconds_per_sample=summary["seconds_per_sample"])
        complete = document.get("complete")
        if complete:
            row.update(complete=complete["rate"], unknown=complete["unknown"])
    return row


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances) for equal means; None without scipy
    or with fewer than two values on a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    try:
        from scipy import stats
    except ImportError:
        return None
    if max(a) == min(a) and max(b) == min(b):
        return 0.0 if a[0] != b[0] else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def cell(values: list[float | None]) -> str:
    present = [100 * v for v in values if v is not None]
    if not present:
        return "-"
    mean, std = mean_std(present)
    text = f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
    return text if len(present) == len(values) else f"{text} (n={len(present)})"


def collect(runs: Path, seeds: list[int]) -> dict[str, list[dict]]:
    found = {}
    for method in METHODS:
        rows = [measures(run_dir(runs, method, s)) for s in seeds
                if (run_dir(runs, method, s) / "results.json").is_file()]
        if rows:
            found[method] = rows
    return found


def table(found: dict[str, list[dict]]) -> list[str]:
    head = "| method | seeds | " + " | ".join(title for _, title in MEASURES) + " | train time | best epoch |"
    lines = [head, "|---|---|" + "---|" * (len(MEASURES) + 2)]
    for method, rows in found.items():
        cells = [cell([r[key] for r in rows]) for key, _ in MEASURES]
        minutes = mean_std([r["train_seconds"] / 60 for r in rows])
        best = ", ".join(str(r["best"] + 1) if r["best"] is not None else "-" for r in rows)
        lines.append(f"| {LABELS[method]} | {len(rows)} | " + " | ".join(cells)
                     + f" | {minutes[0]:.1f} min | {best} |")
    return lines


def comparisons(found: dict[str, list[dict]], alpha: float = 0.05) -> list[str]:
    """Pairs of certifiably trained methods whose mean differs by more than its noise (Welch p < alpha)."""
    lines = []
    methods = [m for m in CERTIFIED if m in found and len(found[m]) >= 2]
    for key, title in MEASURES:
        if key == "taps":
            continue
        significant, close = [], 0
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                va = [r[key] for r in found[a] if r[key] is not None]
                vb = [r[key] for r in found[b] if r[key] is not None]
                p = welch_p([100 * v for v in va], [100 * v for v in vb])
                if p is None:
                    continue
                diff = 100 * (sum(va) / len(va) - sum(vb) / len(vb))
                if p < alpha:
                    hi, lo = (a, b) if diff > 0 else (b, a)
                    significant.append(f"{LABELS[hi]} > {LABELS[lo]} by {abs(diff):.2f} (p = {p:.3f})")
                else:
                    close += 1
        if significant or close:
            lines.append(f"- **{title}**: " + ("; ".join(significant) if significant else "no pair")
                         + f". {close} other pair(s) within noise.")
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


def analysis_lines(runs: Path, seed: int) -> list[str]:
    out = runs / "analysis"
    names = {"ibp": "IBP", "crown_ibp": "CROWN-IBP", "sabr": "SABR", "taps": "TAPS", "pgd": "PGD"}
    lines = [f"### How close is each estimate to the worst case? (`tapsc analyze`, seed {seed}, first "
             f"{ANALYZE_SAMPLES} test images)", "",
             ("Per sample, each method estimates the worst-case margin m* = min over the eps-box of "
              "min_j (o_y - o_j). IBP and CROWN-IBP are sound lower bounds, and so is the margin bound "
              "`tapsc certify` stored per sample (CROWN where the cascade got that far); PGD and the "
              "cascade's attack give upper bounds; m* lies between the tightest bound and the strongest "
              "attack. Mean difference of each estimate to the tightest sound bound / to the PGD margin "
              "(logit units; 0 = as tight as it):"), "",
             "| network | " + " | ".join(names.values()) + " |", "|---|" + "---|" * len(names)]
    per_network = []
    for method in CERTIFIED:
        if (out / method / "analysis.json").is_file():
            per_network.append((method, json.loads((out / method / "analysis.json").read_text())["summary"]))
    if not per_network:
        return []
    for method, summary in per_network:
        cells = []
        for name in names:
            sound = summary["difference_to_tightest_sound"].get(name, {}).get("mean")
            attack = summary["difference_to_strongest_attack"].get(name, {}).get("mean")
            cells.append("-" if sound is None else f"{sound:+.2f} / {attack:+.2f}")
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    lines += ["", ("Per-sample agreement of the TAPS verdict (all estimates < 0) with PGD's and with the "
                   "tightest sound bound's:"), "", "| network | TAPS vs PGD | TAPS vs certified | soundness order |",
              "|---|---|---|---|"]
    for method, summary in per_network:
        corr = summary["taps_correlation"]
        ok = "holds" if summary["soundness"]["ok"] else "VIOLATED"
        lines.append(f"| {LABELS[method]} | {100 * corr['pgd']['verdict_agreement']:.1f}% | "
                     f"{100 * corr['tightest_sound']['verdict_agreement']:.1f}% | {ok} |")
    figures = [m for m, _ in per_network if (ROOT / "docs" / "results" / f"margins_{m}.png").is_file()]
    if figures:
        lines += ["", "Histograms (the paper's Fig. 6 at this scale): "
                  + ", ".join(f"[{LABELS[m]}](results/margins_{m}.png)" for m in figures) + "."]
    return [*lines, ""]


def write_results(found: dict[str, list[dict]], runs: Path, seeds: list[int], samples: int,
                  wall: float | None) -> Path:
    path = ROOT / "docs" / "results.md"
    discussion = ""
    if path.is_file() and MARKER in path.read_text():
        discussion = path.read_text().rsplit(MARKER, 1)[1]
    test_samples = next(iter(found.values()))[0]["samples"] if found else 0
    where = runs.relative_to(ROOT) if runs.is_relative_to(ROOT) else runs
    train_cpu = sum(r["train_seconds"] for rows in found.values() for r in rows)
    lines = [
        "# Results: a multi-seed Fashion-MNIST study at eps = 0.1 on a 2-core CPU",
        "",
        ("Generated by `scripts/study.sh` (`scripts/study.py`) from the run directories in "
         f"`{where}`; the discussion after the commands is written by hand (the script keeps it when it "
         "rewrites this file)."),
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        (f"- specs: `specs/study/fashion_{{{','.join(METHODS)}}}.taps`, all including "
         "`specs/study/lib/fashion_small.taps` (same CNN, data, eps ramp, optimizer and evaluation); "
         f"seeds {', '.join(map(str, seeds))} (`--set optimizer.seed=K`: initialisation, batch order, "
         "attack starts; the data, validation split and test set are the same for every run)"),
        (f"- cells: mean ± sample standard deviation over the seeds, in %. natural, PGD (20 steps x 2 "
         "restarts, margin loss), IBP-certified (float64 bounds with rounding error, the same as "
         "`tapsc certify`'s) and the TAPS estimate: `tapsc run`'s final evaluation on all "
         f"{test_samples} Fashion-MNIST test images, of the checkpoint selected on 500 held-out training "
         f"images. Subset columns, on the first {samples} test images: `tapsc certify`'s cascade (PGD, "
         "then IBP, then CROWN-IBP; the seed-0 networks of TAPS and STAPS also ran CROWN, which certified "
         "none more), and complete: "
         f"the same images after `tapsc verify` handed the cascade's unknown samples to NeuralSAT, for the "
         f"networks of the seeds that --verify-seeds names (n = their number in the cell) "
         f"({VERIFY_TIMEOUT:g} s per instance; its answers checked before they count). train time: "
         "`results.json`'s `train_seconds` (training and the per-epoch selection pass, not the final "
         "evaluation)"),
        "",
        *table(found),
        "",
        ("Which differences are larger than their noise (Welch's t-test over the seeds, p < 0.05, "
         "between the certifiably trained methods; with 3 seeds only large, consistent gaps pass):"),
        "",
        *comparisons(found),
        "",
    ]
    unknown = {m: [r["unknown"] for r in rows if r["unknown"] is not None] for m, rows in found.items()}
    left = {m: u for m, u in unknown.items() if u and any(u)}
    if left:
        lines += ["Samples NeuralSAT left unknown (timeout) per seed: "
                  + "; ".join(f"{LABELS[m]} {', '.join(map(str, u))}" for m, u in left.items()) + ".", ""]
    lines += analysis_lines(runs, seeds[0])
    lines += [f"Training CPU time, all runs: {train_cpu / 3600:.2f} h (sum of train time)."]
    if wall is not None:
        lines += [f"Wall clock of this invocation of the script: {wall / 60:.1f} min.", ""]
    lines += ["", "Exact commands (from the repository root; `bash scripts/study.sh` runs them all, two at a "
              "time):", "", "```"]
    for method in found:
        lines.append(f"tapsc run specs/study/fashion_{method}.taps --out {where}/{method}/seedK --device cpu "
                     "--set optimizer.seed=K")
    for method in CERTIFIED:
        if method in found:
            lines.append(f"tapsc certify {where}/{method}/seedK --samples {samples} --methods {CERTIFY_METHODS} "
                         "--device cpu")
            lines.append(f"tapsc verify {where}/{method}/seed0 --timeout {VERIFY_TIMEOUT:g}")
    lines.append(f"tapsc analyze {where}/METHOD/seed{seeds[0]} --samples {ANALYZE_SAMPLES} --out "
                 f"{where}/analysis/METHOD --methods {ANALYZE_METHODS} --device cpu  # each certified method")
    lines += ["```", "", MARKER]
    path.write_text("\n".join(lines) + (discussion if discussion else "\n"))
    (runs / "study.json").write_text(json.dumps(found, indent=2) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--jobs", type=int, default=2, help="(method, seed) pairs run at once")
    parser.add_argument("--verify-samples", type=int, default=200,
                        help="test images certified and completely verified (the first N)")
    parser.add_argument("--verify-seeds", default="0",
                        help="comma-separated seeds whose networks NeuralSAT verifies (each network costs "
                             "minutes: most of the cascade's unknown samples run into the timeout)")
    parser.add_argument("--only", default=",".join(METHODS), help="comma-separated methods to train")
    parser.add_argument("--report-only", action="store_true", help="only rewrite docs/results.md")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (OMP_NUM_THREADS)")
    args = parser.parse_args()
    ENV["OMP_NUM_THREADS"] = ENV["MKL_NUM_THREADS"] = str(args.threads)
    runs = args.runs.resolve()
    runs.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    chosen = [m for m in args.only.split(",") if m]
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(METHODS)}")
    started = time.perf_counter()
    if not args.report_only:
        # the slowest first, so the two workers finish together; seeds interleaved
        order = sorted(((m, s) for s in seeds for m in chosen), key=lambda p: (p[1], -METHODS.index(p[0])))
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            verify_seeds = {int(s) for s in args.verify_seeds.split(",") if s}
            futures = {pool.submit(one, runs, m, s, args.verify_samples, s in verify_seeds): (m, s) for m, s in order}
            failed = []
            for future in concurrent.futures.as_completed(futures):
                try:
                    future.result()
                except subprocess.CalledProcessError as error:
                    m, s = futures[future]
                    failed.append(f"{m} seed {s}")
                    say(f"FAILED: {m} seed {s} ({error}); see {runs / 'logs'}")
        if failed:
            sys.exit(f"failed: {', '.join(failed)}")
        if all((run_dir(runs, m, seeds[0]) / "results.json").is_file() for m in CERTIFIED):
            analyze(runs, seeds[0])
    path = write_results(collect(runs, seeds), runs, seeds, args.verify_samples,
                         None if args.report_only else time.perf_counter() - started)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
