"""`--set path=value` overrides, applied after every file is merged.

A path names a section, a setting and optionally one nested field:
`optimizer.lr=1e-3`, `perturbation.eps=8/255`, `split.relus_in_classifier=3`,
`perturbation.schedule.end_epoch=41`, `method.taps.weight=2` (phases by kind),
`method.taps.attack.steps=10`. The value uses the grammar's value syntax. Each
override becomes the statement one would have written in the file, so it runs
through the same checks and gets the same diagnostics (with spans in the
override text, shown as the virtual file `<--set N>`).
"""

from __future__ import annotations

import re

from tapsc.errors import Diagnostic, TapscError
from tapsc.language.build_ir import Problem, Table, merge
from tapsc.language.diagnostics import did_you_mean, register_source
from tapsc.language.ir import Span
from tapsc.language.sections import PHASE_CLASSES, SECTION_BUILDERS, SECTIONS, phase_settings
from tapsc.language.syntax import Keyword, Statement, Value, parse_value

_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")
_PHASE_INDEX = re.compile(r"method\.phase\[(\d+)\]\.")  # method.phase[2].attack.steps: one phase by position
_EXAMPLE = "write `--set section.setting=value`, e.g. `--set optimizer.lr=1e-3`"


def _span(filename: str, start: int, end: int) -> Span:
    return Span(file=filename, line=1, column=start + 1, end_line=1, end_column=max(end, start + 1) + 1)


def apply_override(doc: Table, text: str, filename: str, problems: list[Diagnostic]) -> None:
    """Apply one ``path=value`` override to ``doc``; problems are appended, not raised."""
    register_source(filename, text)
    path, sep, value_text = text.partition("=")
    path = path.strip()
    indexed = _PHASE_INDEX.match(path)
    if sep and indexed:
        _apply_indexed_phase(doc, text, indexed, value_text, filename, problems)
        return
    if not sep or not _PATH.match(path) or "." not in path:
        problems.append(Diagnostic(code="bad-override", message=f"cannot read override `{text}`",
                                   span=_span(filename, 0, len(text)), help=_EXAMPLE))
        return
    parts, spans, offset = path.split("."), [], 0
    for part in parts:
        start = text.index(part, offset)
        spans.append(_span(filename, start, start + len(part)))
        offset = start + len(part)
    try:
        value = parse_value(" " * (len(text) - len(value_text)) + value_text, filename)
        _apply(doc, parts, spans, value, problems)
    except TapscError as error:
        problems.extend(error.diagnostics)
    except Problem as problem:
        problems.append(problem.diagnostic)


def _apply_indexed_phase(doc: Table, text: str, indexed: re.Match, value_text: str, filename: str,
                         problems: list[Diagnostic]) -> None:
    """`method.phase[2].attack.steps=8`: one phase, counted from 0 in the order written."""
    offset = len(text) - len(text.lstrip())
    index_span = _span(filename, offset + indexed.start(1) - 1, offset + indexed.end(1) + 1)
    rest = text.partition("=")[0].strip()[indexed.end():]
    if not _PATH.match(rest):
        problems.append(Diagnostic(code="bad-override", message=f"cannot read override `{text}`",
                                   span=_span(filename, 0, len(text)),
                                   help="write `--set method.phase[N].setting=value`, e.g. "
                                        "`--set method.phase[2].attack.steps=8`"))
        return
    parts, spans, position = rest.split("."), [], offset + indexed.end()
    for part in parts:
        start = text.index(part, position)
        spans.append(_span(filename, start, start + len(part)))
        position = start + len(part)
    method = doc.get("method")
    phases = method["phases"].value if isinstance(method, Table) and "phases" in method else []
    number = int(indexed.group(1))
    try:
        if number >= len(phases):
            listed = ", ".join(f"`phase[{i}]` {phase['kind'].value}" for i, phase in enumerate(phases))
            raise Problem("unknown-phase", f"the method has no phase {number}: it has {len(phases)} "
                          f"phase(s), counted from 0", index_span, help=f"valid: {listed}" if phases else
                          "the method has no phases")
        value = parse_value(" " * (len(text) - len(value_text)) + value_text, filename)
        phase = phases[number]
        phase_settings(phase, phase["kind"].value, [_setting(parts, spans, value)], problems)
    except TapscError as error:
        problems.extend(error.diagnostics)
    except Problem as problem:
        problems.append(problem.diagnostic)


def _setting(parts: list[str], spans: list[Span], value: Value) -> Statement:
    """`a=v` -> `a v`; `a.b=v` -> `a b = v` (a nested field such as `schedule.end_epoch`)."""
    whole = Span(file=spans[0].file, line=1, column=spans[0].column, end_line=1, end_column=value.span.end_column)
    if len(parts) == 1:
        return Statement(parts[0], spans[0], (value,), None, whole)
    if len(parts) == 2:
        keyword = Keyword(parts[1], spans[1], value, whole)
        return Statement(parts[0], spans[0], (keyword,), None, whole)
    raise Problem("bad-override", "an override path goes at most two levels below a section", spans[3],
                  help=_EXAMPLE)


def _apply(doc: Table, parts: list[str], spans: list[Span], value: Value, problems: list[Diagnostic]) -> None:
    section = parts[0]
    if section not in SECTIONS:
        raise Problem("unknown-section", f"unknown section `{section}` in override", spans[0],
                      help=did_you_mean(section, SECTIONS))
    if section == "method" and parts[1] in PHASE_CLASSES:
        _apply_phase(doc, parts, spans, value, problems)
        return
    if section == "split":
        if len(parts) != 2:
            raise Problem("bad-override", "write `--set split.relus_in_classifier=N`", spans[0])
        statement = Statement("split", spans[0], (Keyword(parts[1], spans[1], value, spans[1]),), None, spans[0])
        doc["split"] = SECTION_BUILDERS["split"](statement, problems)
        return
    inner = _setting(parts[1:], spans[1:], value)
    statement = Statement(section, spans[0], (), (inner,), inner.span)
    fragment = SECTION_BUILDERS[section](statement, problems)
    doc[section] = merge(doc[section], fragment) if isinstance(doc.get(section), Table) else fragment


def _apply_phase(doc: Table, parts: list[str], spans: list[Span], value: Value, problems: list[Diagnostic]) -> None:
    """`method.taps.weight=2`: change that setting in every phase of that kind."""
    kind = parts[1]
    method = doc.get("method")
    phases = method["phases"].value if isinstance(method, Table) and "phases" in method else []
    matching = [phase for phase in phases if phase["kind"].value == kind]
    if not matching:
        present = [phase["kind"].value for phase in phases]
        raise Problem("unknown-phase", f"the method has no `{kind}` phase", spans[1],
                      help=did_you_mean(kind, present) if present else "the method has no phases")
    if len(parts) < 3:
        raise Problem("bad-override", f"name a setting of the `{kind}` phase", spans[1],
                      help=f"e.g. `--set method.{kind}.until=80`")
    inner = _setting(parts[2:], spans[2:], value)
    for phase in matching:
        phase_settings(phase, kind, [inner], problems)
