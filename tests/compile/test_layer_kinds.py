"""Every layer kind is complete, checked from the registries, so a kind that lacks a piece fails
here with its name rather than in a user's run.

A kind is its IR class (`ir.LAYER_NODES`, derived from the `ir.Layer` union: positional
arguments, aliases, shape rule, parameter count, "is an activation") and its torch class
(`tapsc.layers.LAYERS`: forward, interval, magnitude, CROWN rule, ONNX form), plus one case in
tests/layer_cases.py and one row of the layer table in docs/language.md. The soundness of each
rule is tested from the same cases (tests/compile/test_layer_soundness.py,
tests/certify/test_rule_soundness.py); here: that every piece exists, that the torch-free facts
agree with the torch class, and the pieces no soundness test sees (``relaxed``, the ONNX form,
training's CROWN-IBP, which still dispatches on classes in `tapsc.method.crown_ibp`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from compile_helpers import make_spec
from layer_cases import LAYER_CASES, randomize

from tapsc.compile import Network
from tapsc.export.onnx import export_onnx
from tapsc.language import ir
from tapsc.language.blocks import LAYER_CLASSES
from tapsc.language.printer import print_spec, value_text
from tapsc.language.spec import load_spec_text
from tapsc.layers import LAYERS, BoundLayer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "language.md"


def _subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]


def test_every_ir_layer_class_is_in_the_union():
    classes = [cls for cls in _subclasses(ir.LayerNode) if "kind" in cls.model_fields]
    outside = [cls.__name__ for cls in classes if cls not in ir.LAYER_NODES.values()]
    assert not outside, f"IR layer classes missing from the `ir.Layer` union: {outside}"


def test_every_ir_kind_has_a_layer_class_and_every_kind_a_case():
    assert not set(ir.LAYER_KINDS) - set(LAYERS), \
        f"IR layer kinds without a layer class in tapsc.layers: {sorted(set(ir.LAYER_KINDS) - set(LAYERS))}"
    assert not set(LAYERS) ^ set(LAYER_CASES), \
        f"kinds without a case in tests/layer_cases.py: {sorted(set(LAYERS) - set(LAYER_CASES))}; " \
        f"cases without a kind: {sorted(set(LAYER_CASES) - set(LAYERS))}"


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_the_layer_class_declares_every_interpretation(kind):
    cls = LAYERS[kind]
    missing = [name for name in ("build", "forward") if getattr(cls, name) is getattr(BoundLayer, name)]
    missing += [] if callable(getattr(cls, "onnx_module", None)) else ["onnx_module (the ONNX form)"]
    if cls.branches is BoundLayer.branches:  # a leaf: certification uses its own rules
        missing += ["magnitude"] if cls.magnitude is BoundLayer.magnitude else []
        missing += [] if callable(getattr(cls, "backward", None)) else ["backward (the CROWN rule)"]
    assert not missing, f"layer kind `{kind}` ({cls.__name__}) declares no {', '.join(missing)}"


@pytest.mark.parametrize("kind", sorted(ir.LAYER_KINDS))
def test_the_ir_class_declares_its_facts(kind):
    cls = ir.LAYER_NODES[kind]
    assert cls.out_shape is not ir.LayerNode.out_shape, f"layer kind `{kind}` ({cls.__name__}) has no out_shape"
    fields = set(cls.model_fields)
    assert set(cls.positional) <= fields and set(cls.aliases.values()) <= fields, \
        f"`{kind}`: positional arguments or aliases name no field"
    assert 0 <= cls.printed_positional <= len(cls.positional)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_shape_rule_and_parameter_count_agree_with_the_layer(kind):
    node, in_shape = LAYER_CASES[kind]
    layer, out_shape = LAYERS[kind].build(node, in_shape)
    with torch.no_grad():
        y = layer.eval()(torch.rand(2, *in_shape))
    assert tuple(y.shape[1:]) == tuple(out_shape), f"`{kind}`: build's shape {out_shape}, forward's {y.shape[1:]}"
    if isinstance(node, ir.LayerNode):
        assert node.out_shape(in_shape) == tuple(out_shape), f"`{kind}`: the IR shape rule disagrees"
        assert node.parameter_count(in_shape) == sum(p.numel() for p in layer.parameters()), \
            f"`{kind}`: the IR parameter count disagrees with the layer's parameters"


@pytest.mark.parametrize("kind", sorted(kind for kind, cls in LAYERS.items()
                                         if callable(getattr(cls, "backward", None)) and not cls.relaxed))
def test_a_rule_that_reads_the_input_box_is_declared_relaxed(kind):
    """A kind not ``relaxed`` is bounded exactly (its rule is a transpose): the coefficients and
    bias it returns do not depend on the input box. One that relaxes over the box must say so,
    or CROWN leaves that box loose (sound, but silently weaker)."""
    node, in_shape = LAYER_CASES[kind]
    layer, _ = LAYERS[kind].build(node, in_shape)
    layer = randomize(layer, 0).double().eval()
    generator = torch.Generator().manual_seed(3)
    A_BSY = torch.randn(2, 3, *layer(torch.zeros(1, *in_shape, dtype=torch.float64)).shape[1:],
                        generator=generator, dtype=torch.float64)
    results = []
    for radius in (0.01, 3.0):
        centre = torch.randn(2, *in_shape, generator=generator, dtype=torch.float64)
        A_in, bias, _ = layer.backward(A_BSY, centre - radius, centre + radius)
        results.append((A_in, bias))
    (A_1, bias_1), (A_2, bias_2) = results
    assert torch.allclose(A_1, A_2) and torch.allclose(bias_1, bias_2), \
        f"`{kind}`: its backward rule depends on the input box; set `relaxed = True` on {LAYERS[kind].__name__}"


def _framed(kind: str) -> tuple[ir.LayerNode, tuple[ir.LayerNode, ...]]:
    """The case's node in an MNIST model (after a flatten if it takes vectors): (node, layers)."""
    node, in_shape = LAYER_CASES[kind]
    before = (ir.Flatten(),) if len(in_shape) == 1 else ()
    return node, (*before, node, ir.Flatten(), ir.Linear(out_features=10))


