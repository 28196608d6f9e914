"""Settings document -> plain dict for `ir.Spec`, and pydantic errors -> diagnostics.

Lowering expands the model (tapsc/language/blocks.py) and fills the defaults that depend
on other sections: the input shape from the dataset and crop, each phase's start
from the previous phase's end, and the split from a `split` marker. It records
the span of every value by its pydantic location, so a schema error points at
the value that caused it.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from tapsc.data.catalogue import CATALOGUE
from tapsc.errors import Diagnostic
from tapsc.language import ir
from tapsc.language.blocks import expand_model
from tapsc.language.build_ir import BlockDef, LayerSource, Table, Val
from tapsc.language.diagnostics import did_you_mean
from tapsc.language.ir import Span

Loc = tuple[Any, ...]



def lower(doc: Table, blocks: dict[str, BlockDef]) -> tuple[dict, dict[Loc, Span], list[Diagnostic]]:
    """The plain dict for `ir.Spec.model_validate`, spans by location, and problems."""
    problems: list[Diagnostic] = []
    model = doc.get("model")
    if isinstance(model, Table) and isinstance(model.get("layers"), LayerSource):
        _expand(doc, model, blocks, problems)
    if isinstance(model, Table) and "input_shape" not in model:
        _default_input(doc, model)
    method = doc.get("method")
    if isinstance(method, Table) and isinstance(method.get("phases"), Val):
        _phase_starts(method["phases"].value, problems)
    _eval_attack_defaults(doc)
    spans: dict[Loc, Span] = {}
    plain = _to_plain(doc, (), spans)
    plain.pop("span", None)
    return plain, spans, problems


def _expand(doc: Table, model: Table, blocks: dict[str, BlockDef], problems: list[Diagnostic]) -> None:
    source: LayerSource = model["layers"]
    expansion = expand_model(source.statements, blocks)
    problems.extend(expansion.problems)
    model["layers"] = Val(expansion.layers, source.span)
    if len(expansion.markers) > 1:
        problems.append(Diagnostic(code="several-splits", message="the model has more than one `split` marker",
                                   span=expansion.markers[1][1], help="keep one `split` marker"))
    split = doc.get("split")
    if expansion.markers and (split is None or split.order < source.order):
        index, span = expansion.markers[0]
        doc["split"] = Table(kind=Val("at_layer", span), index=Val(index, span), span=span)


def _default_input(doc: Table, model: Table) -> None:
    """(C, H, W) of the dataset, with H = W = the crop size when the data is cropped."""
    data = doc.get("data")
    dataset = data.get("dataset") if isinstance(data, Table) else None
    if not isinstance(dataset, Val) or dataset.value not in CATALOGUE:
        return
    channels, height, width = CATALOGUE[dataset.value].shape
    for key in ("train_augment", "test_augment"):
        augment = data.get(key)
        for item in augment.value if isinstance(augment, Val) and isinstance(augment.value, list) else ():
            size = item.get("size")
            if isinstance(size, Val) and isinstance(size.value, int):
                height = width = size.value
    model["input_shape"] = Val((channels, height, width), model.span)


def _phase_starts(phases: list[Table], problems: list[Diagnostic]) -> None:
    """A phase starts where the previous one ends (the first at epoch 0)."""
    for previous, phase in zip([None, *phases], phases):
        if "start" in phase:
            continue
        if previous is None:
            phase["start"] = Val(0, phase.span)
        elif "end" in previous:
            phase["start"] = Val(previous["end"].value, phase.span)
        else:
            kind = previous["kind"].value
            problems.append(Diagnostic(
                code="phase-without-end", message=f"the `{kind}` phase has no end but another phase follows it",
                span=previous.span, help=f"end it with `until epoch N`, e.g. `phase {kind} until epoch 10`"))


def _eval_attack_defaults(doc: Table) -> None:
    """`eval { attack pgd(steps = 20) }` keeps the other fields of eval's default attack."""
    section = doc.get("eval")
    attack = section.get("attack") if isinstance(section, Table) else None
    if isinstance(attack, Table):
        for key, value in ir.Eval().attack.model_dump(exclude={"span"}).items():
            attack.setdefault(key, Val(value, attack.span))


def _to_plain(node: Any, loc: Loc, spans: dict[Loc, Span]) -> Any:
    if isinstance(node, Table):
        if node.span is not None:
            spans[loc] = node.span
        out = {key: _to_plain(value, (*loc, key), spans) for key, value in node.items()}
        out["span"] = node.span
        return out
    if isinstance(node, Val):
        if node.span is not None:
            spans[loc] = node.span
        return _to_plain(node.value, loc, spans)
    if isinstance(node, (list, tuple)):
        return [_to_plain(item, (*loc, index), spans) for index, item in enumerate(node)]
    return node


