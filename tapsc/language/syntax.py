"""Text -> syntax tree: the Lark parser for .taps files and the syntax-tree nodes.

`parse_tree` gives the raw `lark.Tree` (what `tapsc show --stage tree` prints);
`parse_file` gives a tuple of `Statement`s, small frozen dataclasses with spans
that `tapsc/language/build_ir.py` interprets section by section. Syntax errors become
`TapscError`s with one `Diagnostic` each (Lark's text never reaches the user).
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from tapsc.errors import Diagnostic, TapscError
from tapsc.language import limits
from tapsc.language.ir import Span

# ---------------------------------------------------------------- syntax nodes


@dataclass(frozen=True)
class Number:
    value: int | float
    span: Span


@dataclass(frozen=True)
class String:
    value: str
    span: Span


@dataclass(frozen=True)
class Name:
    value: str
    span: Span


@dataclass(frozen=True)
class Keyword:
    """``key = value`` inside a group, or as a word of a statement."""

    key: str
    key_span: Span
    value: "Value"
    span: Span


@dataclass(frozen=True)
class Group:
    """``( ... )``: a tuple, a parenthesised value or the arguments of a call."""

    items: tuple["Value", ...]
    keywords: tuple[Keyword, ...]
    span: Span


@dataclass(frozen=True)
class BinaryOp:
    op: str  # one of + - * /
    left: "Value"
    right: "Value"
    span: Span


@dataclass(frozen=True)
class Negate:
    operand: "Value"
    span: Span


Value = Union[Number, String, Name, Group, BinaryOp, Negate]
Word = Union[Value, Keyword]


@dataclass(frozen=True)
class Statement:
    """``name word ... { body }``; ``body`` is None when there are no braces."""

    name: str
    name_span: Span
    words: tuple[Word, ...]
    body: tuple["Statement", ...] | None
    span: Span


# ---------------------------------------------------------------- the parser


def grammar_text() -> str:
    """The grammar shipped in the package (``tapsc.grammar/taps.lark``).

    An editable install maps only the ``tapsc`` package, so the grammar is then
    read from the source tree's top-level ``grammar/`` folder instead.
    """
    try:
        return (importlib.resources.files("tapsc.grammar") / "taps.lark").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        source_tree = Path(__file__).resolve().parents[2] / "grammar" / "taps.lark"
        return source_tree.read_text(encoding="utf-8")


class _TooDeep(Exception):
    """Raised by the post-lexer at the token that nests past `limits.NESTING_DEPTH`."""

    def __init__(self, token: Token):
        super().__init__(str(token))
        self.token = token


_OPERATORS = ("PLUS", "MINUS", "STAR", "SLASH")
_TERM_START = ("NAME", "NUMBER", "STRING", "LPAR")
_TERM_END = ("NAME", "NUMBER", "STRING", "RPAR")


class _Nesting:
    """Bounds the depth of the syntax tree before the parser builds it (every later stage
    walks the tree recursively).

    The depth is at most the open brackets plus, at each bracket level, the operators of
    the expression being read there (`a * b * c` and `- - x` nest one node per operator).
    An expression ends at `,`, `=`, a statement's end, or where the next word starts
    (a value right after a value, as in `crop 32 pad 2`; `name(` is a call, not a new word).
    """

    def __init__(self) -> None:
        self.operators = [0]  # one entry per open bracket
        self.depth = 0  # open brackets plus every entry of `operators`
        self.previous = ""

    def feed(self, token: Token, in_parentheses: bool) -> None:
        kind = token.type
        new_word = kind in _TERM_START and self.previous in _TERM_END and \
            not (kind == "LPAR" and self.previous == "NAME")
        if new_word or kind in ("COMMA", "EQUAL") or kind == "_SEP" and not in_parentheses:
            self.depth -= self.operators[-1]
            self.operators[-1] = 0
        if kind in ("LPAR", "LBRACE"):
            self.operators.append(0)
            self.depth += 1
        elif kind in ("RPAR", "RBRACE") and len(self.operators) > 1:
            self.depth -= 1 + self.operators.pop()
        elif kind in _OPERATORS:
            self.operators[-1] += 1
            self.depth += 1
        self.previous = kind
        if self.depth > limits.NESTING_DEPTH.value:
            raise _TooDeep(token)


class _Separators:
    """Post-lexer: newlines inside parentheses are not separators, and `}` ends a statement;
    it also feeds `_Nesting`."""

    always_accept: tuple[str, ...] = ()

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        nesting = _Nesting()
        after_brace: Token | None = None
        for token in stream:
            if after_brace is not None and token.type not in ("_SEP", "RBRACE"):
                separator = Token.new_borrow_pos("_SEP", ";", after_brace)
                nesting.feed(separator, depth > 0)
                yield separator
            after_brace = token if token.type == "RBRACE" else None
            nesting.feed(token, depth > 0)
            if token.type == "LPAR":
                depth += 1
            elif token.type == "RPAR":
                depth = max(0, depth - 1)
            elif token.type == "_SEP" and depth > 0:
                continue
            yield token


@functools.lru_cache(maxsize=None)
def parser() -> Lark:
    """The LALR parser (built once; ``strict`` turns grammar conflicts into build errors)."""
    return Lark(
        grammar_text(),
        parser="lalr",
        # The basic lexer tokenizes without looking at the parser state, so the
        # post-lexer sees a name right after `}` and can end the statement there.
        lexer="basic",
        strict=True,
        propagate_positions=True,
        maybe_placeholders=True,
        postlex=_Separators(),
        start=["start", "value"],
    )


def parse_tree(text: str, filename: str = "<string>", start: str = "start") -> Tree:
    """Parse ``text`` into a Lark tree; raises TapscError on a syntax error."""
    try:
        return parser().parse(text, start=start)
    except UnexpectedInput as error:
        raise TapscError(syntax_diagnostic(error, text, filename, start)) from None
    except _TooDeep as error:
        raise TapscError(limits.NESTING_DEPTH.diagnostic(
            "this is nested too deeply", token_span(filename, error.token), label="too deep here")) from None


def parse_file(text: str, filename: str = "<string>") -> tuple[Statement, ...]:
    """Parse a whole .taps text into its top-level statements."""
    return _ToNodes(filename).transform(parse_tree(text, filename))


def parse_value(text: str, filename: str = "<--set>") -> Value:
    """Parse one value in the grammar's value syntax (used by ``--set path=value``)."""
    return _ToNodes(filename).transform(parse_tree(text, filename, start="value"))


