"""Rendering of user-facing diagnostics, ruff style.

```
error[unknown-setting]: unknown setting `lrate` in `optimizer`
 --> specs/cifar.taps:7:3
  |
7 |   lrate 5e-4
  |   ^^^^^ not an optimizer setting
  = help: did you mean `lr`?
```

The renderer needs the source text of each span's file. Every text the spec
loader parses is registered here (`register_source`), including the virtual
files made for `--set` overrides; files not registered are read from disk.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Iterable, Sequence

from tapsc.errors import Diagnostic, TapscError
from tapsc.language.ir import Span

__all__ = ["Diagnostic", "TapscError", "did_you_mean", "register_source", "render_diagnostic", "render_error"]

MAX_SHOWN = 20  # diagnostics rendered before "... and N more"
MAX_LINE = 160  # characters of a source line shown; a longer line is cut around the caret

_SOURCES: dict[str, str] = {}


def register_source(filename: str, text: str) -> None:
    """Remember ``text`` as the content of ``filename`` for rendering spans."""
    _SOURCES[filename] = text


def _source_line(filename: str, line: int) -> str | None:
    text = _SOURCES.get(filename)
    if text is None:
        try:
            text = Path(filename).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        _SOURCES[filename] = text
    lines = text.splitlines()
    return lines[line - 1] if 0 < line <= len(lines) else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A help line: the closest choice if one is close, then every valid choice."""
    return _did_you_mean(word, tuple(sorted(set(choices))))


@functools.lru_cache(maxsize=256)  # a block body expanded many times repeats its mistakes
def _did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    listed = ", ".join(f"`{c}`" for c in choices)
    if close:
        return f"did you mean `{close[0]}`? valid: {listed}"
    return f"expected one of {listed}"


def _caret(span: Span, line_text: str) -> tuple[int, int]:
    start = span.column - 1
    if span.end_line == span.line and span.end_column > span.column:
        width = span.end_column - span.column
    else:
        width = max(1, len(line_text.rstrip()) - start)
    return start, max(1, width)


def _clip(line_text: str, start: int, width: int) -> tuple[str, int, int]:
    """At most MAX_LINE characters of the line around the caret, `...` marking each cut."""
    if len(line_text) <= MAX_LINE:
        return line_text, start, width
    begin = max(0, start - MAX_LINE // 3)
    end = min(len(line_text), begin + MAX_LINE)
    head = "..." if begin > 0 else ""
    tail = "..." if end < len(line_text) else ""
    width = max(1, min(width, end - start))
    return head + line_text[begin:end] + tail, start - begin + len(head), width


def render_diagnostic(diagnostic: Diagnostic) -> str:
    """One diagnostic as text: header, location, source line with carets, help."""
    out = [f"{diagnostic.severity}[{diagnostic.code}]: {diagnostic.message}"]
    span = diagnostic.span
    if span is None:
        if diagnostic.help:
            out.append(f"  = help: {diagnostic.help}")
        return "\n".join(out)
    line_text = _source_line(span.file, span.line)
    gutter = " " * len(str(span.line))
    out.append(f"{gutter}--> {span.file}:{span.line}:{span.column}")
    if line_text is not None:
        line_text = line_text.replace("\t", " ")
        start, width = _caret(span, line_text)
        line_text, start, width = _clip(line_text, start, width)
        label = f" {diagnostic.label}" if diagnostic.label else ""
        out.append(f"{gutter} |")
        out.append(f"{span.line} | {line_text}")
        out.append(f"{gutter} | {' ' * start}{'^' * width}{label}")
    if diagnostic.help:
        out.append(f"{gutter} = help: {diagnostic.help}")
    return "\n".join(out)


def render_diagnostics(diagnostics: Sequence[Diagnostic], limit: int = MAX_SHOWN) -> str:
    """Several diagnostics separated by blank lines, capped with "... and N more"."""
    parts = [render_diagnostic(d) for d in diagnostics[:limit]]
    if len(diagnostics) > limit:
        parts.append(f"... and {len(diagnostics) - limit} more")
    if len(diagnostics) > 1:
        warnings = sum(d.severity == "warning" for d in diagnostics)
        counts = [f"{n} {word}{'s' if n != 1 else ''}" for n, word in
                  ((len(diagnostics) - warnings, "error"), (warnings, "warning")) if n]
        parts.append(", ".join(counts))
    return "\n\n".join(parts)


def render_error(error: TapscError) -> str:
    """Render every diagnostic of a TapscError (the CLI prints this, then exits 1)."""
    return render_diagnostics(error.diagnostics)