# ---------------------------------------------------------------- pydantic errors

_BOUNDS = {"greater_than": ("gt", "greater than"), "greater_than_equal": ("ge", "at least"),
           "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most")}
_TYPES = {"int_parsing": "a whole number", "int_from_float": "a whole number", "int_type": "a whole number",
          "float_parsing": "a number", "float_type": "a number", "bool_parsing": "`true` or `false`",
          "bool_type": "`true` or `false`", "string_type": "a quoted string", "tuple_type": "a list like `(a, b)`",
          "finite_number": "a finite number", "window_type": "a whole number or a pair like `(3, 5)`"}
_EXAMPLES = {
    "data": "data mnist { batch 256 }", "model": "model cnn7(classes = 10)",
    "perturbation": "perturbation linf { eps 0.1 }", "method": "method { phase ibp }",
    "optimizer": "optimizer adam { epochs 70 }", "eps": "eps 8/255", "epochs": "epochs 70",
    "phases": "phase taps", "layers": "conv(64, kernel = 3)", "dataset": "data cifar10",
    "input_shape": "input (1, 28, 28)",
}


def _strip_tags(loc: Loc) -> Loc:
    """Drop the union tags pydantic adds after a list index, (layers, 3, 'conv', 'kernel'), or
    after a field holding a union, (..., 'connector', 'rectified_linear', 'c')."""
    out: list[Any] = []
    for index, part in enumerate(loc):
        if isinstance(part, str) and index > 0 and isinstance(loc[index - 1], int) and index + 1 < len(loc):
            continue
        if isinstance(part, str) and index > 0 and part in _UNION_FIELDS.get(loc[index - 1], ()):
            continue
        if isinstance(part, str) and index > 0 and isinstance(loc[index - 1], int) and index + 1 == len(loc) \
                and part in _ALL_KINDS:
            continue
        out.append(part)
    return tuple(out)


_ALL_KINDS = set(ir.LAYER_KINDS) | set(ir.PHASE_KINDS) | set(ir.SPLIT_KINDS) | {
    cls.model_fields["kind"].default for cls in ir.AUGMENTATION_CLASSES}
_UNION_FIELDS = {"connector": set(ir.CONNECTOR_CLASSES), "split": set(ir.SPLIT_KINDS)}  # field -> its union's tags


def _find_span(loc: Loc, spans: dict[Loc, Span], fallback: Span) -> Span:
    for end in range(len(loc), -1, -1):
        if loc[:end] in spans:
            return spans[loc[:end]]
    return fallback


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)) or value is None:
        return ""
    return f", found `{value}`"


def _describe(error: dict, loc: Loc) -> tuple[str, str, str | None]:
    """(code, message, help) for one pydantic error."""
    kind = error["type"]
    names = [part for part in loc if isinstance(part, str)]
    field = names[-1] if names else "spec"
    owner = names[-2] if len(names) > 1 else None
    if field == "kind" and owner:
        field = owner
    if kind == "missing":
        where = f" in `{owner}`" if owner else ""
        what = "section" if len(loc) == 1 else "setting"
        return "missing-setting", f"missing {what} `{field}`{where}", \
            f"add it, e.g. `{_EXAMPLES.get(field, field + ' VALUE')}`"
    if kind in ("literal_error", "union_tag_invalid", "enum"):
        choices = re.findall(r"'([^']*)'", error.get("ctx", {}).get("expected", ""))
        return f"unknown-{field.replace('_', '-')}", f"unknown {field} `{error.get('input')}`", \
            did_you_mean(str(error.get("input")), choices)
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"bad-{field.replace('_', '-')}", f"`{field}` must be {words} {error['ctx'][key]}" \
            f"{_shown(error.get('input'))}", None
    if kind in _TYPES:
        return "bad-value", f"`{field}` must be {_TYPES[kind]}{_shown(error.get('input'))}", None
    if kind == "extra_forbidden":
        return "unknown-setting", f"`{field}` is not a setting of `{owner}`", None
    return "bad-value", f"invalid value for `{field}`{_shown(error.get('input'))}", None


def schema_diagnostics(error: ValidationError, spans: dict[Loc, Span], fallback: Span) -> list[Diagnostic]:
    """One diagnostic per pydantic error, at the span of the offending value."""
    out = []
    errors = error.errors()
    if any(tuple(e["loc"]) == ("data", "dataset") for e in errors):
        # an unknown dataset leaves the input shape without its default: one error is enough
        errors = [e for e in errors if tuple(e["loc"]) != ("model", "input_shape")]
    for item in errors:
        loc = _strip_tags(tuple(item["loc"]))
        code, message, help = _describe(item, loc)
        out.append(Diagnostic(code=code, message=message, span=_find_span(loc, spans, fallback), help=help))
    return out