def _load_layer(kind: str, written: str) -> ir.LayerNode:
    """``written`` (one layer statement) loaded in the MNIST frame of ``kind``'s case."""
    node, layers = _framed(kind)
    before = "flatten; " if layers[0] is not node else ""
    text = (f"data mnist {{ batch 8 }}\nmodel {{ {before}{written}; flatten; split; linear(10) }}\n"
            "perturbation linf { eps 0.1 }\nmethod { phase ibp }\noptimizer adam { epochs 1 }\n")
    return load_spec_text(text).model.layers[layers.index(node)]


@pytest.mark.parametrize("kind", sorted(ir.LAYER_KINDS))
def test_printer_round_trips_every_kind(kind):
    _, layers = _framed(kind)
    spec = make_spec(layers, input_shape=(1, 28, 28), split=ir.SplitAtLayer(index=len(layers) - 1),
                     phases=(ir.IBPPhase(),))
    text = print_spec(spec)
    assert load_spec_text(text).model_dump() == spec.model_dump(), f"`{kind}` does not round-trip:\n{text}"


@pytest.mark.parametrize("kind", sorted(LAYER_CLASSES))
def test_positional_arguments_and_aliases_load_as_their_fields(kind):
    node, _ = _framed(kind)
    cls = type(node)
    named = [name for name in node.model_fields_set if name not in cls.positional]
    args = [value_text(getattr(node, name)) for name in cls.positional]
    args += [f"{name} = {value_text(getattr(node, name))}" for name in named]
    written = f"{kind}({', '.join(args)})" if args else kind
    loaded = _load_layer(kind, written)
    assert loaded.model_dump() == node.model_dump(), f"`{written}` loads as {loaded!r}"
    required = [name for name, info in cls.model_fields.items() if info.is_required()]
    for alias, field in cls.aliases.items():
        values = {name: getattr(node, name) for name in (*required, field)}
        args = [f"{alias if name == field else name} = {value_text(value)}" for name, value in values.items()]
        written = f"{kind}({', '.join(args)})"
        assert getattr(_load_layer(kind, written), field) == values[field], f"`{written}`: `{alias}` is not `{field}`"