# ---------------------------------------------------------------- tree -> nodes


def _span(filename: str, meta) -> Span:
    return Span(file=filename, line=meta.line, column=meta.column,
                end_line=meta.end_line, end_column=meta.end_column)


def token_span(filename: str, token: Token) -> Span:
    """The span of one token."""
    return Span(file=filename, line=token.line, column=token.column,
                end_line=token.end_line, end_column=token.end_column)


@v_args(meta=True)
class _ToNodes(Transformer):
    """One method per grammar rule (tests/language checks none is missing)."""

    def __init__(self, filename: str):
        super().__init__()
        self.filename = filename

    def start(self, meta, children):
        return tuple(children)

    def value(self, meta, children):
        return children[0]

    def statement(self, meta, children):
        name, *rest = children
        body = None
        if rest and isinstance(rest[-1], _Body):
            body = rest.pop().statements
        return Statement(name=str(name), name_span=token_span(self.filename, name), words=tuple(rest),
                         body=body, span=_span(self.filename, meta))

    def body(self, meta, children):
        return _Body(tuple(children))

    def pair(self, meta, children):
        key, value = children
        return Keyword(key=str(key), key_span=token_span(self.filename, key), value=value,
                       span=_span(self.filename, meta))

    keyword = pair

    def group(self, meta, children):
        items = tuple(c for c in children if not isinstance(c, Keyword))
        keywords = tuple(c for c in children if isinstance(c, Keyword))
        return Group(items=items, keywords=keywords, span=_span(self.filename, meta))

    def number(self, meta, children):
        span = _span(self.filename, meta)
        return Number(value=number_value(str(children[0]), span), span=span)

    def string(self, meta, children):
        return String(value=unescape(str(children[0])[1:-1]), span=_span(self.filename, meta))

    def name(self, meta, children):
        return Name(value=str(children[0]), span=_span(self.filename, meta))

    def neg(self, meta, children):
        return Negate(operand=children[0], span=_span(self.filename, meta))

    def _binary(op: str):  # noqa: N805 - a method factory used at class creation
        def method(self, meta, children):
            return BinaryOp(op=op, left=children[0], right=children[1], span=_span(self.filename, meta))
        return method

    add, sub, mul, div = _binary("+"), _binary("-"), _binary("*"), _binary("/")

    def transform(self, tree):
        try:
            return super().transform(tree)
        except VisitError as error:  # a bug in a method, not a user mistake
            raise error.orig_exc from None


