"""How `tapsc run` and `tapsc eval` show the runner's events: a rich live display on a
terminal (a progress bar per epoch with batch rate, ETA, phase, eps, loss terms and
running accuracies; a table row per epoch; a final results table), and a plain log
of whole lines everywhere else (CI, files, pipes)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tapsc.measures import MEASURES
from tapsc.train.events import (
    BatchEnded,
    EpochEnded,
    EpochStarted,
    EvalEnded,
    EvalProgress,
    EvalStarted,
    Event,
    Note,
    RunFinished,
    RunStarted,
)

METRIC_NAMES = {name: m.accuracy_label for name, m in MEASURES.items()}  # "IBP-certified", ...
EPOCH_COLUMNS = ("epoch", "phase", "eps", "lr", "loss", "train nat", "nat", "IBP", "select", "time")
EPOCH_WIDTHS = (6, 7, 7, 7, 7, 9, 7, 7, 9, 6)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def terms_text(terms: dict[str, float], limit: int = 4) -> str:
    return " ".join(f"{name}={value:.3g}" for name, value in list(terms.items())[:limit])


def epoch_label(epoch: int, epochs: int) -> str:
    """``epoch/last``, numbered from 0 as specs (`until epoch N`), metrics.jsonl and messages
    number epochs: "3/9" is epoch 3 of a 10-epoch run."""
    return f"{epoch}/{epochs - 1}"


def epoch_cells(event: EpochEnded, select: str) -> list[str]:
    row = event.metrics
    return [epoch_label(event.epoch, event.epochs), row["phase"], f"{row['eps']:.4g}", f"{row['lr']:.3g}",
            f"{row['train_loss']:.4f}", percent(row.get("train_natural")), percent(row.get("natural")),
            percent(row.get("ibp")), percent(row.get(select)) + ("*" if event.best else " "),
            f"{event.seconds:.1f}s"]  # "*": this epoch became the best checkpoint


def results_table(results: dict[str, Any], title: str = "test results") -> Table:
    """The final table: one row per metric, accuracy in percent."""
    table = Table(title=f"{title} ({results['samples']} samples, eps = {results['eps']:g})")
    table.add_column("metric")
    table.add_column("accuracy", justify="right")
    table.add_column("seconds", justify="right")
    for name, value in results["metrics"].items():
        table.add_row(METRIC_NAMES.get(name, name), percent(value), f"{results['seconds'].get(name, 0):.1f}")
    for name in results.get("skipped", []):
        table.add_row(METRIC_NAMES.get(name, name), "n/a (no certifier installed)", "")
    return table


class RichDisplay:
    """Live rendering on a terminal; call with each event, ``close()`` at the end."""

    def __init__(self, console: Console, select: str = "taps"):
        self.console, self.select = console, select
        self.progress: Progress | None = None
        self.task = None
        self.header_shown = False

    def _start_progress(self, description: str, total: int) -> None:
        self.close()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}"), console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task(escape(description), total=total, rate="", info="")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __call__(self, event: Event) -> None:
        handler = getattr(self, f"on_{type(event).__name__}", None)
        if handler is not None:
            handler(event)

    def on_RunStarted(self, e: RunStarted) -> None:
        where = "resuming at epoch %d" % e.start_epoch if e.start_epoch else "starting"
        self.console.print(f"[bold]tapsc run[/] {escape(str(e.run_dir))}: {where}, {e.epochs} epochs on "
                           f"{escape(e.device)} ({e.precision}); {e.train_size} training "
                           f"samples, selection on {e.selection_size} {e.selection_split} samples")

    def on_EpochStarted(self, e: EpochStarted) -> None:
        self._start_progress(f"epoch {epoch_label(e.epoch, e.epochs)} {e.phase}", e.batches)

    def on_BatchEnded(self, e: BatchEnded) -> None:
        if self.progress is None:
            return
        info = (f"eps {e.eps:.4f} loss {e.loss:.4f} {terms_text(e.terms)} nat {percent(e.natural_acc)}"
                + (f" taps {percent(e.robust_acc)}" if e.robust_acc is not None else ""))
        self.progress.update(self.task, completed=e.batch + 1, rate=f"{e.rate:.1f} batch/s", info=escape(info))

    def on_EpochEnded(self, e: EpochEnded) -> None:
        self.close()
        table = Table(box=None, show_header=not self.header_shown, pad_edge=False, padding=(0, 0, 0, 1))
        names = EPOCH_COLUMNS[:-2] + (self.select, EPOCH_COLUMNS[-1])
        for name, width in zip(names, EPOCH_WIDTHS):
            table.add_column(name, width=width, justify="right", no_wrap=True)
        table.add_row(*epoch_cells(e, self.select))
        self.header_shown = True
        self.console.print(table)

    def on_EvalStarted(self, e: EvalStarted) -> None:
        self._start_progress(f"evaluating {e.split}: {', '.join(e.metrics)}", e.samples)

    def on_EvalProgress(self, e: EvalProgress) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=e.done)

    def on_EvalEnded(self, e: EvalEnded) -> None:
        self.close()

    def on_Note(self, e: Note) -> None:
        self.close()
        self.console.print(("[yellow]warning:[/] " if e.warning else "note: ") + escape(e.text))

    def on_RunFinished(self, e: RunFinished) -> None:
        self.close()
        self.console.print(results_table(e.results))
        self.console.print(f"run directory: {escape(str(e.run_dir))}")


class PlainDisplay:
    """Whole lines, no control codes: for logs and pipes."""

    def __init__(self, console: Console, select: str = "taps"):
        self.console, self.select = console, select

    def line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        pass

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.line(f"run {event.run_dir}: epochs {event.start_epoch + 1}..{event.epochs} on {event.device} "
                      f"({event.precision}), "
                      f"{event.train_size} training samples, selection on {event.selection_size} "
                      f"{event.selection_split} samples")
        elif isinstance(event, BatchEnded) and self._report_batch(event):
            self.line(f"  epoch {event.epoch} batch {event.batch + 1}/{event.batches} {event.phase} "
                      f"eps={event.eps:.4f} loss={event.loss:.4f} {terms_text(event.terms)} "
                      f"nat={percent(event.natural_acc)} {event.rate:.1f} batch/s")
        elif isinstance(event, EpochEnded):
            cells = epoch_cells(event, self.select)
            names = EPOCH_COLUMNS[1:-2] + (self.select, EPOCH_COLUMNS[-1])
            self.line(f"epoch {cells[0]} " + " ".join(f"{k}={v.strip()}" for k, v in zip(names, cells[1:])))
        elif isinstance(event, Note):
            self.line(("warning: " if event.warning else "note: ") + event.text)
        elif isinstance(event, EvalEnded):
            self.line(f"{event.split}: " + ", ".join(f"{METRIC_NAMES.get(k, k)} {percent(v)}"
                                                     for k, v in event.results["metrics"].items()))
        elif isinstance(event, RunFinished):
            self.console.print(results_table(event.results))
            self.line(f"run directory: {event.run_dir}")

    @staticmethod
    def _report_batch(event: BatchEnded) -> bool:
        quarter = max(event.batches // 4, 1)
        return event.batches >= 8 and (event.batch + 1) % quarter == 0 and event.batch + 1 < event.batches


def make_display(console: Console, select: str = "taps") -> RichDisplay | PlainDisplay:
    """Rich live display on a terminal, plain lines otherwise."""
    return RichDisplay(console, select) if console.is_terminal else PlainDisplay(console, select)
