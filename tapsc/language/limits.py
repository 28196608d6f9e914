"""The limits the spec front end enforces, each declared once with its diagnostic code.

A `.taps` file is untrusted text: without limits, a 400-digit number overflows a float,
3,000 nested parentheses exhaust Python's recursion, and `repeat 1000000000 { }` keeps
`tapsc check` busy for minutes. Every limit below is far above what a real spec needs
(the shipped specs nest at most 4 deep and expand to under 100 layers), so reaching one
means a typo or hostile input; the diagnostic names the limit so the user knows which.
Torch-free, like every front-end module.
"""

from __future__ import annotations

from dataclasses import dataclass

from tapsc.errors import Diagnostic
from tapsc.language.ir import Span


@dataclass(frozen=True)
class Limit:
    """One bound on the input: its value, what it counts, and the code of its diagnostic."""

    code: str
    value: int
    what: str  # what the value counts, completing "at most {value:,} {what}"
    help: str

    def diagnostic(self, message: str, span: Span | None, label: str | None = None) -> Diagnostic:
        """A diagnostic for input beyond this limit; its message always states the limit."""
        return Diagnostic(code=self.code, message=f"{message} (the limit is {self.value:,} {self.what})",
                          span=span, label=label, help=self.help)


SOURCE_BYTES = Limit(
    "spec-too-large", 200_000, "bytes per spec, its includes counted",
    "a spec is a few kilobytes; check that the right files are named and not included over and over")
NUMBER_MAGNITUDE = Limit(
    "number-too-large", 10**15, "in magnitude",
    "no setting needs a number this large; check for extra digits or a wrong exponent")
NESTING_DEPTH = Limit(
    "nesting-too-deep", 50, "levels of brackets, operators, blocks and includes",
    "flatten the expression or the nested `repeat`/`residual`/block calls")
LAYER_COUNT = Limit(
    "too-many-layers", 10_000, "layers after expanding blocks and `repeat`",
    "check the counts of `repeat` and how often blocks call each other")
REPEAT_COUNT = Limit(
    "repeat-too-large", 10_000, "repetitions",
    "a `repeat` count is the number of copies of its body, e.g. `repeat 2 { conv(64, kernel = 3); relu }`")
EXPANSION_STEPS = Limit(
    "expansion-too-large", 100_000, "statements expanded per model",
    "nested `repeat`s multiply: `repeat 100 { repeat 100 { ... } }` expands its body 10,000 times")
PARAMETER_COUNT = Limit(
    "too-many-parameters", 1_000_000_000, "parameters",
    "the largest shipped network (CNN7 on TinyImageNet) has 52 million; check the widths of "
    "`conv` and `linear` and whether a `flatten` comes before a huge `linear`")

ALL = (SOURCE_BYTES, NUMBER_MAGNITUDE, NESTING_DEPTH, LAYER_COUNT, REPEAT_COUNT, EXPANSION_STEPS, PARAMETER_COUNT)