@dataclass(frozen=True)
class _Body:
    statements: tuple[Statement, ...]


def number_value(text: str, span: Span) -> int | float:
    """The value of a NUMBER token; beyond `limits.NUMBER_MAGNITUDE` it is a TapscError.

    The digits are counted before converting: Python refuses to convert integers of more
    than 4,300 digits, and a float of more than about 309 digits is infinite.
    """
    if text.isdigit():
        too_large = len(text.lstrip("0")) > len(str(limits.NUMBER_MAGNITUDE.value)) or \
            int(text) > limits.NUMBER_MAGNITUDE.value
        value: int | float = 0 if too_large else int(text)
    else:
        value = float(text)  # `1e999` is inf, caught below
        too_large = not abs(value) <= limits.NUMBER_MAGNITUDE.value
    if too_large:
        shown = text if len(text) <= 20 else f"{text[:8]}...{text[-8:]} ({len(text)} characters)"
        raise TapscError(limits.NUMBER_MAGNITUDE.diagnostic(f"the number `{shown}` is too large", span))
    return value


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


def unescape(raw: str) -> str:
    """A string literal's text without its escapes; an unknown escape stays as written
    (`"C:\\data"` keeps its backslash)."""
    out, index = [], 0
    while index < len(raw):
        char = raw[index]
        if char == "\\" and index + 1 < len(raw) and raw[index + 1] in _ESCAPES:
            out.append(_ESCAPES[raw[index + 1]])
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


# ---------------------------------------------------------------- syntax errors

_TERMINAL_TEXT = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "_SEP": "a newline or `;`",
    "$END": "the end of the file",
}

# Common mistakes recognised by the parser state they leave behind (Lark's match_examples).
_EXAMPLES = {
    "missing-comma": ["x (1 2)", "x (a = 1 b = 2)", "x { y f(1 2) }", "x f(a = 1 b = 2)"],
    "unclosed-paren": ["x { y (1, 2 }", "x (1, 2 }"],
    "unmatched-close": ["}", "x 1 }", "x )", "x (1))"],
}

_EXAMPLE_HELP = {
    "missing-comma": ("expected ',' or ')' after argument", "insert ',' between arguments"),
    "unclosed-paren": ("`(` not closed before `}`", "add the missing `)`"),
    "unmatched-close": ("closing bracket without a matching opening one", "remove it or add the opening bracket"),
}


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_TEXT:
        return _TERMINAL_TEXT[name]
    try:
        pattern = parser().get_terminal(name).pattern
    except KeyError:
        return name.lower()
    return f"`{pattern.value}`" if pattern.type == "str" else name.lower()


def _found(token: Token) -> str:
    if token.type == "$END":
        return "the end of the file"
    if token.type == "_SEP":
        return "the end of the line" if "\n" in str(token) else "`;`"
    return f"`{token}`"


def _expected_list(expected: set[str]) -> str:
    names = sorted({_describe_terminal(t) for t in expected})
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _error_position(error: UnexpectedInput, text: str) -> tuple[int, int, int]:
    """(line, column, width) of the offending input, pointing at the last line for EOF."""
    token = getattr(error, "token", None)
    if token is not None and token.type == "$END" or getattr(error, "line", -1) in (-1, None):
        lines = text.splitlines() or [""]
        return len(lines), len(lines[-1]) + 1, 1
    if token is not None and token.type == "_SEP":
        return error.line, error.column, 1
    width = len(str(token)) if token is not None else 1
    return error.line, error.column, max(1, width)


