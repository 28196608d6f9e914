"""The meaning of each top-level section of a .taps file (data, model, method, ...).

Each ``*_section(statement, problems)`` turns one section statement into a document
`Table` (see tapsc/language/build_ir.py); `apply_file` runs them over a file's statements
and merges the results, so a later section overrides an earlier one field by field.
"""

from __future__ import annotations

import typing
from typing import Callable, Sequence

from tapsc.errors import Diagnostic
from tapsc.language import ir
from tapsc.language.blocks import LAYER_CLASSES, RESERVED
from tapsc.language.build_ir import (
    BlockDef,
    LayerSource,
    Problem,
    Table,
    Val,
    as_tuple,
    bind,
    expect_positional,
    field_names,
    merge,
    need_body,
    no_body,
    plain,
    settings,
    span_of,
)
from tapsc.language.diagnostics import did_you_mean
from tapsc.language.syntax import Group, Keyword, Name, Statement, String

SECTIONS = ("data", "model", "split", "perturbation", "method", "optimizer", "eval", "export", "distributed")
TOP_LEVEL = SECTIONS + ("include", "block")
PHASE_CLASSES: dict[str, type[ir.Node]] = {
    cls.model_fields["kind"].default: cls for cls in ir.PHASE_CLASSES}
AUGMENTATIONS: dict[str, type[ir.Node]] = {
    cls.model_fields["kind"].default: cls for cls in ir.AUGMENTATION_CLASSES}


def _head(statement: Statement, field: str) -> Table:
    """A section's optional head word: `data cifar10`, `optimizer adam`, `perturbation linf`."""
    values = expect_positional(statement, bind(statement, ()), [field])
    table = Table(span=statement.span)
    if field in values:
        table[field] = Val(plain(values[field]), values[field].span)
    return table


def _choice(value, choices: Sequence[str], what: str) -> str:
    text = plain(value)
    if not isinstance(text, str) or text not in choices:
        raise Problem(f"unknown-{what.replace(' ', '-')}", f"unknown {what} `{text}`", value.span,
                      help=did_you_mean(str(text), choices))
    return text


def _literal_choices(model: type[ir.Node], name: str) -> tuple[str, ...]:
    return typing.get_args(model.model_fields[name].annotation)


# ---------------------------------------------------------------- data


def data_section(statement: Statement, problems: list[Diagnostic]) -> Table:
    table = _head(statement, "dataset")
    special = {"normalize": _normalize, "augment": _augment, "train_augment": _augment, "test_augment": _augment}
    return settings(table, statement.body or (), ir.Data, "`data`", special=special, problems=problems)


def _normalize(target: Table, statement: Statement) -> None:
    no_body(statement)
    values = expect_positional(statement, bind(statement, ("mean", "std")), [])
    table = Table(span=statement.span)
    for key, value in values.items():
        table[key] = Val(as_tuple([value]), value.span)
    target["normalize"] = merge(target.get("normalize", Table(span=statement.span)), table)


def _augment(target: Table, statement: Statement) -> None:
    """`augment { crop 32 pad 2; hflip }` (training), `augment test { center_crop 56 }`."""
    split = {"train_augment": "train", "test_augment": "test"}.get(statement.name)
    values = expect_positional(statement, bind(statement, ()), [] if split else ["split"])
    if "split" in values:
        split = _choice(values["split"], ("train", "test"), "augmentation split")
    body = need_body(statement, "augment { crop 32 pad 2; hflip }")
    items = [_augmentation(item) for item in body]
    target[f"{split or 'train'}_augment"] = Val(items, statement.span)


def _augmentation(statement: Statement) -> Table:
    no_body(statement)
    if statement.name not in AUGMENTATIONS:
        raise Problem("unknown-augmentation", f"unknown augmentation `{statement.name}`", statement.name_span,
                      help=did_you_mean(statement.name, AUGMENTATIONS))
    model = AUGMENTATIONS[statement.name]
    names = field_names(model)
    bound = bind(statement, names, call=True, aliases={"pad": "padding"})
    values = expect_positional(statement, bound, names[:1])
    table = Table(kind=Val(statement.name, statement.name_span), span=statement.span)
    for key, value in values.items():
        table[key] = Val(plain(value), value.span)
    return table


