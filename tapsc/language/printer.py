"""IR -> canonical .taps text.

The output is fully expanded (no blocks, includes or `repeat`) and names every
setting that differs from its default, plus those whose default depends on other
sections (input shape, phase starts). ``load_spec_text(print_spec(s))`` gives back
a spec whose ``model_dump`` equals ``s.model_dump()``.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from pydantic import BaseModel

from tapsc.language import ir
from tapsc.language.build_ir import field_names

INDENT = "  "


def value_text(value: Any) -> str:
    """One value in .taps syntax: numbers, names, `true`/`false`/`none`, "strings", (tuples)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if _is_name(value) else json.dumps(value)
    if isinstance(value, (tuple, list)):
        inner = ", ".join(value_text(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    raise TypeError(f"cannot print {value!r}")


def _is_name(text: str) -> bool:
    import re

    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(-[A-Za-z][A-Za-z0-9_]*)*", text) is not None \
        and text not in ("true", "false", "none")


def _changed(node: BaseModel, skip: Iterable[str] = (), baseline: BaseModel | None = None) -> dict[str, Any]:
    """Fields of ``node`` that differ from ``baseline``'s values (default: the class defaults;
    required fields always)."""
    out = {}
    for name, info in type(node).model_fields.items():
        if name in ("span", "kind") or name in skip:
            continue
        value = getattr(node, name)
        default = getattr(baseline, name) if baseline is not None else info.default
        if info.is_required() or value != default:
            out[name] = value
    return out


def _attack(name: str, attack: BaseModel, owner: BaseModel) -> str:
    """`name pgd(...)` with the settings that differ from the owner's default attack, which is
    what the reader fills the unnamed ones from (eval's default attack is not InputAttack())."""
    baseline = type(owner).model_fields[name].default
    return f"{name} {_call('pgd', [], _changed(attack, baseline=baseline))}"


def _call(name: str, positional: list[Any], named: dict[str, Any]) -> str:
    args = [value_text(v) for v in positional] + [f"{k} = {value_text(v)}" for k, v in named.items()]
    return f"{name}({', '.join(args)})" if args else name


def _section(head: str, lines: list[str]) -> list[str]:
    if not lines:
        return [head]
    return [f"{head} {{", *(INDENT + line for line in lines), "}"]


# ---------------------------------------------------------------- sections


def _data(data: ir.Data) -> list[str]:
    lines = [f"{name} {value_text(value)}" for name, value in _changed(data, ("dataset", "normalize",
             "train_augment", "test_augment")).items()]
    if data.normalize is not None:
        lines.insert(0, f"normalize mean {value_text(data.normalize.mean)} std {value_text(data.normalize.std)}")
    for split, items in (("train", data.train_augment), ("test", data.test_augment)):
        if items:
            lines.append(f"augment {split} {{ {'; '.join(_augmentation(item) for item in items)} }}")
    return _section(f"data {value_text(data.dataset)}", lines)


def _augmentation(item: ir.Node) -> str:
    if isinstance(item, ir.RandomCrop):
        return f"crop {item.size} pad {item.padding}"
    if isinstance(item, ir.CenterCrop):
        return f"center_crop {item.size}"
    return item.kind


def _layer(layer: ir.Node, depth: int) -> list[str]:
    suffix = f" as {layer.name}" if layer.name is not None else ""
    if isinstance(layer, ir.Residual):
        lines = [line for inner in layer.body for line in _layer(inner, depth + 1)]
        shortcut = [line for inner in layer.shortcut for line in _layer(inner, depth + 1)]
        if shortcut:
            lines += _section("shortcut", shortcut)
        return _section("residual" + suffix, lines)
    named = _changed(layer, ("name",))
    positional = [named.pop(name) for name in layer.positional[:layer.printed_positional]]
    return [_call(layer.kind, positional, named) + suffix]


def _model(spec: ir.Spec) -> list[str]:
    lines = [f"input {value_text(spec.model.input_shape)}"]
    marker = spec.split.index if isinstance(spec.split, ir.SplitAtLayer) else None
    for index, layer in enumerate(spec.model.layers):
        if index == marker:
            lines.append("split")
        lines += _layer(layer, 1)
    if marker is not None and marker >= len(spec.model.layers):
        lines.append("split")
    return _section("model", lines)


def _perturbation(p: ir.Perturbation) -> list[str]:
    lines = [f"{name} {value_text(value)}" for name, value in _changed(p, ("norm", "schedule")).items()]
    s = p.schedule
    lines.append(f"schedule {s.shape} from epoch {s.start_epoch} to {s.end_epoch}")
    return _section(f"perturbation {p.norm}", lines)


def _phase(phase: ir.Node) -> list[str]:
    head = f"phase {phase.kind} from epoch {phase.start}"
    if phase.end is not None:
        head += f" until epoch {phase.end}"
    lines = []
    for name, value in _changed(phase, ("start", "end")).items():
        if isinstance(value, tuple(ir.CONNECTOR_CLASSES.values())):
            lines.append(f"connector {_call(value.kind, [], {k: getattr(value, k) for k in field_names(type(value))})}")
        elif isinstance(value, (ir.InputAttack, ir.LatentAttack)):
            lines.append(_attack(name, value, phase))
        else:
            lines.append(f"{name} {value_text(value)}")
    return _section(head, lines)


def _method(method: ir.Method) -> list[str]:
    lines = [f"{name} {value_text(value)}" for name, value in _changed(method, ("phases",)).items()]
    for phase in method.phases:
        lines += _phase(phase)
    return _section("method", lines)


def _settings(head: str, node: BaseModel, baseline: BaseModel | None = None) -> list[str]:
    lines = []
    for name, value in _changed(node, baseline=baseline).items():
        if isinstance(value, (ir.InputAttack, ir.LatentAttack)):
            lines.append(_attack(name, value, node))
        elif isinstance(node, ir.Optimizer) and name == "warmup":
            lines.append(f"warmup {value} epochs")
        else:
            lines.append(f"{name} {value_text(value)}")
    return _section(head, lines)


def print_spec(spec: ir.Spec) -> str:
    """The canonical .taps text of ``spec`` (expanded, every non-default setting named)."""
    split = [] if isinstance(spec.split, ir.SplitAtLayer) else [f"split at {spec.split.name}"] \
        if isinstance(spec.split, ir.SplitAtName) else [f"split relus_in_classifier = {spec.split.count}"]
    parts = [
        _data(spec.data),
        _model(spec),
        split,
        _perturbation(spec.perturbation),
        _method(spec.method),
        _settings(f"optimizer {spec.optimizer.kind}", spec.optimizer),
        _settings("eval", spec.eval, ir.Eval(select=ir.default_select(spec.method.phases))),  # select follows phases
        _settings("export", spec.export),
        _settings("distributed", spec.distributed) if _changed(spec.distributed) else [],
    ]
    return "\n".join(line for part in parts for line in part) + "\n"


# ---------------------------------------------------------------- layer table (for `tapsc show`)


def layer_rows(spec: ir.Spec) -> list[dict[str, Any]]:
    """One row per top-level layer: index, kind, arguments, output shape, parameters, ReLUs, part."""
    from tapsc.language.shapes import count_relus, split_index

    split = split_index(spec.model, spec.split)
    rows, shape = [], spec.model.input_shape
    for index, layer in enumerate(spec.model.layers):
        params = layer.parameter_count(shape)
        shape = layer.out_shape(shape)
        arguments = _layer(layer, 0)[0] if not isinstance(layer, ir.Residual) else \
            f"residual ({len(layer.body)} layers, shortcut {len(layer.shortcut) or 'identity'})"
        rows.append({"index": index, "kind": layer.kind, "layer": arguments, "shape": shape, "params": params,
                     "relus": count_relus((layer,)), "part": "classifier" if index >= split else "extractor"})
    return rows


def schedule_lines(spec: ir.Spec) -> list[str]:
    """The training schedule in words: phases, eps ramp, learning-rate decay."""
    epochs, p = spec.optimizer.epochs, spec.perturbation
    lines = []
    for phase in spec.method.phases:
        end = phase.end if phase.end is not None else epochs
        lines.append(f"epochs [{phase.start}, {end}): {phase.kind}")
    s, train_eps = p.schedule, p.train_eps if p.train_eps is not None else p.eps
    lines.append(f"eps: 0 before epoch {s.start_epoch}, {s.shape} ramp to {train_eps:.6g} by epoch "
                 f"{s.end_epoch}, certified at {p.eps:.6g}")
    opt = spec.optimizer
    decay = f", x{opt.decay_factor:g} at epochs {', '.join(map(str, opt.milestones))}" if opt.milestones else ""
    if opt.schedule == "cosine":
        decay = ", cosine to 0"
    if opt.warmup:
        decay = f", {opt.warmup} warm-up epochs{decay}"
    lines.append(f"{opt.kind} lr {opt.lr:g}{decay}; {epochs} epochs, seed {opt.seed}")
    return lines
