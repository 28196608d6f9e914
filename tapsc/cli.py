"""The `tapsc` command line. Commands live in tapsc/commands/; this module owns the
typer app and turns user mistakes (TapscError) into rendered diagnostics and exit 1."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

import typer
from rich.console import Console

from tapsc.errors import TapscError

app = typer.Typer(
    name="tapsc",
    help="Certified training from declarative .taps specs.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

err_console = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable)


def user_errors_exit(fn: F) -> F:
    """Decorate a command: a TapscError is rendered (never a traceback) and exits 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TapscError as error:
            from tapsc.language.diagnostics import render_error

            text = render_error(error)
            if not _report_to_launcher(text):
                err_console.print(text, soft_wrap=True, markup=False, highlight=False)
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


def _report_to_launcher(text: str) -> bool:
    """In a worker of ``--nproc-per-node``, leave the diagnostic to the launcher, which prints
    each distinct one once (every rank hits e.g. a missing dataset). False elsewhere."""
    if not _is_distributed_worker():  # before importing tapsc.train.distributed, which imports torch
        return False
    from tapsc.train import distributed

    folder = os.environ.get(distributed.ERROR_DIR_ENV)
    if not folder:
        return False
    try:
        distributed.write_worker_error(folder, int(os.environ["RANK"]), text)
    except (OSError, ValueError):
        return False
    return True


def main() -> None:
    if not _is_distributed_worker():
        app(prog_name="tapsc")
        return
    # A worker leaves without running C++ static destructors: after the process group is
    # destroyed, a c10d/Gloo thread can still be joinable at interpreter teardown, and its
    # destructor aborts the process (SIGABRT, "terminate called without an active
    # exception") after all work is done and written. Flush, then exit with the real code.
    try:
        app(prog_name="tapsc")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _is_distributed_worker() -> bool:
    """Inside a worker of torchrun / `--nproc-per-node` (the launcher's variables set)."""
    keys = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
    return all(key in os.environ for key in keys) and os.environ["WORLD_SIZE"] not in ("", "0", "1")


# Each command module adds its commands to `app` when imported; they import `app`
# from here, so this import stays at the bottom.
from tapsc.commands import complete, experiment, language, train, verify  # noqa: E402, F401

if __name__ == "__main__":
    sys.exit(main())
