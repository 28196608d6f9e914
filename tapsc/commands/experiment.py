"""`tapsc sweep` (a grid of runs), `tapsc plot` (training curves) and `tapsc analyze`
(how precise each worst-case margin estimate is): experiments as users run them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tapsc import measures
from tapsc.cli import app, user_errors_exit
from tapsc.commands import common
from tapsc.errors import Diagnostic, TapscError
from tapsc.train.outputs import ensure_writable_file, ensure_writable_folder

console = Console(highlight=False)


def _percent(value: Any) -> str:
    return "-" if value is None or value == "" else f"{100 * float(value):.2f}%"


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------- tapsc sweep


@app.command("sweep")
@user_errors_exit
def sweep_command(
    spec: Optional[Path] = typer.Argument(None, help="The .taps spec to sweep (omit with --resume)."),
    set_: list[str] = typer.Option([], "--set", help="path=v1,v2,... : one grid axis (one value: fixed)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Sweep folder (default runs/sweep-<spec>-<time>)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the sweep in this folder."),
    device: str = common.DEVICE,
    amp: bool = common.AMP,
    tf32: bool = common.TF32,
    attack_bf16: bool = common.ATTACK_BF16,
    data_root: Optional[str] = common.DATA_ROOT,
    parallel: int = typer.Option(1, "--parallel", help="Train up to N points at once, each its own process "
                                 "(and GPU, where there are several); 1: one after another."),
) -> None:
    """Train every point of a grid of `--set` values; write sweep.csv, a table and plots."""
    from tapsc.experiments.sweep import (
        Sweep,
        check_parallel,
        default_folder,
        plot,
        run_sweep,
        taps_accuracy_correlation,
    )
    from tapsc.train.display import make_display
    from tapsc.train.run import RunOptions

    check_parallel(parallel)
    if resume is not None:
        if spec is not None or set_:
            raise TapscError(Diagnostic(code="resume-with-spec", message="`--resume` continues a sweep as it was",
                                        help="drop the spec and `--set` arguments (the sweep keeps its sweep.json)"))
        sweep = Sweep.load(resume)
    elif spec is None:
        raise TapscError(Diagnostic(code="missing-spec", message="`tapsc sweep` needs a spec file or `--resume DIR`",
                                    help="e.g. `tapsc sweep specs/quickstart.taps --set method.taps.weight=1,5`"))
    else:
        if not set_:
            raise TapscError(Diagnostic(code="nothing-to-sweep", message="`tapsc sweep` needs at least one `--set`",
                                        help="e.g. `--set perturbation.eps=0.05,0.1`"))
        folder = out or default_folder(spec)
        ensure_writable_folder(folder)
        sweep = Sweep.create(spec, set_, folder)
    options = RunOptions(device=device, amp=amp, tf32=tf32, attack_bf16=attack_bf16, data_root=data_root)

    def on_point(point, what: str, total: int) -> None:
        label = ", ".join(f"{k}={v}" for k, v in point.values.items()) or "the spec as is"
        if what in ("skip", "resume", "start"):
            verb = {"skip": "finished already, skipped", "resume": "resuming", "start": "starting"}[what]
            console.print(f"[bold]point {point.index + 1}/{total}[/bold] ({escape(label)}): {verb}")
        elif what.startswith("failed"):
            console.print(f"[red]point {point.index + 1}/{total} {escape(what)}[/red]")
        elif what == "done" and parallel > 1:  # one at a time, the point's own display shows the end
            console.print(f"point {point.index + 1}/{total} ({escape(label)}): finished")

    rows = run_sweep(sweep, options, lambda point: make_display(console), on_point, parallel=parallel)
    console.print(sweep_table(sweep, rows))
    correlation = taps_accuracy_correlation(rows)
    _print_correlation(correlation)
    paths = plot(sweep, rows)
    manifest = json.loads((sweep.folder / "sweep.json").read_text())
    manifest["correlation"] = correlation
    (sweep.folder / "sweep.json").write_text(json.dumps(manifest, indent=2) + "\n")
    console.print(f"wrote {escape(str(sweep.folder / 'sweep.csv'))}"
                  + "".join(f", {escape(str(p))}" for p in paths))
    if any(row["status"] == "failed" for row in rows):
        raise typer.Exit(code=1)


def sweep_table(sweep, rows: Sequence[dict[str, Any]]) -> Table:
    from tapsc.experiments.sweep import METRIC_COLUMNS
    from tapsc.train.display import METRIC_NAMES

    metrics = [m for m in METRIC_COLUMNS if any(r.get(m) is not None for r in rows)]
    table = Table(title=f"sweep of {escape(sweep.spec_path.name)} ({len(rows)} points)")
    table.add_column("#", justify="right")
    for axis in sweep.axes:
        table.add_column(escape(axis.path))
    table.add_column("status")
    for name in metrics:
        table.add_column(METRIC_NAMES.get(name, name), justify="right")
    table.add_column("train", justify="right")
    for row in rows:
        seconds = row.get("train_seconds")
        table.add_row(str(row["point"] + 1), *(escape(str(row[a.path])) for a in sweep.axes), row["status"],
                      *(_percent(row.get(m)) for m in metrics), "-" if seconds is None else f"{seconds:.1f}s")
    return table


def _print_correlation(correlation: dict[str, Any]) -> None:
    pgd = measures.MEASURES["pgd"].label
    for key, label in (("taps_vs_pgd", pgd), ("taps_vs_certified", correlation.get("certified_metric"))):
        value = correlation.get(key)
        if value and value.get("pearson") is not None:
            console.print(f"correlation of TAPS accuracy with {label} accuracy over {correlation['points']} points: "
                          f"Pearson {value['pearson']:.3f}, Spearman {_number(value['spearman'])}")


# ---------------------------------------------------------------- tapsc plot


def _read_history(run_dir: Path) -> list[dict[str, Any]]:
    from tapsc.train import rundir

    path = Path(run_dir) / rundir.METRICS
    if not Path(run_dir).is_dir():
        raise TapscError(Diagnostic(code="not-a-run", message=f"no run directory at {run_dir}",
                                    help="give a folder made by `tapsc run`"))
    if not path.is_file():
        raise TapscError(Diagnostic(code="no-metrics", message=f"{run_dir} has no {rundir.METRICS} yet",
                                    help="it is written at the end of every epoch; wait for the first epoch"))
    history, dropped = rundir.read_metrics(run_dir)  # a last line cut short is skipped
    if dropped is not None:
        console.print(f"[yellow]warning:[/yellow] {escape(dropped)}")
    if not history:
        raise TapscError(Diagnostic(code="no-metrics", message=f"{path} holds no epoch yet",
                                    help="wait for the first epoch to finish"))
    return history


@app.command("plot")
@user_errors_exit
def plot_command(
    run_dir: Path = typer.Argument(..., help="A run directory made by `tapsc run`."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default RUN_DIR/plots/training.png)."),
) -> None:
    """Training curves from metrics.jsonl: loss terms, eps and lr, accuracies, time per epoch."""
    from tapsc.experiments.plots import training_curves

    target = out or Path(run_dir) / "plots" / "training.png"
    history = _read_history(run_dir)
    ensure_writable_file(target, "--out" if out else None)
    path = training_curves(history, target, title=str(run_dir))
    console.print(f"{len(history)} epochs; wrote {escape(str(path))}")


# ---------------------------------------------------------------- tapsc analyze


def _estimates_by_kind() -> str:
    """The estimates grouped by kind for `--methods`' help: "ibp, crown_ibp, crown (sound), ..."."""
    groups = [(kind, measures.names(measures.ANALYSIS, kind)) for kind in measures.KINDS]
    return ", ".join(f"{', '.join(group)} ({kind})" for kind, group in groups if group)


