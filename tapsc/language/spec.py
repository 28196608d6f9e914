"""The spec pipeline: .taps text -> a validated, checked `ir.Spec`.

1. parse every file (tapsc/language/syntax.py);
2. build the settings document (tapsc/language/sections.py): the built-in library blocks
   first, then the file, whose `include`s apply their file where they stand;
   later declarations override earlier ones field by field;
3. apply `--set path=value` overrides (tapsc/language/overrides.py);
4. lower: expand blocks and `repeat` (tapsc/language/blocks.py), fill defaults that depend
   on other sections (input shape, phase starts, marker split);
5. validate with pydantic, mapping each error back to the span of its value;
6. run the named semantic checks (tapsc/language/check.py).

Each pass reports all its errors together as one `TapscError`.
"""

from __future__ import annotations

import codecs
import errno
import importlib.resources
from pathlib import Path
from typing import Sequence

from pydantic import ValidationError

from tapsc.errors import Diagnostic, TapscError
from tapsc.language import ir, limits
from tapsc.language.build_ir import BlockDef, Table
from tapsc.language.diagnostics import register_source
from tapsc.language.ir import Span
from tapsc.language.syntax import String, parse_file

__all__ = ["load_spec", "load_spec_text", "build_document", "library_files"]

def library_files() -> list[tuple[str, str]]:
    """(display name, text) of every built-in library file, sorted by name."""
    folder = importlib.resources.files("tapsc") / "library"
    entries = sorted((e for e in folder.iterdir() if e.name.endswith(".taps")), key=lambda e: e.name)
    return [(f"<library>/{e.name}", e.read_text(encoding="utf-8")) for e in entries]


def load_spec(path: str | Path, overrides: Sequence[str] = (), warnings: list[Diagnostic] | None = None) -> ir.Spec:
    """Load, validate and check the spec at ``path``.

    Args:
        path: a .taps file; its includes resolve relative to its folder.
        overrides: ``--set`` strings such as ``"optimizer.lr=1e-3"``.
        warnings: when given, the checks' warnings (severity "warning": legal but
            probably unintended, e.g. a ReLU after the logits) are appended to it.

    Raises:
        TapscError: every user mistake, with spans (a missing file included).
    """
    path = Path(path)
    try:
        text = read_source(path, str(path))
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise TapscError(Diagnostic(code="file-not-found", message=f"cannot read spec `{path}`",
                                    help=getattr(error, "strerror", None) or str(error))) from None
    return load_spec_text(text, str(path), overrides, warnings)


