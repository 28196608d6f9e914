"""The error types every stage raises for user mistakes (no rendering here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tapsc.language.ir import Span


@dataclass(frozen=True)
class Diagnostic:
    """One user-facing problem: a short code, a message, where, and how to fix it."""

    code: str  # kebab-case, e.g. "unexpected-token", "split-out-of-range"
    message: str
    span: Span | None = None
    help: str | None = None
    label: str | None = None  # text printed after the caret
    severity: str = "error"


class TapscError(Exception):
    """A user mistake. The CLI renders its diagnostics and exits with code 1."""

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic | str, code: str = "error"):
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic(code=code, message=diagnostics)]
        elif isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        # The same mistake met again (a block body or `repeat` expanded n times) is reported once.
        self.diagnostics: list[Diagnostic] = list(dict.fromkeys(diagnostics))
        super().__init__("; ".join(d.message for d in self.diagnostics))


class UnsupportedExport(TapscError):
    """A target format cannot express part of the network or property."""

    def __init__(self, message: str, help: str | None = None):
        super().__init__(Diagnostic(code="unsupported-export", message=message, help=help))
