"""PNG figures for `tapsc plot`, `tapsc sweep` and `tapsc analyze`.

Every figure is a ``matplotlib.figure.Figure`` drawn on the Agg canvas: no pyplot, no
global state, no display needed (CI, ssh, a GPU node). Each function takes plain data
(lists and dicts read from a run's files) and returns the path it wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tapsc.errors import Diagnostic, TapscError
from tapsc.measures import EVAL, MEASURES, names
from tapsc.train.display import METRIC_NAMES


def _color(name: str) -> str | None:
    """A measure's color (`tapsc.measures`); None (matplotlib's cycle) for anything else."""
    return MEASURES[name].color if name in MEASURES else None


def _label(name: str) -> str:
    """A measure's label ("CROWN-IBP"), or the name itself."""
    return MEASURES[name].label if name in MEASURES else name


def _figure(rows: int, cols: int, width: float = 5.0, height: float = 3.6) -> Figure:
    figure = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110, format="png")
    except OSError as error:
        raise TapscError(Diagnostic(code="unwritable", message=f"cannot write {path}: {error.strerror or error}",
                                    help="choose a folder you can write to with `--out`")) from None
    return path


# ---------------------------------------------------------------- tapsc plot


def training_curves(history: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Four panels per epoch: loss and its terms, eps and lr, accuracies, seconds.

    Args:
        history: the rows of metrics.jsonl (one per epoch).
        path: the PNG to write.
        title: the figure's title (the run's name).
    """
    epochs = [row["epoch"] + 1 for row in history]
    figure = _figure(2, 2)
    loss, schedule, accuracy, seconds = figure.subplots(2, 2).flat
    loss.plot(epochs, [row["train_loss"] for row in history], "k-o", label="loss", markersize=3)
    terms = sorted({name for row in history for name in row.get("train_terms", {})})
    for name in terms:
        loss.plot(epochs, [row.get("train_terms", {}).get(name) for row in history], "-o", markersize=2, label=name)
    loss.set(title="training loss (mean over batches)", xlabel="epoch")
    loss.set_yscale("symlog", linthresh=1e-2)
    loss.legend(fontsize="small")
    schedule.plot(epochs, [row["eps"] for row in history], "-o", markersize=3, label="eps (epoch end)")
    schedule.set(title="eps and learning rate", xlabel="epoch", ylabel="eps")
    lr_axis = schedule.twinx()
    lr_axis.plot(epochs, [row["lr"] for row in history], "--", color="tab:gray", label="lr")
    lr_axis.set_ylabel("lr")
    _phase_bands(schedule, history)
    schedule.legend(loc="upper left", fontsize="small")
    lr_axis.legend(loc="lower right", fontsize="small")
    for key, label, style in (("train_natural", "train natural", ":"), ("train_taps", "train TAPS (probe)", ":")):
        values = [row.get(key) for row in history]
        if any(v is not None for v in values):
            accuracy.plot(epochs, _percent(values), style, label=label)
    for name in names(EVAL):  # what a metrics.jsonl row can hold
        values = [row.get(name) for row in history]
        if any(v is not None for v in values):
            accuracy.plot(epochs, _percent(values), "-o", markersize=3, color=_color(name),
                          label=f"{METRIC_NAMES[name]} (selection split)")
    accuracy.set(title="accuracy per epoch", xlabel="epoch", ylabel="%", ylim=(0, 100))
    accuracy.legend(fontsize="small")
    seconds.bar(epochs, [row.get("seconds", 0.0) for row in history], color="tab:gray")
    seconds.set(title="seconds per epoch", xlabel="epoch", ylabel="s")
    for axis in (loss, schedule, accuracy, seconds):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def _percent(values: Sequence[float | None]) -> list[float | None]:
    return [None if v is None else 100 * v for v in values]


def _phase_bands(axis, history: Sequence[dict[str, Any]]) -> None:
    """Label each phase's span of epochs at the top of the axis."""
    start = 0
    for n in range(1, len(history) + 1):
        if n == len(history) or history[n]["phase"] != history[start]["phase"]:
            middle = (history[start]["epoch"] + history[n - 1]["epoch"]) / 2 + 1
            axis.axvline(history[start]["epoch"] + 0.5, color="tab:gray", linewidth=0.5)
            axis.annotate(history[start]["phase"], (middle, 0.97), xycoords=("data", "axes fraction"),
                          ha="center", va="top", fontsize="small", color="tab:gray")
            start = n


# ---------------------------------------------------------------- tapsc sweep