def _with_head(kind: str) -> Network:
    """The case's layer (random parameters and statistics, `randomize`), then flatten and a
    linear layer to 3 logits; float32, eval mode."""
    node, in_shape = LAYER_CASES[kind]
    torch.manual_seed(0)
    layer, shape = LAYERS[kind].build(node, in_shape)
    randomize(layer, 0)
    flatten, flat = LAYERS["flatten"].build(ir.Flatten(), shape)
    head, _ = LAYERS["linear"].build(ir.Linear(out_features=3), flat)
    return Network([layer, flatten, head], 0, in_shape, 3).eval()


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_onnx_form_matches_the_layer(kind, tmp_path):
    network = _with_head(kind)
    x = torch.rand(4, *network.input_shape, generator=torch.Generator().manual_seed(1)) * 2 - 0.5
    report = export_onnx(network, tmp_path / "net.onnx", x)  # raises on a parity failure or an odd op
    assert report.max_abs_diff is None or report.parity_ok


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_training_crown_ibp_bound_is_sound_or_refused(kind):
    """Training's CROWN-IBP (`tapsc.method.crown_ibp`, float32, no rounding terms) bounds the
    margins of a network holding the kind from above at sampled points, or refuses the kind."""
    from tapsc.errors import TapscError
    from tapsc.method.crown_ibp import crown_ibp_margin_upper

    network = _with_head(kind)
    generator = torch.Generator().manual_seed(2)
    y = torch.tensor([0, 1, 2] * 4)
    centre = torch.randn(len(y), *network.input_shape, generator=generator) * 1.5
    radius = torch.tensor([0.01, 0.1, 0.5, 2.0]).repeat_interleave(3).view(-1, *[1] * len(network.input_shape))
    lo, hi = centre - radius, centre + radius
    try:
        with torch.no_grad():
            upper_BK = crown_ibp_margin_upper(network, lo, hi, y)
    except TapscError as error:
        assert error.diagnostics[0].code == "no-training-relaxation"
        return
    u = torch.rand(2000, *lo.shape, generator=generator)
    u[1000:] = (u[1000:] < 0.5).float()  # box corners
    with torch.no_grad():
        logits = network((lo + u * (hi - lo)).flatten(0, 1)).reshape(2000, len(y), 3)
    margins = (logits - logits.gather(2, y.view(1, -1, 1).expand(2000, -1, 1))).amax(0)
    excess = (margins - upper_BK - 1e-4 * (1 + margins.abs())).max().item()
    assert excess <= 0, f"`{kind}`: a sampled margin exceeds training's CROWN-IBP bound by {excess:.3g}"


def _documented_positional() -> dict[str, str]:
    """kind -> the positional column of the layer table in docs/language.md."""
    text = DOCS.read_text()
    table = text[text.index("| layer | positional |"):]
    rows = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        for kind in re.findall(r"`(\w+)", cells[0]):
            rows[kind] = cells[1]
    return rows


@pytest.mark.parametrize("kind", sorted(ir.LAYER_KINDS))
def test_every_kind_has_a_row_in_the_language_docs(kind):
    rows = _documented_positional()
    assert kind in rows, f"docs/language.md's layer table has no row for `{kind}`"
    assert rows[kind] == ", ".join(ir.LAYER_NODES[kind].positional), \
        f"docs/language.md gives `{kind}` positional arguments `{rows[kind]}`"
