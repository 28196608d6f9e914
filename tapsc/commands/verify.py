"""`tapsc certify` (in-house cascade, or merging a verifier's results) and `tapsc export`
(ONNX + VNN-LIB in the VNN-COMP layout)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from tapsc.cli import app, user_errors_exit
from tapsc.commands import common
from tapsc.errors import Diagnostic, TapscError

console = Console(highlight=False)


@dataclass
class Target:
    """What a command works on: the spec, the trained network and where results go."""

    spec: object
    network: object
    out_dir: Path
    source: str
    checkpoint: Path

    def provenance(self, eps: float) -> dict:
        """What certify.json and an export's manifest.json record, and a merge compares."""
        import hashlib

        from tapsc.export.benchmark import file_sha256

        spec = self.spec
        return {"eps": eps, "norm": spec.perturbation.norm, "dataset": spec.data.dataset, "split": "test",
                "test_subset": spec.data.test_subset, "checkpoint_sha256": file_sha256(self.checkpoint),
                "spec_sha256": hashlib.sha256(spec.model_dump_json().encode()).hexdigest()}


def _load_target(target: Path, checkpoint: Optional[Path], which: str, device) -> Target:
    from tapsc.train import rundir

    if target.is_dir():
        if checkpoint is not None:
            raise TapscError(Diagnostic(code="checkpoint-with-run", message="`--checkpoint` goes with a spec file",
                                        help=f"use `--which best|last` to pick a checkpoint of {target}"))
        spec, network = rundir.load_run(target, which, device=device)
        return Target(spec, network, target, f"{target} ({which} checkpoint)", rundir.resolve_checkpoint(target, which))
    if not target.is_file():
        raise TapscError(Diagnostic(code="missing-target", message=f"{target} is neither a run directory nor a spec",
                                    help="pass a folder made by `tapsc run`, or a .taps file with `--checkpoint`"))
    if checkpoint is None:
        raise TapscError(Diagnostic(code="missing-checkpoint", message=f"{target} is a spec: which weights?",
                                    help="add `--checkpoint FILE` (a checkpoint written by `tapsc run`)"))
    from tapsc.compile import compile_network
    from tapsc.language.spec import load_spec

    spec = load_spec(target)
    network = compile_network(spec)
    try:
        network.load_state_dict(rundir.read_checkpoint(checkpoint)["model"])
    except RuntimeError as error:
        raise TapscError(Diagnostic(code="checkpoint-mismatch", message=f"{checkpoint} does not fit the model of "
                                    f"{target}: {str(error).splitlines()[0]}",
                                    help="use the spec the checkpoint was trained from")) from None
    return Target(spec, network.to(device).eval(), checkpoint.parent, f"{target} + {checkpoint}", checkpoint)


def _check_target(target: Path, checkpoint: Optional[Path]) -> None:
    """The cheap part of ``_load_target``: the run, or the spec and checkpoint files, exist."""
    from tapsc.train import rundir

    if target.is_dir():
        rundir.read_spec(target)
        return
    if not target.is_file():
        raise TapscError(Diagnostic(code="missing-target", message=f"{target} is neither a run directory nor a spec",
                                    help="pass a folder made by `tapsc run`, or a .taps file with `--checkpoint`"))
    if checkpoint is None or not checkpoint.is_file():
        raise TapscError(Diagnostic(code="missing-checkpoint", message=f"{target} is a spec: which weights?"
                                    if checkpoint is None else f"no checkpoint at {checkpoint}",
                                    help="add `--checkpoint FILE` (a checkpoint written by `tapsc run`)"))


def _test_set(spec, data_root: Optional[str]):
    from tapsc.data import load_dataset

    data = spec.data if data_root is None else spec.data.model_copy(update={"root": data_root})
    return load_dataset(data, train=False, shape=tuple(spec.model.input_shape))