# ---------------------------------------------------------------- model and split


def model_section(statement: Statement, problems: list[Diagnostic], library: bool = False) -> Table:
    """`model cnn7(classes = 10)` or `model { input (1, 28, 28); conv(...); ... }`."""
    table = Table(span=statement.span)
    layers: list[Statement] = []
    words = list(statement.words)
    if words:
        head = words[0]
        if not isinstance(head, Name):
            raise Problem("unexpected-argument", "expected a block or layer name after `model`", head.span,
                          help="for example `model cnn7(classes = 10)`")
        layers.append(Statement(name=head.value, name_span=head.span, words=tuple(words[1:]), body=None,
                                span=span_of(words)))
    for inner in statement.body or ():
        if inner.name in ("input", "input_shape"):
            try:
                no_body(inner)
                table["input_shape"] = Val(as_tuple(inner.words), span_of(inner.words) or inner.span)
            except Problem as problem:
                problems.append(problem.diagnostic)
        else:
            layers.append(inner)
    if layers:
        table["layers"] = LayerSource(tuple(layers), statement.span, library)
    return table


def split_section(statement: Statement, problems: list[Diagnostic]) -> Table:
    """`split relus_in_classifier = 1`, `split at_layer = 3`, `split at stem` (a layer named
    `as stem`), or a `split` marker inside the model's layers."""
    no_body(statement)
    kinds = {"relus_in_classifier": "count", "at_layer": "index", "at_name": "name"}
    values = expect_positional(statement, bind(statement, kinds, aliases={"at": "at_name"}), [])
    if len(values) != 1:
        raise Problem("bad-split", "`split` needs exactly one of `relus_in_classifier = n`, `at_layer = i` or "
                      "`at NAME`", statement.span, help="or put a `split` marker between two layers of the model")
    (kind, value), = values.items()
    if kind == "at_name" and isinstance(plain(value), int):
        kind = "at_layer"  # `split at 3`
    return Table(kind=Val(kind, statement.span), **{kinds[kind]: Val(plain(value), value.span)}, span=statement.span)


# ---------------------------------------------------------------- perturbation


def perturbation_section(statement: Statement, problems: list[Diagnostic]) -> Table:
    table = _head(statement, "norm")
    return settings(table, statement.body or (), ir.Perturbation, "`perturbation`",
                    special={"schedule": _schedule}, problems=problems)


def _schedule(target: Table, statement: Statement) -> None:
    """`schedule smooth from epoch 1 to 81`."""
    no_body(statement)
    aliases = {"from": "start_epoch", "to": "end_epoch", "until": "end_epoch"}
    bound = bind(statement, field_names(ir.EpsSchedule), aliases=aliases)
    values = expect_positional(statement, bound, ["shape"])
    table = Table(span=statement.span)
    for key, value in values.items():
        table[key] = Val(plain(value), value.span)
    target["schedule"] = merge(target.get("schedule", Table(span=statement.span)), table)


# ---------------------------------------------------------------- method


def method_section(statement: Statement, problems: list[Diagnostic]) -> Table:
    no_words(statement)
    table = Table(span=statement.span)

    def add_phase(target: Table, inner: Statement) -> None:
        if "phases" not in target:
            target["phases"] = Val([], statement.span)
        target["phases"].value.append(phase(inner, problems))

    return settings(table, statement.body or (), ir.Method, "`method`", special={"phase": add_phase},
                    aliases={"init": "initialization"}, problems=problems)


def no_words(statement: Statement) -> None:
    if statement.words:
        raise Problem("unexpected-argument", f"`{statement.name}` takes only a `{{ ... }}` block",
                      statement.words[0].span, help=f"write `{statement.name} {{ ... }}`")