def read_source(path: Path, filename: str, budget: int = limits.SOURCE_BYTES.value) -> str:
    """The text of a spec file: UTF-8, an optional byte-order mark dropped.

    Reads at most ``budget`` bytes (plus one, to tell; `limits.SOURCE_BYTES` less what
    the spec's other files used), so `/dev/zero` or a misnamed data file ends quickly,
    and never opens what is not a regular file (a FIFO would block).

    Raises:
        OSError: the file is missing, unreadable or not a regular file.
        TapscError: ``invalid-encoding`` at the first byte that is not UTF-8, or
            ``spec-too-large``; both with the line and column.
    """
    if path.exists() and not path.is_file():
        raise OSError(errno.EISDIR if path.is_dir() else errno.EINVAL, "not a regular file")
    with open(path, "rb") as handle:
        data = handle.read(max(0, budget) + 1)
    data = data.removeprefix(codecs.BOM_UTF8)
    if len(data) > budget:
        _register_bytes(filename, data)
        raise TapscError(limits.SOURCE_BYTES.diagnostic(
            f"`{filename}` makes the spec too large", _byte_span(filename, data, max(0, budget)),
            label="the limit is reached here"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        _register_bytes(filename, data)
        raise TapscError(Diagnostic(
            code="invalid-encoding",
            message=f"`{filename}` is not UTF-8 text (byte 0x{data[error.start]:02X}: {error.reason})",
            span=_byte_span(filename, data, error.start), label="not UTF-8",
            help="save the file as UTF-8 (.taps files are UTF-8 text)")) from None


def _register_bytes(filename: str, data: bytes) -> None:
    """Show the lines of a file that does not decode (bad bytes as U+FFFD) in its diagnostic."""
    register_source(filename, data.decode("utf-8", errors="replace"))


def _byte_span(filename: str, data: bytes, offset: int) -> Span:
    """The span of the character at byte ``offset``; everything before it is valid UTF-8."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    line = data.count(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return Span(file=filename, line=line, column=column, end_line=line, end_column=column + 1)


def load_spec_text(text: str, filename: str = "<string>", overrides: Sequence[str] = (),
                   warnings: list[Diagnostic] | None = None) -> ir.Spec:
    """Like `load_spec` for spec text; includes resolve relative to ``filename``'s folder.

    >>> spec = load_spec_text('''
    ... data mnist { batch 256 }
    ... model { flatten; linear(100); relu; linear(10) }
    ... perturbation linf { eps 0.1 }
    ... method { phase ibp }
    ... optimizer adam { epochs 10 }
    ... ''')
    >>> spec.model.input_shape, spec.data.batch
    ((1, 28, 28), 256)
    """
    document, blocks, main_span = build_document(text, filename, overrides)
    spec = validate(document, blocks, main_span)
    return checked(spec, warnings)


def with_epochs(spec: ir.Spec, epochs: int, warnings: list[Diagnostic] | None = None):
    """``spec`` rescaled to ``epochs`` epochs (`tapsc.language.schedule.rescale_epochs`), checked again.

    Returns:
        The `tapsc.language.schedule.Rescaled` (its ``spec`` and a summary of the changes).

    Raises:
        TapscError: too few epochs for the phases, or a check the rescaled spec fails.
    """
    from tapsc.language.schedule import rescale_epochs

    rescaled = rescale_epochs(spec, epochs)
    checked(rescaled.spec, warnings)
    return rescaled


def checked(spec: ir.Spec, warnings: list[Diagnostic] | None = None) -> ir.Spec:
    """``spec`` after the semantic checks (tapsc/language/check.py); their warnings go to ``warnings``.

    Raises:
        TapscError: the errors among the checks' diagnostics.
    """
    from tapsc.language.check import errors_and_warnings, run_checks

    errors, found = errors_and_warnings(run_checks(spec))
    if errors:  # the warnings too: a ReLU after the logits explains an empty classifier
        raise TapscError(errors + found)
    if warnings is not None:
        warnings.extend(found)
    return spec


# ---------------------------------------------------------------- building the document


class _Loader:
    def __init__(self) -> None:
        self.doc = Table()
        self.blocks: dict[str, BlockDef] = {}
        self.problems: list[Diagnostic] = []
        self.stack: list[Path] = []
        self.bytes_read = 0  # of the spec and its includes, against limits.SOURCE_BYTES

    def apply_text(self, text: str, filename: str, library: bool = False) -> None:
        from tapsc.language.sections import apply_file

        register_source(filename, text)
        try:
            statements = parse_file(text, filename)
        except TapscError as error:
            self.problems.extend(error.diagnostics)
            return
        base = Path(filename).resolve().parent if not filename.startswith("<") else Path.cwd()
        apply_file(statements, self.doc, self.blocks, self.problems, lambda s: self.include(s, base), library)

    def include(self, target: String, base: Path) -> None:
        if len(self.stack) > limits.NESTING_DEPTH.value:
            too_deep = limits.NESTING_DEPTH.diagnostic("includes are nested too deeply", target.span)
            self.problems.append(too_deep)
            return
        try:
            path = (base / target.value).resolve()
        except (OSError, ValueError):  # ValueError: a NUL byte in the path
            self.problems.append(Diagnostic(code="include-not-found", message=f"cannot read `{target.value}`",
                                            span=target.span, help="not a valid file path"))
            return
        if path in self.stack:
            chain = " -> ".join(p.name for p in [*self.stack[self.stack.index(path):], path])
            self.problems.append(Diagnostic(code="include-cycle", message=f"`{target.value}` includes itself",
                                            span=target.span, help=f"include chain: {chain}"))
            return
        try:
            text = read_source(path, _display(path), limits.SOURCE_BYTES.value - self.bytes_read)
            self.bytes_read += len(text.encode("utf-8"))
        except TapscError as error:
            self.problems.extend(error.diagnostics)
            return
        except (OSError, ValueError):
            self.problems.append(Diagnostic(code="include-not-found", message=f"cannot read `{target.value}`",
                                            span=target.span, help=f"looked for {path} (relative to the including "
                                            "file's folder)"))
            return
        self.stack.append(path)
        try:
            self.apply_text(text, _display(path))
        finally:
            self.stack.pop()


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def build_document(text: str, filename: str, overrides: Sequence[str] = ()):
    """Parse and merge library, file, includes and overrides; raises on any problem."""
    from tapsc.language.overrides import apply_override

    text = text.removeprefix("\ufeff")  # a byte-order mark is not part of the spec
    loader = _Loader()
    encoded = text.encode("utf-8")
    loader.bytes_read = len(encoded)
    if loader.bytes_read > limits.SOURCE_BYTES.value:  # text given directly, not read by read_source
        register_source(filename, text)
        span = _byte_span(filename, encoded, limits.SOURCE_BYTES.value)
        raise TapscError(limits.SOURCE_BYTES.diagnostic(f"`{filename}` is too large", span))
    for name, library_text in library_files():
        loader.apply_text(library_text, name, library=True)
    if filename not in ("<string>",) and not filename.startswith("<"):
        loader.stack.append(Path(filename).resolve())
    loader.apply_text(text, filename)
    if not loader.problems:
        for index, override in enumerate(overrides, start=1):
            apply_override(loader.doc, override, f"<--set {index}>", loader.problems)
    if loader.problems:
        raise TapscError(loader.problems)
    # A missing section is reported at the end of the main file, where it could be added.
    lines = text.splitlines() or [""]
    end = len(lines[-1]) + 1
    main_span = Span(file=filename, line=len(lines), column=end, end_line=len(lines), end_column=end + 1)
    return loader.doc, loader.blocks, main_span


# ---------------------------------------------------------------- lowering and validation


def validate(doc: Table, blocks: dict[str, BlockDef], main_span: Span) -> ir.Spec:
    """Lower the document and validate it against the IR schema."""
    from tapsc.language.lowering import lower, schema_diagnostics

    plain, spans, problems = lower(doc, blocks)
    if problems:
        raise TapscError(problems)
    try:
        spec = ir.Spec.model_validate(plain)
    except ValidationError as error:
        raise TapscError(schema_diagnostics(error, spans, main_span)) from None
    _attach_field_spans(spec, (), spans)
    return spec


def _attach_field_spans(node: object, loc: tuple, spans: dict) -> None:
    """Give every IR node the spans of its fields' values (``Node.span_of``), so a check can
    point at `eps 2` (or at the `--set` that wrote it) rather than at the whole section."""
    if isinstance(node, ir.Node):
        fields = {name: spans[(*loc, name)] for name in type(node).model_fields if (*loc, name) in spans}
        node._field_spans.update(fields)
        for name in type(node).model_fields:
            _attach_field_spans(getattr(node, name), (*loc, name), spans)
    elif isinstance(node, tuple):
        for index, item in enumerate(node):
            _attach_field_spans(item, (*loc, index), spans)