def sweep_accuracy(rows: Sequence[dict[str, Any]], swept: str, others: Sequence[str], metrics: Sequence[str],
                   path: Path, title: str = "") -> Path:
    """Accuracy against one swept setting; one line per combination of the other swept settings.

    Args:
        rows: sweep.csv rows (values as text; accuracies as floats or None).
        swept: the setting on the x axis.
        others: the other swept settings (each combination is one line style).
        metrics: accuracy columns to draw: all on one panel when only one setting is swept,
            otherwise one panel each.
        path: the PNG to write.
        title: the figure title.
    """
    xs = list(dict.fromkeys(row[swept] for row in rows))
    numeric = all(_number(x) is not None for x in xs)
    if numeric:
        xs = sorted(xs, key=_number)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[o] for o in others), []).append(row)
    present = [m for m in metrics if any(row.get(m) is not None for row in rows)] or list(metrics[:1])
    # one swept setting: every accuracy on one axis (the paper's Fig. 5); several: a panel per accuracy
    panels = [tuple(present)] if not others else [(m,) for m in present]
    cols = min(len(panels), 3)
    rows_n = (len(panels) + cols - 1) // cols
    figure = _figure(rows_n, cols, width=5.0 if not others else 4.2)
    axes = list(figure.subplots(rows_n, cols, squeeze=False).flat)
    for axis, panel in zip(axes, panels):
        for metric in panel:
            for key, members in groups.items():
                by_x = {row[swept]: row.get(metric) for row in members}
                points = [(x, by_x[x]) for x in xs if by_x.get(x) is not None]
                if not points:
                    continue
                label = (", ".join(f"{o}={v}" for o, v in zip(others, key)) if others
                         else METRIC_NAMES.get(metric, metric))
                positions = [(_number(x) if numeric else xs.index(x)) for x, _ in points]
                axis.plot(positions, [100 * v for _, v in points], "-o", label=label,
                          color=None if others else _color(metric))
        axis.set(title=METRIC_NAMES.get(panel[0], panel[0]) if others else "accuracy", xlabel=swept,
                 ylabel="accuracy %")
        if not numeric:
            axis.set_xticks(range(len(xs)), xs, rotation=30, fontsize="small")
        elif all(float(_number(x)).is_integer() for x in xs):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(fontsize="x-small")
    for axis in axes[len(panels):]:
        axis.set_visible(False)  # unused cells of the grid
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- tapsc analyze


def margin_histograms(differences: dict[str, dict[str, list[float]]], path: Path, title: str = "") -> Path:
    """The paper's Figs. 1 and 6: per estimate, the distribution of (estimate - tightest sound
    bound) and of (estimate - strongest attack) over the samples.

    Args:
        differences: ``{"to_sound": {estimate: [...]}, "to_attack": {estimate: [...]}}``.
        path: the PNG to write.
        title: the figure title.
    """
    figure = _figure(1, 2, width=6.0, height=4.0)
    axes = figure.subplots(1, 2)
    captions = {"to_sound": "estimate - tightest sound lower bound", "to_attack": "estimate - strongest attack margin"}
    for axis, key in zip(axes, ("to_sound", "to_attack")):
        series = {name: values for name, values in differences[key].items() if values}
        if not series:
            axis.set_title(f"{captions[key]}: no data")
            continue
        low = min(min(v) for v in series.values())
        high = max(max(v) for v in series.values())
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5
        bins = [low + (high - low) * i / 40 for i in range(41)]
        for name, values in series.items():
            axis.hist(values, bins=bins, histtype="step", linewidth=1.5, color=_color(name),
                      label=f"{_label(name)} (n={len(values)})")
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set(title=captions[key], xlabel="margin difference (logit units)", ylabel="samples")
        axis.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def margin_scatter(records: Sequence[dict[str, Any]], names: Sequence[str], path: Path, title: str = "") -> Path:
    """Each estimate against the strongest attack margin, one point per sample (diagonal: equal)."""
    figure = _figure(1, 1, width=5.5, height=5.0)
    axis = figure.subplots()
    xs_all = []
    for name in names:
        pairs = [(r["strongest_attack"], r[name]) for r in records
                 if r.get(name) is not None and r.get("strongest_attack") is not None]
        if pairs:
            xs_all += [p[0] for p in pairs]
            axis.scatter([p[0] for p in pairs], [p[1] for p in pairs], s=8, alpha=0.6,
                         color=_color(name), label=_label(name))
    if xs_all:
        axis.plot([min(xs_all), max(xs_all)], [min(xs_all), max(xs_all)], "k--", linewidth=0.8)
    axis.axhline(0, color="gray", linewidth=0.5)
    axis.axvline(0, color="gray", linewidth=0.5)
    axis.set(title="worst-case margin estimates vs. the strongest attack", xlabel="attack margin (upper bound)",
             ylabel="estimate")
    axis.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return _save(figure, path)