@app.command("analyze")
@user_errors_exit
def analyze_command(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run directories made by `tapsc run`."),
    samples: int = typer.Option(200, "--samples", min=1, help="The first N test samples."),
    methods: str = typer.Option(",".join(measures.by_kind(measures.names(measures.ANALYSIS))), "--methods",
                                help=f"Estimates: {_estimates_by_kind()}."),
    which: str = typer.Option("best", "--checkpoint", help="best or last."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the outputs (default RUN_DIR/analysis)."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Batch size (default eval.batch)."),
    device: str = common.DEVICE,
    data_root: Optional[str] = common.DATA_ROOT,
    split: Optional[int] = typer.Option(None, "--split", min=0,
                                        help="ReLUs in the classifier for the TAPS estimate (default: the spec's)."),
) -> None:
    """Worst-case margin per test sample by IBP, CROWN, SABR, TAPS and PGD: histograms of each
    estimate's gap to the tightest sound bound and to the strongest attack, and how TAPS
    accuracy tracks adversarial and certified accuracy."""
    from tapsc.experiments.analysis import across_runs, analyze_run
    from tapsc.experiments.plots import margin_histograms, margin_scatter

    if which not in ("best", "last"):
        raise TapscError(Diagnostic(code="bad-option", message=f"unknown checkpoint `{which}`",
                                    help="use `best` or `last`"))
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    summaries = {}
    folders = {}
    for run_dir in run_dirs:  # every input and output checked before the first analysis
        if not (Path(run_dir) / "ir.json").is_file():
            raise TapscError(Diagnostic(code="not-a-run", message=f"{run_dir} is not a run directory (no ir.json)",
                                        help="give a folder made by `tapsc run`"))
        folder = (out / Path(run_dir).name if len(run_dirs) > 1 else out) if out else Path(run_dir) / "analysis"
        folders[run_dir] = ensure_writable_folder(folder, "--out" if out else None)
    if len(run_dirs) > 1:
        ensure_writable_folder(out or Path("."), "--out" if out else None)
    for run_dir in run_dirs:
        folder = folders[run_dir]
        with _progress(f"analyzing {escape(str(run_dir))}") as advance:
            result = analyze_run(run_dir, samples=samples, which=which, methods=chosen, batch=batch, device=device,
                                 data_root=data_root, split=split, progress=advance)
        folder.mkdir(parents=True, exist_ok=True)
        from tapsc.experiments.analysis import differences

        title = (f"{Path(run_dir).name}: {result['samples']} test samples, eps {result['eps']:g}, "
                 f"TAPS with {result['taps_split']['relus_in_classifier']} ReLU(s) in the classifier")
        margin_histograms(differences(result["records"], result["methods"]), folder / "margins.png", title)
        margin_scatter(result["records"], result["methods"], folder / "margins_scatter.png", title)
        (folder / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
        console.print(analysis_table(result))
        _print_run_correlation(result)
        console.print(f"wrote {escape(str(folder / 'analysis.json'))}, margins.png, margins_scatter.png")
        key = str(run_dir) if str(run_dir) not in summaries else f"{run_dir} (#{len(summaries) + 1})"
        summaries[key] = result["summary"]
    if len(summaries) > 1:
        across = across_runs(summaries)
        where = out or Path(".")
        where.mkdir(parents=True, exist_ok=True)
        (where / "analysis_across_runs.json").write_text(json.dumps(across, indent=2) + "\n")
        for key, label in (("taps_vs_adversarial", "adversarial"), ("taps_vs_certified", "certified")):
            value = across[key]
            console.print(f"across {len(summaries)} runs, TAPS accuracy vs {label} accuracy: "
                          f"Pearson {_number(value['pearson'])}, Spearman {_number(value['spearman'])}")
        console.print(f"wrote {escape(str(where / 'analysis_across_runs.json'))}")


@contextmanager
def _progress(description: str):
    """A progress bar on a terminal, a line per batch elsewhere; yields ``advance(done, total)``."""
    if not console.is_terminal:
        yield lambda done, total: console.print(f"{description}: {done}/{total} samples")
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def analysis_table(result: dict[str, Any]) -> Table:
    summary = result["summary"]
    table = Table(title=f"{escape(result['run'])}: worst-case margin estimates on {result['samples']} samples "
                        f"(eps {result['eps']:g})")
    for column in ("estimate", "robust", "mean gap to tightest sound", "mean gap to strongest attack"):
        table.add_column(column, justify="left" if column == "estimate" else "right")
    for name in result["methods"]:
        table.add_row(measures.MEASURES[name].label, _percent(summary["accuracy"].get(name)),
                      _number(summary["difference_to_tightest_sound"][name]["mean"]),
                      _number(summary["difference_to_strongest_attack"][name]["mean"]))
    if result.get("stored"):
        table.caption = f"also read {result['stored']} (exact verdicts / stored bounds)"
    sound = summary["soundness"]
    if not sound["ok"]:
        table.caption = (f"[red]order violations: {len(sound['bound_above_attack'])} sound bound(s) above an attack, "
                         f"{len(sound['ibp_above_taps'])} IBP above TAPS (see analysis.json)[/red]")
    return table


def _print_run_correlation(result: dict[str, Any]) -> None:
    pgd = measures.MEASURES["pgd"].label
    for other, label in (("pgd", pgd), ("tightest_sound", "certified (tightest sound bound)")):
        value = result["summary"]["taps_correlation"].get(other)
        if value:
            console.print(f"TAPS vs {label}: verdicts agree on {100 * value['verdict_agreement']:.1f}% of samples "
                          f"(phi {_number(value['verdict_phi'])}); margins Pearson "
                          f"{_number(value['margin']['pearson'])}")