def _split_with(statement: Statement) -> tuple[Statement, list[Statement]]:
    """Pull `with name value` pairs out of a phase header (`phase ibp with shi_regularizer 0.5`)."""
    words, extra = list(statement.words), []
    index = 0
    while index < len(words):
        word = words[index]
        if isinstance(word, Name) and word.value == "with":
            if index + 1 >= len(words):
                raise Problem("missing-value", "`with` needs a setting", word.span,
                              help="for example `with shi_regularizer 0.5`")
            target = words[index + 1]
            if isinstance(target, Keyword):
                extra.append(Statement(target.key, target.key_span, (target.value,), None, target.span))
                del words[index:index + 2]
                continue
            if not isinstance(target, Name) or index + 2 >= len(words):
                raise Problem("missing-value", "`with` needs a setting and its value", target.span,
                              help="for example `with shi_regularizer 0.5`")
            extra.append(Statement(target.value, target.span, (words[index + 2],), None,
                                   span_of(words[index + 1:index + 3])))
            del words[index:index + 3]
            continue
        index += 1
    stripped = Statement(statement.name, statement.name_span, tuple(words), statement.body, statement.span)
    return stripped, extra


def phase(statement: Statement, problems: list[Diagnostic]) -> Table:
    """`phase KIND [from epoch N] [until epoch M] [with setting value] [{ settings }]`."""
    statement, extra = _split_with(statement)
    bound = bind(statement, ("start", "end"), aliases={"from": "start", "until": "end"})
    values = expect_positional(statement, bound, ["kind"])
    if "kind" not in values:
        raise Problem("missing-value", "`phase` needs a kind", statement.name_span,
                      help=did_you_mean("", PHASE_CLASSES))
    kind = _choice(values.pop("kind"), tuple(PHASE_CLASSES), "phase")
    table = Table(kind=Val(kind, statement.name_span), span=statement.span)
    for key, value in values.items():
        table[key] = Val(plain(value), value.span)
    return phase_settings(table, kind, extra + list(statement.body or ()), problems)


def phase_settings(table: Table, kind: str, statements: Sequence[Statement], problems: list[Diagnostic]) -> Table:
    """Apply settings inside a phase (also used by `--set method.taps.weight=3`)."""
    model = PHASE_CLASSES[kind]
    special = {"connector": _connector,
               "attack": _attack(model.model_fields["attack"].annotation if "attack" in model.model_fields
                                 else ir.InputAttack),
               "input_attack": _attack(ir.InputAttack)}
    special = {k: v for k, v in special.items() if k in model.model_fields}
    aliases = {"lambda": "sabr_lambda", "from": "start", "until": "end"} if "sabr_lambda" in model.model_fields \
        else {"from": "start", "until": "end"}
    return settings(table, statements, model, f"a `{kind}` phase", special=special, aliases=aliases,
                    problems=problems)


def _call_parts(statement: Statement, keywords: Sequence[str], flags: dict[str, tuple[str, str]]):
    """`name(key = value, flag)` -> (name value or None, {key: value}); bare flags set their field."""
    bound = bind(statement, keywords)
    positional = list(bound.positional)
    named = {key: value for key, (value, _) in bound.named.items()}
    head = positional.pop(0) if positional and isinstance(positional[0], Name) \
        and positional[0].value not in flags else None
    if positional and isinstance(positional[0], Group):
        group = positional.pop(0)
        positional = list(group.items) + positional
        for keyword in group.keywords:
            if keyword.key not in keywords:
                raise Problem("unknown-argument", f"`{statement.name}` has no argument `{keyword.key}`",
                              keyword.key_span, help=did_you_mean(keyword.key, keywords))
            named[keyword.key] = keyword.value
    flag_values = {}
    for value in positional:
        if isinstance(value, Name) and value.value in flags:
            key, choice = flags[value.value]
            flag_values[key] = Val(choice, value.span)
        else:
            raise Problem("unexpected-argument", f"unexpected value in `{statement.name}`", value.span,
                          help=f"named arguments: {', '.join(keywords)}")
    return head, named, flag_values


def _fixed(cls: type[ir.Node]) -> dict[str, float]:
    """The parameters a connector kind fixes (numeric ClassVars, e.g. `linear`'s c = 1)."""
    return {name: getattr(cls, name) for name in cls.__class_vars__ if isinstance(getattr(cls, name), (int, float))}


