"""`tapsc verify RUN_DIR`: hand what the in-house cascade left unknown to a complete
verifier, and read its answers back through the checked merge.

    certify.json (unknown samples) -> RUN_DIR/verify/<tool>/ (VNN-COMP folder)
        -> one process group per instance (tapsc.certify.instances)
        -> results/<onnx stem>_<vnnlib stem>.txt -> tapsc.certify.merge -> certify.json/.csv
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from tapsc.cli import app, user_errors_exit
from tapsc.commands import common
from tapsc.errors import Diagnostic, TapscError

console = Console(highlight=False)

DEFAULT_TIMEOUT = 60.0  # seconds per instance when the spec sets no export.timeout


@app.command("verify")
@user_errors_exit
def verify_command(
    run_dir: Optional[Path] = typer.Argument(None, help="A run directory certified by `tapsc certify`."),
    verifier: str = typer.Option("neuralsat", "--verifier", help="neuralsat, marabou, or vnncomp:DIR (a folder "
                                 "with VNN-COMP's prepare_instance.sh and run_instance.sh)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1, help="Seconds per instance (default "
                                            "export.timeout when the spec sets it, else 60)."),
    grace: float = typer.Option(10.0, "--grace", min=0, help="Seconds past --timeout before the instance's "
                                "process group is killed."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Instances run in parallel."),
    tool: Optional[str] = typer.Option(None, "--tool", help="The verifier's name in certify.json (its verdicts' "
                                       "source; default from --verifier)."),
    verifier_env: Optional[Path] = typer.Option(None, "--verifier-env", help="NeuralSAT's virtual environment "
                                                "(default ~/.cache/tapsc/neuralsat)."),
    setup: Optional[str] = typer.Option(None, "--setup", help="Install a verifier (neuralsat) and exit."),
    canaries: Optional[int] = typer.Option(None, "--canaries", min=0, help="Also hand over the first K samples "
                                           "the cascade falsified: an unsat on one is a soundness conflict "
                                           "(exit 2). Default 2 for marabou, else 0."),
    which: str = common.WHICH,
    eps: Optional[float] = typer.Option(None, "--eps", min=0, help="Work on the results `tapsc certify --eps E` "
                                        "wrote (default certify.json, else the only certify-eps<E>.json)."),
    data_root: Optional[str] = common.DATA_ROOT,
) -> None:
    """Run a complete verifier on the samples `tapsc certify` left unknown; merge its checked answers."""
    from tapsc.certify import verifiers

    common.check_which(which)
    if setup is not None:
        if setup not in verifiers.SETUPS:
            raise TapscError(Diagnostic(code="unknown-verifier", message=f"`--setup {setup}`: tapsc cannot install "
                                        "that verifier", help=f"choose from {', '.join(verifiers.SETUPS)}"))
        venv = verifiers.SETUPS[setup](verifier_env, lambda text: console.print(escape(text)))
        console.print(f"{setup} is set up in {escape(str(venv))}")
        return
    if run_dir is None:
        raise TapscError(Diagnostic(code="missing-target", message="which run?",
                                    help="tapsc verify RUN_DIR (certified with `tapsc certify RUN_DIR` first)"))
    driver = verifiers.resolve(verifier, verifier_env)
    canaries = driver.canaries if canaries is None else canaries
    if _verify(run_dir, driver, tool, timeout, grace, jobs, canaries, which, data_root, eps):
        raise typer.Exit(code=2)


def _verify(run_dir: Path, driver, tool, timeout, grace, jobs, canaries, which, data_root, eps=None) -> bool:
    """Export, run and merge; True when the merge found a soundness conflict."""
    import torch

    from tapsc.certify.instances import Job, run_instances
    from tapsc.certify.merge import (
        Benchmark,
        MergedFile,
        ResultsFile,
        check_provenance,
        check_tool_name,
        inhouse,
        load_benchmark,
        merge,
    )
    from tapsc.certify.report import pick_results, read_document, read_verdicts
    from tapsc.certify.results import runner_name
    from tapsc.commands.verify import _load_target, _test_set, write_merged

    if not run_dir.is_dir():
        raise TapscError(Diagnostic(code="missing-target", message=f"{run_dir} is not a run directory",
                                    help="pass a folder made by `tapsc run` and certified by `tapsc certify`"))
    if tool is not None:
        driver.name = tool
    check_tool_name(driver.name)
    results_path = pick_results(run_dir, eps)
    document = read_document(results_path)
    settings = document.get("settings", {})
    loaded = _load_target(run_dir, None, which, torch.device("cpu"))
    eps = float(settings.get("eps", loaded.spec.perturbation.eps))
    provenance = loaded.provenance(eps)
    folder = run_dir / "verify" / driver.name
    check_provenance(settings, Benchmark(folder, {"provenance": provenance}, {}))  # before anything runs
    verdicts = read_verdicts(results_path)
    own = {v.index: v for v in map(inhouse, verdicts)}
    unknown = [i for i, v in own.items() if v.verdict == "unknown"]
    checks = [i for i, v in own.items() if v.verdict == "falsified"][:canaries]
    spec = loaded.spec
    seconds = timeout or (spec.export.timeout if "timeout" in spec.export.model_fields_set else DEFAULT_TIMEOUT)
    if not unknown:
        console.print("the in-house cascade left no sample unknown: nothing to verify")
        return False
    test_set = _test_set(spec, data_root)
    samples = _samples(loaded.network, test_set, sorted(unknown + checks), own)
    if not _reusable(folder, provenance, {s.index for s in samples}, driver.pool_as_conv):
        _export(folder, loaded, samples, eps, seconds, spec, test_set, driver.pool_as_conv)
    bench = load_benchmark(folder)
    jobs_list = [Job(runner_name(i.onnx, i.vnnlib), (folder / i.onnx).resolve(), (folder / i.vnnlib).resolve())
                 for i in bench.instances.values()]
    also = f" and {len(checks)} falsified one(s) as canaries" if checks else ""
    console.print(f"verifying {len(unknown)} unknown sample(s){also} of {escape(str(run_dir))} with "
                  f"{escape(driver.name)} {escape(driver.version)}: {seconds:g} s each, {jobs} at a time")
    started = time.perf_counter()
    outcomes = _run_with_progress(run_instances, driver, jobs_list, folder, seconds, grace, jobs)
    wall = time.perf_counter() - started
    results = folder / "results"
    check_provenance(settings, bench)
    previous = [MergedFile.from_row(row) for row in document.get("merges", [])
                if not (row["tool"] == driver.name and Path(row["path"]).resolve() == results.resolve())]
    report = merge(verdicts, bench, [ResultsFile(results, driver.name)], previous)
    record = {**driver.record(), "timeout": seconds, "grace": grace, "jobs": jobs, "canaries": checks,
              "benchmark": str(folder),
              "instances": len(outcomes), "ran": sum(not o.skipped for o in outcomes),
              "skipped_decided": sum(o.skipped for o in outcomes), "wall_seconds": round(wall, 3),
              "words": dict(sorted(Counter(o.word for o in outcomes).items()))}
    runs = [v for v in document.get("verifiers", []) if v.get("tool") != driver.name] + [record]
    conflict = write_merged(run_dir, document, report, runs, stem=results_path.stem)
    complete = read_document(results_path)["complete"]
    console.print(f"complete certified accuracy: {100 * complete['rate']:.2f}% ({complete['certified']} of "
                  f"{complete['samples']} samples; {complete['unknown']} still unknown) in {wall:.1f} s")
    return conflict


def _samples(network, test_set, indices, verdicts) -> list:
    """The export's samples (correctly classified ones; the cascade's verdict recorded)."""
    import torch

    from tapsc.export.benchmark import Sample, correctly_classified

    batch = [Sample(i, torch.as_tensor(test_set[i][0]).float(), int(test_set[i][1]), verdicts[i].verdict)
             for i in indices]
    return correctly_classified(network, batch)[0]


def _reusable(folder: Path, provenance: dict, indices: set[int], pool_as_conv: bool) -> bool:
    """The verifier's folder already holds the export of these samples from this network."""
    import json

    from tapsc.export.benchmark import file_sha256

    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        onnx = folder / manifest["onnx"]
        return (manifest.get("provenance") == {**provenance, "norm": "linf"}
                and {m["index"] for m in manifest["instances"]} == indices
                and bool(manifest.get("avgpool_as_conv")) == pool_as_conv
                and onnx.is_file() and file_sha256(onnx) == manifest.get("onnx_sha256"))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _export(folder: Path, loaded, samples, eps: float, seconds: float, spec, test_set, pool_as_conv: bool) -> None:
    """A fresh VNN-COMP folder (old results of another export are removed with it)."""
    import torch

    from tapsc.commands.verify import _print_export
    from tapsc.export.benchmark import write_benchmark

    if folder.exists():
        shutil.rmtree(folder)
    parity = torch.stack([test_set[i][0] for i in range(min(len(test_set), 100))]).float()
    report = write_benchmark(folder, loaded.network, samples, eps, seconds, spec.export.opset, parity_inputs=parity,
                             provenance=loaded.provenance(eps), pool_as_conv=pool_as_conv)
    _print_export(report)


def _thread_env(jobs: int) -> dict:
    """The environment for each instance: the CPU cores shared among the parallel jobs."""
    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(name, threads)
    return env


def _run_with_progress(run_instances, driver, jobs_list, folder, seconds, grace, jobs):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    counts: Counter = Counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[words]}"))
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(escape(f"verify ({driver.name})"), total=len(jobs_list), words="")

        def done(outcome):
            counts[outcome.word + (" (kept)" if outcome.skipped else "")] += 1
            progress.update(task, advance=1, words=escape(", ".join(f"{k} {v}" for k, v in sorted(counts.items()))))

        return run_instances(driver, jobs_list, folder, seconds, grace, jobs, _thread_env(jobs), done)