def _parse_span(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    start, sep, stop = text.partition(":")
    if not sep or not start.strip().isdigit() or not stop.strip().isdigit() or int(start) >= int(stop):
        raise TapscError(Diagnostic(code="bad-range", message=f"`--range {text}` is not START:STOP",
                                    help="e.g. `--range 100:200` (STOP excluded)"))
    return int(start), int(stop)


def _parse_methods(text: str) -> list[str]:
    from tapsc.certify.linear import METHODS

    methods = [m.strip().replace("-", "_") for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise TapscError(Diagnostic(code="unknown-method", message=f"unknown certification method(s) {bad}",
                                    help=f"choose from {', '.join(METHODS)} (comma separated, cheapest first)"))
    return methods


# ---------------------------------------------------------------- tapsc certify


@app.command("certify")
@user_errors_exit
def certify_command(
    target: Path = typer.Argument(..., help="A run directory, or a .taps spec with --checkpoint."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Weights for a spec file."),
    which: str = common.WHICH,
    samples: Optional[int] = typer.Option(None, "--samples", min=1, help="The first N samples (of the range)."),
    span: Optional[str] = typer.Option(None, "--range", help="Samples START:STOP of the test set."),
    random: Optional[int] = typer.Option(None, "--random", min=1, help="A seeded random subset of N samples."),
    seed: int = typer.Option(0, "--seed", help="Seeds the random subset and the attack."),
    methods: str = typer.Option("ibp,crown_ibp,crown", "--methods", help="Bound methods, cheapest first."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Batch size (default eval.batch)."),
    device: str = common.DEVICE,
    eps: Optional[str] = typer.Option(None, "--eps", help="Radius, or several comma separated (default "
                                      "perturbation.eps); certify.json holds the spec's eps, "
                                      "certify-eps<E>.json any other."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for certify.json/.csv (default: the run)."),
    merge: Optional[list[Path]] = typer.Option(None, "--merge", help="Verifier results (a CSV, or a folder of "
                                               "result files); repeat for several."),
    tool: Optional[list[str]] = typer.Option(None, "--tool", help="The verifier of each --merge, in order "
                                             "(default `verifier`)."),
    benchmark: Optional[Path] = typer.Option(None, "--benchmark", help="The exported folder (default OUT/vnncomp)."),
    data_root: Optional[str] = common.DATA_ROOT,
    nproc_per_node: Optional[int] = typer.Option(None, "--nproc-per-node",
                                                 help="Shard the samples over N local processes (GPUs)."),
) -> None:
    """Certify test samples in-house (attack, IBP, CROWN-IBP, CROWN), or merge a verifier's results."""
    common.check_which(which)
    radii = _parse_eps(eps)
    if merge:
        base = out or (target if target.is_dir() else checkpoint.parent if checkpoint else Path("."))
        if radii is not None and len(radii) > 1:
            raise TapscError(Diagnostic(code="bad-eps", message="`--merge` merges into the results of one eps",
                                        help="give one `--eps E` with `--merge`"))
        return _merge(base, merge, tool or [], benchmark, radii[0] if radii else None)
    if tool:
        raise TapscError(Diagnostic(code="tool-without-merge", message="`--tool` names the verifier of a `--merge`",
                                    help="add `--merge RESULTS` for each `--tool`"))
    from tapsc.train import distributed
    from tapsc.train.outputs import ensure_writable_folder

    chosen = _parse_methods(methods)
    default_out = target if target.is_dir() else checkpoint.parent if checkpoint else None
    if out is not None or default_out is not None:  # before the model and the data are loaded
        ensure_writable_folder(out or default_out, "--out" if out else None)
    if nproc_per_node is not None:
        distributed.check_nproc(nproc_per_node)
        if nproc_per_node > 1:
            distributed.check_devices(device, nproc_per_node)
            _check_target(target, checkpoint)  # report a wrong path once, before any worker starts
            flags = {"--checkpoint": checkpoint, "--which": which, "--samples": samples, "--range": span,
                     "--random": random, "--seed": seed, "--methods": methods, "--batch": batch, "--device": device,
                     "--eps": eps, "--out": out, "--data-root": data_root}
            argv = ["certify", str(target), *(str(a) for k, v in flags.items() if v is not None for a in (k, v))]
            raise typer.Exit(code=distributed.launch(argv, nproc_per_node))
    context = distributed.init_from_env(device)
    try:
        _certify(target, checkpoint, which, samples, span, random, seed, chosen, batch, device, radii, out,
                 data_root, context)
    finally:
        distributed.shutdown()


def _parse_eps(text: Optional[str]) -> Optional[list[float]]:
    """``--eps 0.05,0.1``: the radii, in order, each once."""
    if text is None:
        return None
    radii: list[float] = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            value = -1.0
        if not part.strip() or value < 0 or value != value or value == float("inf"):
            raise TapscError(Diagnostic(code="bad-eps", message=f"`--eps {text}`: `{part.strip()}` is not a radius",
                                        help="a number >= 0, or several comma separated: `--eps 0.05,0.1`"))
        if value not in radii:
            radii.append(value)
    return radii


def _certify(target, checkpoint, which, samples, span, random, seed, chosen, batch, device, radii, out, data_root,
             context) -> None:
    """The cascade over the chosen samples at each radius; with several processes each runs every
    world_size-th batch and rank 0 merges the verdicts and writes the report."""
    from tapsc.certify.cascade import select_indices
    from tapsc.train.runtime import resolve_device

    where = resolve_device(device)
    loaded = _load_target(target, checkpoint, which, where)
    spec = loaded.spec
    test_set = _test_set(spec, data_root)
    indices = select_indices(len(test_set), samples or (spec.eval.samples if not (span or random) else None),
                             _parse_span(span), random, seed)
    for radius in radii or [spec.perturbation.eps]:
        _certify_at(loaded, radius, test_set, indices, chosen, batch, seed, where, out, context)


def _certify_at(loaded, radius, test_set, indices, chosen, batch, seed, where, out, context) -> None:
    """One radius: certify, and (rank 0) write certify.json or certify-eps<E>.json."""
    from tapsc.certify.cascade import Cascade, certify_dataset, merge_shards
    from tapsc.certify.report import results_stem, summarize, summary_table, write_results
    from tapsc.train import distributed

    spec = loaded.spec
    cascade = Cascade(loaded.network, radius, spec.eval.attack, chosen)
    size = batch or spec.eval.batch
    shard = (context.rank, context.world_size)
    show = console if context.is_main else Console(quiet=True)
    processes = f" on {context.world_size} processes" if context.active else ""
    show.print(f"certifying {len(indices)} samples of {escape(loaded.source)} at eps {radius:g} "
               f"({', '.join(chosen)}){processes}")
    mine = sum(len(indices[k:k + size]) for k in range(context.rank * size, len(indices), context.world_size * size))
    with _progress(mine, show) as advance:
        verdicts = certify_dataset(cascade, test_set, indices, size, where, advance, seed=seed, shard=shard)
    shards = distributed.gather_objects(verdicts, context)
    if not context.is_main:
        return
    verdicts = merge_shards(shards, indices)
    summary = summarize(verdicts, chosen)
    settings = {"source": loaded.source, "eps": radius, "methods": chosen, "seed": seed, "device": str(where),
                "attack": spec.eval.attack.model_dump(mode="json"), "samples": len(indices),
                "provenance": loaded.provenance(radius)}
    if context.active:
        settings["processes"] = context.world_size
    json_path, csv_path = write_results(out or loaded.out_dir, verdicts, summary, settings,
                                        stem=results_stem(radius, spec.perturbation.eps))
    console.print(summary_table(summary, title=f"certification at eps {radius:g}"))
    console.print(f"wrote {escape(str(json_path))} and {escape(str(csv_path))}")


def _progress(total: int, where: Console = console):
    from contextlib import contextmanager

    from rich.progress import Progress

    @contextmanager
    def bar():
        with Progress(console=where, transient=True) as progress:
            task = progress.add_task("certify", total=total)
            yield lambda n: progress.advance(task, n)

    return bar()


def _merge(base: Path, results: list[Path], tools: list[str], benchmark: Optional[Path],
           eps: Optional[float] = None) -> None:
    """Check verifier results and merge them into the certify.json in ``base`` (accumulating;
    with ``eps``, into the results of that radius); exit 2 on a soundness conflict."""
    from tapsc.certify.merge import MergedFile, ResultsFile, check_provenance, load_benchmark, merge
    from tapsc.certify.report import pick_results, read_document, read_verdicts

    if tools and len(tools) != len(results):
        raise TapscError(Diagnostic(code="tool-count", message=f"{len(results)} `--merge` but {len(tools)} `--tool`",
                                    help="give one `--tool NAME` per `--merge RESULTS`, in the same order"))
    path = pick_results(base, eps)
    document = read_document(path)
    verdicts = read_verdicts(path)
    bench = load_benchmark(benchmark or base / "vnncomp")
    check_provenance(document.get("settings", {}), bench)
    sources = [ResultsFile(path, name) for path, name in zip(results, tools or ["verifier"] * len(results))]
    previous = [MergedFile.from_row(row) for row in document.get("merges", [])]
    report = merge(verdicts, bench, sources, previous)
    if write_merged(base, document, report, stem=path.stem):
        raise typer.Exit(code=2)


def write_merged(base: Path, document: dict, report, verifiers: Optional[list[dict]] = None,
                 stem: str = "certify") -> bool:
    """Write a merge's verdicts into ``base``'s certify.json/.csv and show them; True on a conflict.

    ``verifiers`` (the runs of `tapsc verify`, default: those certify.json records) are kept,
    and with them the ``complete`` certified accuracy, recomputed from the merged verdicts.
    """
    from rich.table import Table

    from tapsc.certify.report import complete_summary, summarize, summary_table, write_results

    settings = document.get("settings", {})
    methods = list(settings.get("methods", [])) + list(dict.fromkeys(f.tool for f in report.files))
    summary = summarize(report.verdicts, methods)
    verifiers = document.get("verifiers", []) if verifiers is None else verifiers
    extra = {"merges": [f.row() for f in report.files], "problems": [p.__dict__ for p in report.problems],
             "conflicts": [c.__dict__ for c in report.conflicts]}
    if verifiers:
        extra.update(verifiers=verifiers, complete=complete_summary(summary, verifiers))
    json_path, csv_path = write_results(base, report.verdicts, summary, settings, extra=extra, stem=stem)
    table = Table(title="merged verifier results")
    for column in ("tool", "results", "answers"):
        table.add_column(column)
    for file in report.files:
        table.add_row(escape(file.tool), escape(file.path), escape(", ".join(f"{k} {v}" for k, v in
                                                                            file.counts().items())))
    console.print(table)
    console.print(summary_table(summary, title="in-house + verifiers"))
    console.print(f"wrote {escape(str(json_path))} (and {escape(csv_path.name)})")
    if report.problems:
        lines = "\n".join(escape(p.message()) for p in report.problems)
        console.print(Panel(lines, title=f"{len(report.problems)} answer(s) not counted", style="yellow"))
    if report.conflicts:
        lines = "\n".join(escape(c.message()) for c in report.conflicts)
        console.print(Panel(lines, title=f"{len(report.conflicts)} SOUNDNESS CONFLICT(S)", style="bold red"))
    return bool(report.conflicts)


# ---------------------------------------------------------------- tapsc export


@app.command("export")
@user_errors_exit
def export_command(
    target: Path = typer.Argument(..., help="A run directory, or a .taps spec with --checkpoint."),
    onnx: bool = typer.Option(False, "--onnx", help="Write the ONNX network."),
    vnnlib: bool = typer.Option(False, "--vnnlib", help="Write VNN-LIB properties, instances.csv, manifest.json."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Weights for a spec file."),
    which: str = common.WHICH,
    out: Optional[Path] = typer.Option(None, "--out", help="Benchmark folder (default RUN_DIR/vnncomp)."),
    samples: Optional[int] = typer.Option(None, "--samples", min=1, help="Properties to write (default export.samples)."),
    eps: Optional[float] = typer.Option(None, "--eps", min=0, help="Radius (default export.eps, else perturbation.eps)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=1, help="Seconds per instance (default export.timeout)."),
    only_unknown: bool = typer.Option(False, "--only-unknown", help="Only samples `tapsc certify` left unknown."),
    results: Optional[Path] = typer.Option(None, "--certify-results", help="certify.json (default: beside the run)."),
    data_root: Optional[str] = common.DATA_ROOT,
) -> None:
    """Export ONNX + VNN-LIB in the VNN-COMP layout (both when neither flag is given)."""
    import torch

    common.check_which(which)
    from tapsc.export.benchmark import write_benchmark

    if not onnx and not vnnlib:
        onnx = vnnlib = True
    from tapsc.train.outputs import ensure_writable_folder

    default_out = target if target.is_dir() else checkpoint.parent if checkpoint else None
    if out is not None or default_out is not None:  # before the model and the data are loaded
        ensure_writable_folder(out or default_out / "vnncomp", "--out" if out else None)
    loaded = _load_target(target, checkpoint, which, torch.device("cpu"))
    spec = loaded.spec
    if spec.perturbation.norm != "linf":
        from tapsc.errors import UnsupportedExport

        raise UnsupportedExport(f"a `{spec.perturbation.norm}` perturbation cannot be written as a VNN-LIB box",
                                help="VNN-LIB properties are linear constraints; only linf balls are boxes")
    radius = eps if eps is not None else (spec.export.eps if spec.export.eps is not None else spec.perturbation.eps)
    count = samples or spec.export.samples
    test_set = _test_set(spec, data_root)
    verdicts = _known_verdicts(results or loaded.out_dir, radius, required=only_unknown)
    if only_unknown and not any(v.verdict == "unknown" for v in verdicts.values()):
        console.print(f"`tapsc certify` left no sample unknown at eps {radius:g} ({len(verdicts)} certified, "
                      "falsified or misclassified): nothing to export, no benchmark written")
        return
    chosen = _export_samples(loaded.network, test_set, count, verdicts, only_unknown)
    folder = out or loaded.out_dir / "vnncomp"
    parity = torch.stack([test_set[i][0] for i in range(min(len(test_set), 100))]).float()
    report = write_benchmark(folder, loaded.network, chosen, radius, timeout or spec.export.timeout,
                             spec.export.opset, onnx=onnx, vnnlib=vnnlib, parity_inputs=parity,
                             provenance=loaded.provenance(radius))
    _print_export(report)


def _known_verdicts(where: Path, eps: float, required: bool) -> dict:
    """The verdicts certified at ``eps`` (a folder's certify.json or certify-eps<E>.json, or that file)."""
    from tapsc.certify.report import JSON_NAME, find_results, read_verdicts

    path = (find_results(where, eps) or where / JSON_NAME) if where.is_dir() else where
    if not path.exists() and not required:
        return {}
    if path.suffix == ".json" and path.exists():
        certified_eps = json.loads(path.read_text()).get("settings", {}).get("eps")
        if certified_eps is not None and abs(certified_eps - eps) > 1e-12:
            if not required:
                return {}
            raise TapscError(Diagnostic(code="eps-mismatch", message=f"{path} was certified at eps "
                                        f"{certified_eps:g}, the export asks for eps {eps:g}",
                                        help=f"run `tapsc certify ... --eps {eps:g}` first, or export at that eps"))
    return {v.index: v for v in read_verdicts(path)}


def _export_samples(network, test_set, count: int, verdicts: dict, only_unknown: bool):
    """Correctly classified samples in test-set order (only unknown ones when asked)."""
    import torch

    from tapsc.export.benchmark import Sample, correctly_classified

    if only_unknown:
        order = [i for i in sorted(verdicts) if verdicts[i].verdict == "unknown"]
    else:
        order = list(range(len(test_set)))
    chosen: list = []
    for start in range(0, len(order), 256):
        if len(chosen) >= count:
            break
        batch = [Sample(i, torch.as_tensor(test_set[i][0]).float(), int(test_set[i][1]),
                        verdicts[i].verdict if i in verdicts else None) for i in order[start:start + 256]]
        chosen.extend(correctly_classified(network, batch)[0])
    return chosen[:count]


def _print_export(report) -> None:
    from tapsc.export.benchmark import timeout_text

    if report.onnx is not None:
        o = report.onnx
        parity = ("not checked (onnxruntime is not installed)" if o.max_abs_diff is None else
                  f"max |onnxruntime - torch| = {o.max_abs_diff:.2e} on {o.parity_inputs} test inputs "
                  f"(tolerance {o.tolerance:.1e})")
        console.print(f"ONNX {escape(str(o.path))}: opset {o.opset}, ops {', '.join(o.ops)}; {parity}")
    if report.instances:
        console.print(f"{report.instances} VNN-LIB instances, timeout {timeout_text(report.timeout)} s each, "
                      f"in {escape(str(report.out_dir))} (instances.csv, manifest.json)")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