def _connector(target: Table, statement: Statement) -> None:
    """`connector rectified_linear(c = 0.5)`, `connector linear`, `connector binary`, `connector(c = 0.3)`:
    the keyword arguments are the kind's fields (ir.CONNECTOR_CLASSES). A new kind replaces the
    connector set before (an include's); without a kind, the arguments change the one set before."""
    no_body(statement)
    every = sorted({name for cls in ir.CONNECTOR_CLASSES.values() for name in (*field_names(cls), *_fixed(cls))})
    head, named, _ = _call_parts(statement, every, {})
    table = Table(span=statement.span)
    before = target.get("connector")
    kind = None
    if head is not None:
        kind = _choice(head, tuple(ir.CONNECTOR_CLASSES), "connector")
        table["kind"] = Val(kind, head.span)
    elif isinstance(before, Table) and "kind" in before:
        kind = plain(before["kind"])
    else:  # the default connector's kind, written down for the union's tag
        kind = ir.RectifiedLinearConnector.model_fields["kind"].default
        table["kind"] = Val(kind, statement.name_span)
    cls = ir.CONNECTOR_CLASSES[kind]
    for key, value in named.items():
        if key in _fixed(cls):
            given = plain(value)
            raise Problem("connector-c", f"the `{cls.model_fields['kind'].default}` connector has {key} = "
                          f"{_fixed(cls)[key]:g}, not {given:g}", statement.span,
                          help=f"write `connector rectified_linear({key} = {given:g})`")
        if key not in cls.model_fields:
            raise Problem("unknown-argument", f"the `{cls.model_fields['kind'].default}` connector has no "
                          f"argument `{key}`", value.span, help=did_you_mean(key, field_names(cls)))
        table[key] = Val(plain(value), value.span)
    if head is not None or not isinstance(before, Table):
        target["connector"] = table
    else:
        target["connector"] = merge(before, table)


def _attack(model: type[ir.Node]) -> Callable[[Table, Statement], None]:
    """`attack pgd(steps = 20, restarts = 1, multi)`: PGD settings, bare words pick a choice."""
    fields = field_names(model)
    flags = {choice: (name, choice) for name in fields if typing.get_origin(model.model_fields[name].annotation)
             is typing.Literal for choice in _literal_choices(model, name)}

    def handle(target: Table, statement: Statement) -> None:
        no_body(statement)
        head, named, table = _call_parts(statement, fields, flags)
        if head is not None and head.value != "pgd":
            raise Problem("unknown-attack", f"unknown attack `{head.value}`", head.span, help=did_you_mean(head.value, ["pgd"]))
        table = Table(table, span=statement.span)
        for key, value in named.items():
            table[key] = Val(plain(value), value.span)
        target[statement.name] = merge(target.get(statement.name, Table(span=statement.span)), table)

    return handle


# ---------------------------------------------------------------- optimizer, eval, export


def optimizer_section(statement: Statement, problems: list[Diagnostic]) -> Table:
    table = _head(statement, "kind")
    return settings(table, statement.body or (), ir.Optimizer, "`optimizer`",
                    special={"decay": _decay, "warmup": _warmup}, problems=problems)


def _warmup(target: Table, statement: Statement) -> None:
    """`warmup 5 epochs` (or `warmup 1 epoch`, `warmup 5`): linear warm-up over the first 5 epochs."""
    no_body(statement)
    values = expect_positional(statement, bind(statement, ()), ["epochs", "unit"])
    unit = str(plain(values["unit"])) if "unit" in values else "epochs"
    if unit not in ("epochs", "epoch"):
        raise Problem("bad-warmup", f"`warmup` counts epochs, found `{unit}`", values["unit"].span,
                      help=did_you_mean(unit, ["epochs", "epoch"]) or "write `warmup 5 epochs`")
    if "epochs" not in values:
        raise Problem("missing-value", "`warmup` needs a number of epochs", statement.name_span,
                      help="for example `warmup 5 epochs`")
    target["warmup"] = Val(plain(values["epochs"]), values["epochs"].span)