def _unclosed(text: str, opener: str, closer: str) -> tuple[int, int] | None:
    """(line, column) of the last bracket ``opener`` never closed, skipping strings and comments."""
    stack: list[tuple[int, int]] = []
    line, column, in_string, in_comment = 1, 0, False, False
    previous = ""
    for char in text:
        column += 1
        if char == "\n":
            line, column, in_comment = line + 1, 0, False
        elif in_comment:
            pass
        elif in_string:
            in_string = not (char == '"' and previous != "\\")
        elif char == '"':
            in_string = True
        elif char == "#":
            in_comment = True
        elif char == opener:
            stack.append((line, column))
        elif char == closer and stack:
            stack.pop()
        previous = char
    return stack[-1] if stack else None


def _point(filename: str, line: int, column: int, width: int = 1) -> Span:
    return Span(file=filename, line=line, column=column, end_line=line, end_column=column + width)


def _character_diagnostic(error: UnexpectedCharacters, text: str, span: Span) -> Diagnostic:
    char = text[error.pos_in_stream] if error.pos_in_stream < len(text) else "?"
    if not char.isprintable() or char.isspace():  # invisible: a byte-order mark, a control character
        return Diagnostic(code="unexpected-character",
                          message=f"unexpected invisible character U+{ord(char):04X}", span=span, label="here",
                          help="delete it; editors can show invisible characters")
    if char == ":":
        return Diagnostic(code="unexpected-character", message="`:` is not .taps syntax", span=span,
                          label="write `name value` or `name = value`", help="for example `lr 5e-4` or `lr = 5e-4`")
    return Diagnostic(code="unexpected-character", message=f"unexpected character `{char}`", span=span,
                      help="names, numbers, strings, `( ) { } = , ; * / + -` and `#` comments "
                      "are the only characters .taps uses")


def _eof_diagnostic(error: UnexpectedToken, text: str, filename: str) -> Diagnostic | None:
    """At the end of the file, point at the bracket that was never closed."""
    for opener, closer, what in (("(", ")", "parenthesis"), ("{", "}", "block")):
        if closer in {_describe_terminal(t).strip("`") for t in error.expected}:
            where = _unclosed(text, opener, closer)
            if where is not None:
                return Diagnostic(code="unclosed-bracket", message=f"this `{opener}` {what} is never closed",
                                  span=_point(filename, *where), label=f"opened here; add a matching `{closer}`",
                                  help=f"expected {_expected_list(error.expected)} before the end of the file")
    return None


def syntax_diagnostic(error: UnexpectedInput, text: str, filename: str, start: str = "start") -> Diagnostic:
    """Turn a Lark error into a Diagnostic that names the expected tokens in words."""
    line, column, width = _error_position(error, text)
    span = _point(filename, line, column, width)
    if isinstance(error, UnexpectedCharacters):
        return _character_diagnostic(error, text, span)
    assert isinstance(error, UnexpectedToken)
    if error.token.type == "$END":
        found_eof = _eof_diagnostic(error, text, filename)
        if found_eof is not None:
            return found_eof
    label = None
    if {"COMMA", "RPAR"} <= set(error.expected) and error.token.type in ("NAME", "NUMBER", "STRING"):
        label = "missing-comma"  # a value right after a value inside ( ... )
    elif start == "start":
        label = error.match_examples(functools.partial(parser().parse, start="start"), _EXAMPLES,
                                     use_accepts=True)
    found = _found(error.token)
    if label is not None:
        message, hint = _EXAMPLE_HELP[label]
        return Diagnostic(code="unexpected-token", message=f"{message}, found {found}", span=span,
                          label=hint, help=f"expected {_expected_list(error.expected)}")
    return Diagnostic(code="unexpected-token", message=f"expected {_expected_list(error.expected)}, found {found}",
                      span=span)
