"""Syntax nodes -> the settings document: what each statement of each section means.

The document is a tree of `Table`s (sections, nested settings) whose leaves are
`Val`s (a plain Python value and the span it came from). Files, includes and
`--set` overrides each build a fragment; `merge` lays a later fragment over an
earlier one field by field (a `Table` merges, a `Val` or list replaces). Model
layers stay unexpanded (`LayerSource`) until every block is known; see
tapsc/language/blocks.py. Setting names follow the IR field names, plus a few readable
forms (`decay 0.2 at (120, 140)`, `schedule smooth from 1 to 81`, `phase taps until 80`).
"""

from __future__ import annotations

import itertools
import operator
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from tapsc.errors import Diagnostic
from tapsc.language import ir, limits
from tapsc.language.diagnostics import did_you_mean
from tapsc.language.ir import Span
from tapsc.language.syntax import (
    BinaryOp,
    Group,
    Keyword,
    Name,
    Negate,
    Number,
    Statement,
    String,
    Value,
    Word,
)

# ---------------------------------------------------------------- the document

_ORDER = itertools.count()


@dataclass
class Val:
    """A leaf setting: its plain value, where it was written, and when (for `split`)."""

    value: Any
    span: Span | None
    order: int = field(default_factory=lambda: next(_ORDER))


