"""`tapsc check` (validate specs without training) and `tapsc show` (print a spec's stages)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tapsc.cli import app, err_console, user_errors_exit
from tapsc.errors import Diagnostic, TapscError

# Piped output (tests, logs) gets a wide console so the layer table is not cut.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

_SET_HELP = "Override a spec setting: path=value, e.g. optimizer.lr=1e-3 (repeatable)."
_EPOCHS_HELP = ("Rescale the whole schedule (phases, eps ramp, lr milestones) to N epochs, "
                "as `tapsc run --epochs N` does.")
STAGES = ("tree", "ir", "graph")


@app.command("check")
@user_errors_exit
def check_command(
    specs: list[Path] = typer.Argument(..., help="The .taps specs to validate."),
    set_: list[str] = typer.Option([], "--set", help=_SET_HELP),
    epochs: Optional[int] = typer.Option(None, "--epochs", help=_EPOCHS_HELP),
) -> None:
    """Validate specs (syntax, schema, shapes, schedule) without training; no GPU or data needed.

    Every spec gets its own `ok` or `fail` line, whatever happened to the others; the
    exit status is 1 when any failed.
    """
    problems: list[Diagnostic] = []
    crash: Exception | None = None
    for path in specs:
        warnings: list[Diagnostic] = []
        try:
            summary = check_one(path, set_, warnings=warnings, epochs=epochs)
        except TapscError as error:
            problems.extend(error.diagnostics)
            console.print(f"[red]fail[/red] {escape(str(path))}")
        except Exception as error:  # a bug in tapsc: still report the other files, then the traceback
            crash = crash or error
            name = escape(type(error).__name__)
            console.print(f"[red]fail[/red] {escape(str(path))}  (internal error: {name})")
        else:
            console.print(f"[green]ok[/green]   {escape(str(path))}  ({escape(summary)})")
            print_warnings(warnings)
    if problems and crash is not None:
        from tapsc.language.diagnostics import render_error

        err_console.print(render_error(TapscError(problems)), soft_wrap=True, markup=False, highlight=False)
    if crash is not None:
        raise crash
    if problems:
        raise TapscError(problems)


def print_warnings(warnings: list[Diagnostic]) -> None:
    """Render the checks' warnings on stderr (they do not change the exit status)."""
    if warnings:
        from tapsc.language.diagnostics import render_diagnostics

        err_console.print(render_diagnostics(warnings), soft_wrap=True, markup=False, highlight=False)


def check_one(path: Path, overrides: list[str] | tuple[str, ...] = (),
              warnings: list[Diagnostic] | None = None, epochs: int | None = None) -> str:
    """What `tapsc check` does for one spec: load and check it (rescaled to ``epochs``
    when given), and summarise it in words. The checks' warnings are appended to
    ``warnings`` when it is given.

    Raises:
        TapscError: every user mistake in the spec.
    """
    from tapsc.language.printer import layer_rows
    from tapsc.language.spec import load_spec

    spec = load_spec(path, overrides, warnings)
    rescaled = ""
    if epochs is not None:
        from tapsc.language.spec import with_epochs

        result = with_epochs(spec, epochs, warnings)
        spec, rescaled = result.spec, f"; {result.summary()}"
    params = sum(row["params"] for row in layer_rows(spec))
    return f"{spec.data.dataset}, {len(spec.model.layers)} layers, {params:,} parameters{rescaled}"


@app.command("show")
@user_errors_exit
def show_command(
    spec: Path = typer.Argument(..., help="The .taps spec to show."),
    stage: str = typer.Option("ir", "--stage", help="tree (parse tree), ir (layer table and schedule) "
                              "or graph (the compiled torch modules)."),
    as_json: bool = typer.Option(False, "--json", help="Print the canonical IR as JSON."),
    set_: list[str] = typer.Option([], "--set", help=_SET_HELP),
) -> None:
    """Print one stage of a spec: its parse tree, its IR (layer table, schedule) or its torch graph."""
    from tapsc.language.spec import load_spec

    if stage not in STAGES:
        from tapsc.language.diagnostics import did_you_mean

        raise TapscError(Diagnostic(code="unknown-stage", message=f"unknown stage `{stage}`",
                                    help=did_you_mean(stage, STAGES)))
    if stage == "tree":
        _show_tree(spec)
        return
    loaded = load_spec(spec, set_)
    if as_json:
        typer.echo(loaded.model_dump_json(indent=2))
    elif stage == "ir":
        _show_ir(loaded)
    else:
        _show_graph(loaded)


def _show_tree(path: Path) -> None:
    from tapsc.language.spec import read_source
    from tapsc.language.syntax import parse_tree

    try:
        text = read_source(path, str(path))
    except (OSError, ValueError) as error:
        raise TapscError(Diagnostic(code="file-not-found", message=f"cannot read spec `{path}`",
                                    help=getattr(error, "strerror", None) or str(error))) from None
    from tapsc.language.diagnostics import register_source

    register_source(str(path), text)
    typer.echo(parse_tree(text, str(path)).pretty())


def _show_ir(spec) -> None:
    from tapsc.language.printer import layer_rows, schedule_lines

    table = Table(title=escape(f"model: input {spec.model.input_shape}"), title_justify="left")
    for column in ("#", "layer", "output shape", "params", "ReLUs", "part"):
        table.add_column(column, justify="right" if column in ("#", "params", "ReLUs") else "left", no_wrap=True)
    rows = layer_rows(spec)
    for row in rows:
        table.add_row(str(row["index"]), escape(row["layer"]), escape(str(row["shape"])), f"{row['params']:,}",
                      str(row["relus"]) if row["relus"] else "", row["part"])
    console.print(table)
    total = sum(row["params"] for row in rows)
    console.print(f"{total:,} parameters; split: {escape(_split_text(spec))}")
    console.print("[bold]schedule[/bold]")
    for line in schedule_lines(spec):
        console.print(f"  {escape(line)}")


def _split_text(spec) -> str:
    from tapsc.language import ir

    if isinstance(spec.split, ir.SplitAtLayer):
        return f"classifier from layer {spec.split.index}"
    if isinstance(spec.split, ir.SplitAtName):
        return f"classifier from layer `{spec.split.name}`"
    return f"{spec.split.count} ReLU(s) in the classifier"


def _show_graph(spec) -> None:
    from tapsc.compile import compile_network

    network = compile_network(spec)
    console.print(escape(str(network)))
