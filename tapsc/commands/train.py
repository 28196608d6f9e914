"""`tapsc run` (train a spec into a run directory, or resume one) and `tapsc eval`."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from tapsc.cli import app, user_errors_exit
from tapsc.commands import common
from tapsc.errors import Diagnostic, TapscError
from tapsc.train.outputs import ensure_writable_folder

console = Console(highlight=False)


def default_run_dir(spec_path: Path) -> Path:
    """``runs/<spec-stem>-<timestamp>``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec_path.stem) or "run"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _read_spec(path: Path, overrides: list[str], epochs: Optional[int] = None):
    if not path.is_file():
        raise TapscError(Diagnostic(code="missing-spec", message=f"no spec file at {path}",
                                    help="pass the path of a .taps file, e.g. specs/quickstart.taps"))
    from tapsc.commands.language import print_warnings
    from tapsc.language.spec import load_spec

    warnings: list[Diagnostic] = []
    spec = load_spec(path, overrides, warnings)
    if epochs is not None:
        from tapsc.language.spec import with_epochs

        rescaled = with_epochs(spec, epochs)  # the rescaled spec's own warnings are the spec's
        spec = rescaled.spec
        console.print(escape(rescaled.summary()), soft_wrap=True)
    print_warnings(warnings)
    return spec, path.read_text()


@app.command("run")
@user_errors_exit
def run_command(
    spec: Optional[Path] = typer.Argument(None, help="The .taps spec to train (omit with --resume)."),
    set_: list[str] = typer.Option([], "--set", help="Override a spec setting: path=value (repeatable)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Rescale the whole schedule (phases, eps ramp, "
                                         "lr milestones) to N epochs: a short run of a long spec."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<spec>-<time>)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override optimizer.seed."),
    device: str = common.DEVICE,
    amp: bool = common.AMP,
    tf32: bool = common.TF32,
    attack_bf16: bool = common.ATTACK_BF16,
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    data_root: Optional[str] = common.DATA_ROOT,
    nproc_per_node: Optional[int] = typer.Option(None, "--nproc-per-node",
                                                 help="Train data-parallel with N local processes (GPUs)."),
) -> None:
    """Train a spec (or resume a run), then evaluate it on the test set."""
    from tapsc.train import distributed
    from tapsc.train.display import make_display
    from tapsc.train.events import ignore
    from tapsc.train.run import RunOptions, resume_run, start_run

    options = RunOptions(device=device, amp=amp, tf32=tf32, attack_bf16=attack_bf16, seed=seed, data_root=data_root)
    if resume is not None:
        if spec is not None or set_ or epochs is not None:
            raise TapscError(Diagnostic(code="resume-with-spec", message="`--resume` continues a run as it was",
                                        help="drop the spec, `--set` and `--epochs` arguments (the run keeps its "
                                             "ir.json)"))
        from tapsc.train.rundir import read_spec

        parsed = read_spec(resume)  # a wrong folder is reported before any worker starts
        runner = lambda emit: resume_run(resume, options, emit)  # noqa: E731
        select, worker_args = parsed.eval.select, ["--resume", str(resume)]
    elif spec is None:
        raise TapscError(Diagnostic(code="missing-spec", message="`tapsc run` needs a spec file or `--resume RUN_DIR`",
                                    help="e.g. `tapsc run specs/quickstart.taps`"))
    else:
        parsed, text = _read_spec(spec, set_, epochs)
        target = out or default_run_dir(spec)
        ensure_writable_folder(target, what="the run directory")  # before any data, model or worker
        runner = lambda emit: start_run(parsed, text, target, options, emit)  # noqa: E731
        select = parsed.eval.select
        worker_args = [str(spec), "--out", str(target), *(a for s in set_ for a in ("--set", s))]
        worker_args += ["--epochs", str(epochs)] if epochs is not None else []
    if nproc_per_node is not None:
        distributed.check_nproc(nproc_per_node)
        if nproc_per_node > 1:
            from tapsc.train.run import check_batch

            distributed.check_devices(device, nproc_per_node)
            check_batch(parsed, nproc_per_node)  # once here, rather than once per worker
            worker_args += options.command_flags()
            run_dir = resume if resume is not None else target
            after = f"`tapsc run --resume {run_dir} --nproc-per-node {nproc_per_node}`"
            raise typer.Exit(code=distributed.launch(["run", *worker_args], nproc_per_node, after))
    context = distributed.init_from_env(device)
    display = make_display(console, select) if context.is_main else None
    try:
        runner(display or ignore)
    except distributed.SharedError:
        if context.is_main:
            raise
        raise typer.Exit(code=1) from None  # rank 0 prints it
    finally:
        if display is not None:
            display.close()
        distributed.shutdown()


@app.command("eval")
@user_errors_exit
def eval_command(
    run_dir: Path = typer.Argument(..., help="A run directory made by `tapsc run`."),
    samples: Optional[int] = typer.Option(None, "--samples", min=1, help="Evaluate the first N test samples."),
    device: str = common.DEVICE,
    which: str = typer.Option("best", "--which", "--checkpoint", help="Checkpoint of the run: best or last (as "
                              "`tapsc certify/export/verify --which`; `--checkpoint` is the old spelling)."),
    data_root: Optional[str] = common.DATA_ROOT,
) -> None:
    """Evaluate a run's checkpoint on the test set; writes eval-<checkpoint>.json in the run."""
    from tapsc.evaluate import evaluate_run
    from tapsc.train.display import make_display, results_table

    common.check_which(which)
    if Path(run_dir).is_dir():  # eval-<checkpoint>.json goes into the run; a missing run is reported later
        ensure_writable_folder(run_dir, flag=None, what="the run directory")
    display = make_display(console)
    try:
        results = evaluate_run(run_dir, which, samples=samples, device=device, data_root=data_root,
                               emit=display)
    finally:
        display.close()
    console.print(results_table(results, title=f"{run_dir} ({which} checkpoint)"))
    _print_complete(run_dir)


def _print_complete(run_dir: Path) -> None:
    """The complete certified accuracy `tapsc verify` wrote into certify.json, if it ran."""
    from rich.markup import escape

    from tapsc.certify.report import read_complete
    from tapsc.train.display import METRIC_NAMES

    complete = read_complete(run_dir)
    if complete:
        console.print(f"{METRIC_NAMES['complete']} (certify.json, `tapsc verify` with "
                      f"{escape(', '.join(map(str, complete['verifiers'])))}): {100 * complete['rate']:.2f}% "
                      f"({complete['certified']} of {complete['samples']} samples, {complete['unknown']} unknown)")