class Table(dict):
    """A section or nested setting; ``span`` is the statement that last wrote it."""

    def __init__(self, *args, span: Span | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.span = span
        self.order = next(_ORDER)


@dataclass
class LayerSource:
    """Model layer statements, expanded once every block is known."""

    statements: tuple[Statement, ...]
    span: Span
    library: bool = False
    order: int = field(default_factory=lambda: next(_ORDER))


@dataclass
class BlockDef:
    """``block name(param, param = default) { layers }``."""

    name: str
    params: tuple[tuple[str, Value | None, Span], ...]
    body: tuple[Statement, ...]
    span: Span
    library: bool = False


def merge(base: Table, update: Table) -> Table:
    """Lay ``update`` over ``base`` in place: tables merge key by key, anything else replaces."""
    for key, value in update.items():
        if isinstance(value, Table) and isinstance(base.get(key), Table):
            merge(base[key], value)
            base[key].span = value.span or base[key].span
        else:
            base[key] = value
    return base


class Problem(Exception):
    """One user mistake found while interpreting a statement (caught per statement)."""

    def __init__(self, code: str, message: str, span: Span | None, help: str | None = None,
                 label: str | None = None):
        super().__init__(message)
        self.diagnostic = Diagnostic(code=code, message=message, span=span, help=help, label=label)

    @classmethod
    def of(cls, diagnostic: Diagnostic) -> "Problem":
        """A Problem carrying a ready-made diagnostic (e.g. one of `tapsc.language.limits`)."""
        return cls(diagnostic.code, diagnostic.message, diagnostic.span, diagnostic.help, diagnostic.label)


# ---------------------------------------------------------------- values


def plain(value: Value, env: dict[str, Any] | None = None, scalar: bool = True) -> Any:
    """The Python value of a syntax value; names resolve through ``env`` when given.

    A group of one item is that item where a scalar is expected (``(width + 1)``).
    Outside blocks (``env`` None) a bare name is a string such as `smooth` or `adam`.
    """
    if isinstance(value, (Number, String)):
        return value.value
    if isinstance(value, Name):
        return _name_value(value, env)
    if isinstance(value, Group):
        if value.keywords:
            raise Problem("unexpected-keyword", f"`{value.keywords[0].key} = ...` is not allowed here",
                          value.keywords[0].span, help="a list of values is written `(a, b, c)`")
        if scalar and len(value.items) == 1:
            return plain(value.items[0], env)
        return [plain(item, env) for item in value.items]
    if isinstance(value, Negate):
        return -_number(value.operand, env)
    if isinstance(value, BinaryOp):
        left, right = _number(value.left, env), _number(value.right, env)
        if value.op == "/" and right == 0:
            raise Problem("division-by-zero", "division by zero", value.span)
        result = _ARITHMETIC[value.op](left, right)  # only the written operation: `x - 0` must not divide
        if not abs(result) <= limits.NUMBER_MAGNITUDE.value:  # also catches inf and nan
            raise Problem.of(limits.NUMBER_MAGNITUDE.diagnostic(f"`{value.op}` gives a number too large",
                                                               value.span))
        return int(result) if isinstance(result, float) and value.op != "/" and result.is_integer() else result
    raise AssertionError(f"unknown syntax value {value!r}")


_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_CONSTANTS = {"true": True, "false": False, "none": None}


def _name_value(name: Name, env: dict[str, Any] | None) -> Any:
    if env is not None and name.value in env:
        return env[name.value]
    if name.value in _CONSTANTS:
        return _CONSTANTS[name.value]
    if env is not None:
        raise Problem("unknown-name", f"unknown name `{name.value}`", name.span,
                      help=did_you_mean(name.value, env) if env else "no block parameters are in scope here")
    return name.value


def _number(value: Value, env: dict[str, Any] | None) -> int | float:
    result = plain(value, env)
    if isinstance(result, bool) or not isinstance(result, (int, float)):
        raise Problem("not-a-number", f"expected a number, found `{_text(value)}`", value.span,
                      help="arithmetic (`* / + -`) works on numbers and block parameters")
    return result


def _text(value: Value | Word) -> str:
    if isinstance(value, (Number, String, Name)):
        return str(value.value)
    return "..."


def as_tuple(values: Sequence[Value], env: dict[str, Any] | None = None) -> list[Any]:
    """A tuple setting: ``(a, b)``, a single ``a``, or several words ``a b c``."""
    if len(values) == 1 and isinstance(values[0], Group):
        return plain(values[0], env, scalar=False)
    return [plain(v, env) for v in values]


def span_of(values: Sequence[Value | Word]) -> Span | None:
    """The span from the first to the last of ``values``."""
    if not values:
        return None
    first, last = values[0].span, values[-1].span
    return Span(file=first.file, line=first.line, column=first.column,
                end_line=last.end_line, end_column=last.end_column)


# ---------------------------------------------------------------- binding words


@dataclass
class Bound:
    """A statement's words sorted into positional values and named values."""

    positional: list[Value]
    named: dict[str, tuple[Value, Span]]


FILLERS = ("epoch", "epochs")  # `until epoch 80` reads like the paper; the word is optional


def bind(statement: Statement, keywords: Iterable[str], call: bool = False,
         aliases: dict[str, str] | None = None, what: str | None = None) -> Bound:
    """Sort ``statement``'s words: ``key value``, ``key = value`` and positional values.

    ``call``: a group right after the name holds arguments (``conv(64, kernel = 3)``).
    A keyword followed by a group takes the group as its value (``at (120, 140)``).
    """
    keywords = set(keywords)
    aliases = aliases or {}
    words = list(statement.words)
    bound = Bound(positional=[], named={})
    if call and words and isinstance(words[0], Group):
        group = words.pop(0)
        bound.positional.extend(group.items)
        words = list(group.keywords) + words
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if isinstance(word, Keyword):
            _add_named(bound, word.key, word.value, word.key_span, keywords, aliases, statement, what)
        elif isinstance(word, Name) and (word.value in keywords or word.value in aliases):
            while index < len(words) and isinstance(words[index], Name) and words[index].value in FILLERS:
                index += 1
            if index >= len(words):
                raise Problem("missing-value", f"`{word.value}` needs a value", word.span,
                              help=f"write `{word.value} VALUE`")
            _add_named(bound, word.value, words[index], word.span, keywords, aliases, statement, what)
            index += 1
        else:
            bound.positional.append(word)
    return bound


def _add_named(bound: Bound, key: str, value: Value, key_span: Span, keywords: set[str],
               aliases: dict[str, str], statement: Statement, what: str | None) -> None:
    key = aliases.get(key, key)
    if key not in keywords:
        raise Problem("unknown-argument", f"`{statement.name}` has no argument `{key}`", key_span,
                      help=did_you_mean(key, keywords | set(aliases)) if keywords else
                      f"`{statement.name}` takes no named arguments")
    if isinstance(value, Keyword):
        raise Problem("unexpected-keyword", f"expected a value after `{key}`", value.span)
    bound.named[key] = (value, key_span)


def expect_positional(statement: Statement, bound: Bound, names: Sequence[str]) -> dict[str, Value]:
    """Map positional values onto ``names``; too many is an error that lists the arguments."""
    if len(bound.positional) > len(names):
        extra = bound.positional[len(names)]
        if isinstance(extra, Name):
            message = f"unexpected `{extra.value}` in `{statement.name}`"
        else:
            message = f"`{statement.name}` takes {len(names)} positional value(s), found {len(bound.positional)}"
        takes = ", ".join(f"`{n}`" for n in names) or "no positional values"
        raise Problem("unexpected-argument", message, extra.span, help=f"`{statement.name}` takes {takes}")
    values = dict(zip(names, bound.positional))
    for key, (value, _) in bound.named.items():
        values[key] = value
    return values


def no_body(statement: Statement) -> None:
    if statement.body is not None:
        raise Problem("unexpected-block", f"`{statement.name}` takes no `{{ ... }}` block", statement.span)


def need_body(statement: Statement, example: str) -> tuple[Statement, ...]:
    if statement.body is None:
        raise Problem("missing-block", f"`{statement.name}` needs a `{{ ... }}` block", statement.name_span,
                      help=f"for example `{example}`")
    return statement.body


# ---------------------------------------------------------------- schema-driven settings


def field_names(model: type[ir.Node]) -> list[str]:
    """Settable fields of an IR class (not `span` or the `kind` tag)."""
    return [name for name in model.model_fields if name not in ("span", "kind")]


def is_tuple_field(model: type[ir.Node], name: str) -> bool:
    annotation = model.model_fields[name].annotation
    return typing.get_origin(annotation) is tuple


def setting_value(statement: Statement, model: type[ir.Node], name: str) -> Val:
    """The value of a plain ``name value`` setting, as a tuple when the IR field is one."""
    no_body(statement)
    words = [w for w in statement.words]
    if not words:
        raise Problem("missing-value", f"`{statement.name}` needs a value", statement.name_span,
                      help=f"write `{statement.name} VALUE`")
    for word in words:
        if isinstance(word, Keyword):
            raise Problem("unexpected-keyword", f"`{statement.name}` takes a value, not `{word.key} = ...`",
                          word.span)
    if is_tuple_field(model, name):
        return Val(as_tuple(words), span_of(words))
    if len(words) > 1:
        raise Problem("unexpected-argument", f"`{statement.name}` takes one value, found {len(words)}",
                      words[1].span, help="write a list of values as `(a, b)`")
    return Val(plain(words[0]), words[0].span)


Handler = Callable[[Table, Statement], None]


def settings(target: Table, statements: Sequence[Statement], model: type[ir.Node], where: str,
             special: dict[str, Handler] | None = None, aliases: dict[str, str] | None = None,
             problems: list[Diagnostic] | None = None) -> Table:
    """Apply ``name value`` settings to ``target``; ``special`` names get their own handler.

    Each bad statement becomes one diagnostic in ``problems`` and the rest still apply.
    """
    special = special or {}
    aliases = aliases or {}
    valid = set(field_names(model)) | set(special) | set(aliases)
    for statement in statements:
        try:
            name = aliases.get(statement.name, statement.name)
            if name in special:
                special[name](target, statement)
            elif name in field_names(model):
                target[name] = setting_value(statement, model, name)
            else:
                raise Problem("unknown-setting", f"unknown setting `{statement.name}` in {where}",
                              statement.name_span, help=did_you_mean(statement.name, valid))
        except Problem as problem:
            if problems is None:
                raise
            problems.append(problem.diagnostic)
    return target
