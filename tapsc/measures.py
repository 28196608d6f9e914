"""The measures of robustness, one table: every other module reads its names, labels and kinds here.

For a test sample (x, y) and the perturbation box B = clip(x -+ eps, 0, 1) (`input_box`),
the worst-case margin is m* = min over B of min_{j != y} (o_y - o_j); the sample is robust
iff m* > 0. Each measure gives a per-sample margin (logit units; positive: robust by that
measure), and its accuracy is the share of samples it calls robust. What a margin says
about m* is the measure's kind:

- ``sound``: a lower bound, m* >= margin, so margin > 0 proves robustness (certification's
  bounds, `tapsc.certify`, or a complete verifier's checked verdicts);
- ``estimate``: no guaranteed side (TAPS, SABR); a sample counts only when it is also
  classified correctly;
- ``attack``: the smallest margin an attack reaches in B, the clean point included, so
  m* <= margin;
- ``clean``: the prediction at x alone (natural accuracy: argmax o = y).

`KINDS` lists them in the order of their margins: sound <= m* <= attack <= clean.

The table's order is the order of results: sweep.csv's columns, the accuracies of `tapsc
plot`. Where a measure is shown is part of its entry (`Measure.shown`); lists of names are
derived with `names`, never typed again. This module is torch-free (the IR reads the
metric names from it); the margin functions are registered by name in `tapsc.margins`.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

Kind = Literal["sound", "estimate", "attack", "clean"]  # in margin order: sound <= m* <= attack <= clean
KINDS: tuple[Kind, ...] = typing.get_args(Kind)

# Where a measure is shown; each place takes its list of names from the table.
EVAL = "eval"  # an `eval.metrics` / `eval.select` keyword: `tapsc.evaluate`, results.json, metrics.jsonl
SWEEP = "sweep"  # a sweep.csv column: `tapsc sweep`'s table, CSV and plots
ANALYSIS = "analysis"  # a `tapsc analyze --methods` estimate: analysis.json, its table and figures
CERTIFY = "certify"  # an in-house bound of `tapsc certify --methods` (`tapsc.certify.linear`)
PLACES = (EVAL, SWEEP, ANALYSIS, CERTIFY)


@dataclass(frozen=True)
class Measure:
    """One measure.

    Attributes:
        name: the keyword everywhere: spec (`eval.metrics`), CLI (`--methods`), results.json,
            metrics.jsonl and analysis.json keys, sweep.csv column.
        label: display text ("CROWN-IBP"); `accuracy_label` adds "-certified" to sound ones.
        kind: what its margin says about m* (module docstring).
        shown: the places (`PLACES`) that list it.
        color: its matplotlib color in every figure.
        needs_grad: the measure differentiates through the network (attacks).
        computed: False for a measure read from a file rather than computed from the network
            (``complete``: certify.json after `tapsc verify`); every other one has a margin
            function in `tapsc.margins`.
    """

    name: str
    label: str
    kind: Kind
    shown: frozenset[str]
    color: str
    needs_grad: bool = False
    computed: bool = True

    @property
    def accuracy_label(self) -> str:
        """The name of its accuracy in tables and legends: "IBP-certified", "PGD", "natural"."""
        return f"{self.label}-certified" if self.kind == "sound" else self.label


def _measure(name: str, label: str, kind: Kind, shown: set[str], color: str, **facts) -> Measure:
    return Measure(name, label, kind, frozenset(shown), color, **facts)


MEASURES: dict[str, Measure] = {m.name: m for m in (
    _measure("natural", "natural", "clean", {EVAL, SWEEP}, "tab:blue"),
    _measure("pgd", "PGD", "attack", {EVAL, SWEEP, ANALYSIS}, "tab:orange", needs_grad=True),
    _measure("ibp", "IBP", "sound", {EVAL, SWEEP, ANALYSIS, CERTIFY}, "tab:red"),
    _measure("sabr", "SABR", "estimate", {ANALYSIS}, "tab:pink", needs_grad=True),
    _measure("taps", "TAPS", "estimate", {EVAL, SWEEP, ANALYSIS}, "tab:green", needs_grad=True),
    _measure("crown_ibp", "CROWN-IBP", "sound", {EVAL, SWEEP, ANALYSIS, CERTIFY}, "tab:purple"),
    _measure("crown", "CROWN", "sound", {EVAL, SWEEP, ANALYSIS, CERTIFY}, "tab:brown"),
    _measure("alpha_crown", "alpha-CROWN", "sound", {CERTIFY}, "tab:olive"),
    _measure("complete", "complete", "sound", {SWEEP}, "black", computed=False),
)}


def names(place: str | None = None, kind: Kind | None = None) -> tuple[str, ...]:
    """The measures shown in ``place`` (one of `PLACES`; None: all) of ``kind`` (None: any),
    in table order.

    >>> names(SWEEP)
    ('natural', 'pgd', 'ibp', 'taps', 'crown_ibp', 'crown', 'complete')
    >>> names(CERTIFY)
    ('ibp', 'crown_ibp', 'crown', 'alpha_crown')
    """
    assert place is None or place in PLACES, place
    return tuple(m.name for m in MEASURES.values()
                 if (place is None or place in m.shown) and (kind is None or m.kind == kind))


def by_kind(measure_names: tuple[str, ...]) -> tuple[str, ...]:
    """``measure_names`` ordered by kind (`KINDS`: sound bounds first, attacks last), table order within a kind.

    >>> by_kind(names(ANALYSIS))
    ('ibp', 'crown_ibp', 'crown', 'sabr', 'taps', 'pgd')
    """
    return tuple(sorted(measure_names, key=lambda name: KINDS.index(MEASURES[name].kind)))


Box = TypeVar("Box")  # a torch tensor or a numpy array


def input_box(x: Box, eps: float, outward: tuple[Callable[[Box], Box], Callable[[Box], Box]] | None = None
              ) -> tuple[Box, Box]:
    """The perturbation box clip(x -+ eps, 0, 1): the l_inf ball of radius ``eps`` around ``x``
    intersected with the pixel range, ``(lo, hi)``, each like ``x`` ([0, 1] pixel units).

    Args:
        x: the input, a torch tensor or a numpy array (any shape).
        eps: the radius.
        outward: ``(round_down, round_up)`` applied to x - eps and x + eps before the clip, so
            that the box holds the exact box of the real number ``eps`` around the stored ``x``
            (certification: `tapsc.certify.rounding.perturbation_box`); None: the plain
            floating-point box that training, attacks and VNN-LIB export use.
    """
    lo, hi = x - eps, x + eps
    if outward is not None:
        lo, hi = outward[0](lo), outward[1](hi)
    return lo.clip(0, 1), hi.clip(0, 1)
