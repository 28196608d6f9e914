"""Expansion of model layer statements into flat IR layer tables.

Named blocks are inlined with their parameters substituted (`width * 2` is
evaluated here), `repeat n { ... }` is unrolled, `residual { ...; shortcut { ... } }`
becomes one residual layer, and `split` markers are recorded as top-level layer
indices. Layers that come from a built-in library block carry the span of the
call site, so a user's diagnostic points at their own file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tapsc.errors import Diagnostic
from tapsc.language import ir, limits
from tapsc.language.build_ir import (
    BlockDef,
    Problem,
    Table,
    Val,
    bind,
    expect_positional,
    field_names,
    need_body,
    plain,
)
from tapsc.language.diagnostics import did_you_mean
from tapsc.language.ir import Span
from tapsc.language.syntax import Name, Statement

STRUCTURE = ("repeat", "residual", "split")
# The layer kinds written as calls (`conv(16, kernel = 3)`): every IR layer kind but the structural
# ones. Each class holds its positional arguments and aliases (`ir.LayerNode`).
LAYER_CLASSES: dict[str, type[ir.LayerNode]] = {
    kind: cls for kind, cls in ir.LAYER_NODES.items() if kind not in STRUCTURE}
# Names a block cannot take: the expander and `model` read these statements before blocks.
RESERVED = (*LAYER_CLASSES, *STRUCTURE, "shortcut", "input", "input_shape")


@dataclass
class Expansion:
    """The flat top-level layers, the split markers found, and the problems met."""

    layers: list[Table] = field(default_factory=list)
    markers: list[tuple[int, Span]] = field(default_factory=list)
    problems: list[Diagnostic] = field(default_factory=list)


def expand_model(statements: tuple[Statement, ...], blocks: dict[str, BlockDef]) -> Expansion:
    """Expand a model's layer statements (blocks, repeats, residuals, markers).

    The work is bounded by `limits.LAYER_COUNT`, `limits.EXPANSION_STEPS` and
    `limits.NESTING_DEPTH`; reaching one stops the expansion with one diagnostic at the
    top-level statement that was being expanded.
    """
    expansion = Expansion()
    expander = _Expander(blocks, expansion)
    for statement in statements:
        try:
            expander.expand((statement,), {}, expansion.layers, top=True, site=None, stack=())
        except _Exhausted as stop:
            expansion.problems.append(stop.limit.diagnostic(stop.message, statement.span))
            break
    return expansion


def _layer_name(statement: Statement, where: Span) -> tuple[Statement, Val | None]:
    """Split a trailing `as NAME` off a layer statement: (the statement without it, the name)."""
    for index, word in enumerate(statement.words):
        if isinstance(word, Name) and word.value == "as":
            rest = statement.words[index + 1:]
            if len(rest) != 1 or not isinstance(rest[0], Name):
                raise Problem("bad-layer-name", "`as` takes one name, written last", (rest[0] if rest else word).span,
                              help=f"for example `{statement.name}{'(...)' if statement.words[0] is not word else ''} "
                              "as stem`")
            span = rest[0].span if where is statement.span else where
            return replace(statement, words=statement.words[:index]), Val(rest[0].value, span)
    return statement, None


class _Exhausted(Exception):
    """A limit of the whole expansion was reached; no later statement is expanded."""

    def __init__(self, limit: limits.Limit, message: str):
        super().__init__(message)
        self.limit, self.message = limit, message


class _Expander:
    def __init__(self, blocks: dict[str, BlockDef], expansion: Expansion):
        self.blocks = blocks
        self.expansion = expansion
        self.steps = 0  # statements and repeat iterations visited, against limits.EXPANSION_STEPS
        self.layers = 0  # layers made, residual bodies included, against limits.LAYER_COUNT
        self.depth = 0  # nested expansions (repeat, residual, block calls), against limits.NESTING_DEPTH

    def step(self) -> None:
        self.steps += 1
        if self.steps > limits.EXPANSION_STEPS.value:
            raise _Exhausted(limits.EXPANSION_STEPS, "expanding this takes too many steps")

    def count_layer(self) -> None:
        self.layers += 1
        if self.layers > limits.LAYER_COUNT.value:
            raise _Exhausted(limits.LAYER_COUNT, "the model expands to too many layers")

    def expand(self, statements, env: dict[str, Any], out: list[Table], top: bool, site: Span | None,
               stack: tuple[str, ...]) -> None:
        self.depth += 1
        try:
            if self.depth > limits.NESTING_DEPTH.value:
                raise _Exhausted(limits.NESTING_DEPTH, "the model nests `repeat`, `residual` and block calls "
                                 "too deeply")
            for statement in statements:
                self.step()
                try:
                    self.statement(statement, env, out, top, site, stack)
                except Problem as problem:
                    self.expansion.problems.append(problem.diagnostic)
        finally:
            self.depth -= 1

    def statement(self, statement: Statement, env, out, top, site, stack) -> None:
        name = statement.name
        where = site or statement.span
        if name == "split":
            self.marker(statement, out, top, where)
        elif name == "repeat":
            self.repeat(statement, env, out, top, site, stack)
        elif name == "residual":
            out.append(self.residual(statement, env, site, stack))
        elif name in LAYER_CLASSES:
            out.append(self.layer(statement, env, where))
        elif name in self.blocks:
            self.call(statement, env, out, top, site, stack)
        else:
            choices = [*LAYER_CLASSES, *STRUCTURE, *self.blocks]
            raise Problem("unknown-layer", f"unknown layer or block `{name}`", statement.name_span,
                          help=did_you_mean(name, choices))

    def marker(self, statement: Statement, out, top: bool, where: Span) -> None:
        if statement.words or statement.body is not None:
            raise Problem("bad-split", "a `split` marker inside the model takes no arguments", statement.span,
                          help="write `split` alone between two layers, or use `split relus_in_classifier = n` "
                          "as a section")
        if not top:
            raise Problem("split-inside-residual", "the split cannot fall inside a residual block", where,
                          help="move the `split` marker before or after the `residual { ... }`")
        self.expansion.markers.append((len(out), where))

    def repeat(self, statement: Statement, env, out, top, site, stack) -> None:
        values = expect_positional(statement, bind(statement, ("times",), call=True), ["times"])
        if "times" not in values:
            raise Problem("missing-value", "`repeat` needs a count", statement.name_span,
                          help="for example `repeat 2 { conv(128, kernel = 3, padding = 1); relu }`")
        times = plain(values["times"], env)
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise Problem("bad-repeat", f"`repeat` needs a positive whole count, found `{times}`",
                          values["times"].span)
        if times > limits.REPEAT_COUNT.value:
            raise Problem.of(limits.REPEAT_COUNT.diagnostic(f"`repeat {times}` is too many", site or
                                                            values["times"].span))
        body = need_body(statement, "repeat 2 { conv(128, kernel = 3, padding = 1); relu }")
        for _ in range(times):
            self.step()  # an empty body is work too
            self.expand(body, env, out, top, site, stack)

    def residual(self, statement: Statement, env, site, stack) -> Table:
        statement, name = _layer_name(statement, site or statement.span)
        if statement.words:
            raise Problem("unexpected-argument", "`residual` takes only a `{ ... }` block", statement.words[0].span)
        body = need_body(statement, "residual { conv(64, kernel = 3, padding = 1); relu; shortcut { } }")
        main, shortcut = [], []
        for inner in body:
            if inner.name == "shortcut":
                self.expand(need_body(inner, "shortcut { conv(128, kernel = 1, stride = 2) }"), env, shortcut,
                            False, site, stack)
            else:
                self.expand((inner,), env, main, False, site, stack)
        where = site or statement.span
        self.count_layer()
        table = Table(kind=Val("residual", where), body=Val(main, where), shortcut=Val(shortcut, where), span=where)
        if name is not None:
            table["name"] = name
        return table

    def layer(self, statement: Statement, env, where: Span) -> Table:
        if statement.body is not None:
            raise Problem("unexpected-block", f"`{statement.name}` takes no `{{ ... }}` block", statement.span)
        statement, name = _layer_name(statement, where)
        kind = statement.name
        self.count_layer()
        cls = LAYER_CLASSES[kind]
        names = [n for n in field_names(cls) if n != "name"]  # `as NAME` only
        bound = bind(statement, names, call=True, aliases=cls.aliases)
        values = expect_positional(statement, bound, cls.positional)
        table = Table(kind=Val(kind, where), span=where)
        for key, value in values.items():
            table[key] = Val(plain(value, env), where if where is not statement.span else value.span)
        if name is not None:
            table["name"] = name
        return table

    def call(self, statement: Statement, env, out, top, site, stack) -> None:
        block = self.blocks[statement.name]
        if block.name in stack:
            raise Problem("block-recursion", f"block `{block.name}` uses itself", statement.span,
                          help=" -> ".join([*stack, block.name]))
        if statement.body is not None:
            raise Problem("unexpected-block", f"a call of block `{block.name}` takes no `{{ ... }}` block",
                          statement.span)
        params = [name for name, _, _ in block.params]
        values = expect_positional(statement, bind(statement, params, call=True), params)
        scope: dict[str, Any] = {}
        for name, default, _ in block.params:
            if name in values:
                scope[name] = plain(values[name], env)
            elif default is not None:
                scope[name] = plain(default, dict(scope))
            else:
                raise Problem("missing-argument", f"block `{block.name}` needs a value for `{name}`",
                              statement.span, help=f"for example `{block.name}({name} = ...)`")
        inner_site = site if site is not None else (statement.span if block.library else None)
        self.expand(block.body, scope, out, top, inner_site, (*stack, block.name))