def _decay(target: Table, statement: Statement) -> None:
    """`decay 0.2 at (120, 140)`: multiply lr by 0.2 at epochs 120 and 140."""
    no_body(statement)
    values = expect_positional(statement, bind(statement, ("at",)), ["factor"])
    if "factor" in values:
        target["decay_factor"] = Val(plain(values["factor"]), values["factor"].span)
    if "at" in values:
        target["milestones"] = Val(as_tuple([values["at"]]), values["at"].span)


def eval_section(statement: Statement, problems: list[Diagnostic]) -> Table:
    no_words(statement)
    return settings(Table(span=statement.span), statement.body or (), ir.Eval, "`eval`",
                    special={"attack": _attack(ir.InputAttack)}, problems=problems)


def export_section(statement: Statement, problems: list[Diagnostic]) -> Table:
    no_words(statement)
    return settings(Table(span=statement.span), statement.body or (), ir.Export, "`export`", problems=problems)


def distributed_section(statement: Statement, problems: list[Diagnostic]) -> Table:
    no_words(statement)
    return settings(Table(span=statement.span), statement.body or (), ir.Distributed, "`distributed`",
                    problems=problems)


SECTION_BUILDERS = {
    "data": data_section, "model": model_section, "split": split_section,
    "perturbation": perturbation_section, "method": method_section, "optimizer": optimizer_section,
    "eval": eval_section, "export": export_section, "distributed": distributed_section,
}


# ---------------------------------------------------------------- blocks and whole files


def block_definition(statement: Statement, library: bool) -> BlockDef:
    """`block name(param, param = default) { layers }`."""
    words = list(statement.words)
    if not words or not isinstance(words[0], Name):
        raise Problem("missing-value", "`block` needs a name", statement.name_span,
                      help="for example `block stage(width = 64) { conv(width, kernel = 3); relu }`")
    name = words.pop(0)
    params: list = []
    if words and isinstance(words[0], Group):
        group = words.pop(0)
        for item in group.items:
            if not isinstance(item, Name):
                raise Problem("bad-parameter", "a block parameter is a name, optionally `= default`", item.span)
            params.append((item.value, None, item.span))
        params.extend((k.key, k.value, k.key_span) for k in group.keywords)
    if words:
        raise Problem("unexpected-argument", "unexpected value after the block's parameters", words[0].span)
    if name.value in RESERVED:
        what = "layer kind" if name.value in LAYER_CLASSES else "model statement"
        taken = ", ".join(f"`{n}`" for n in RESERVED)
        raise Problem("block-name-taken", f"a block cannot be named `{name.value}`: that is a built-in {what}",
                      name.span, label="the built-in would always be used instead",
                      help=f"rename the block; names taken by the language: {taken}")
    body = need_body(statement, f"block {name.value}(width = 64) {{ conv(width, kernel = 3); relu }}")
    return BlockDef(name.value, tuple(params), body, statement.span, library)


def include_path(statement: Statement) -> String:
    no_body(statement)
    if len(statement.words) != 1 or not isinstance(statement.words[0], String):
        raise Problem("bad-include", "`include` needs one quoted path", statement.span,
                      help='for example `include "lib/cifar10.taps"`')
    return statement.words[0]


def apply_file(statements: Sequence[Statement], doc: Table, blocks: dict[str, BlockDef],
               problems: list[Diagnostic], include: Callable[[String], None], library: bool = False) -> None:
    """Apply a file's statements in order; an include applies its file at that point."""
    for statement in statements:
        try:
            if statement.name == "include":
                include(include_path(statement))
            elif statement.name == "block":
                definition = block_definition(statement, library)
                blocks[definition.name] = definition
            elif statement.name in SECTION_BUILDERS:
                builder = SECTION_BUILDERS[statement.name]
                fragment = builder(statement, problems, library) if statement.name == "model" \
                    else builder(statement, problems)
                section = doc.get(statement.name)
                doc[statement.name] = merge(section, fragment) if isinstance(section, Table) else fragment
            else:
                raise Problem("unknown-section", f"unknown section `{statement.name}`", statement.name_span,
                              help=did_you_mean(statement.name, TOP_LEVEL))
        except Problem as problem:
            problems.append(problem.diagnostic)
