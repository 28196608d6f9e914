"""Layer and optimizer vocabulary beyond the paper's: leaky_relu (and later additions).

Each form is checked end to end in the language: it loads to the IR it means, bad values
are clean diagnostics at the value, and the printer round-trips it."""

from __future__ import annotations

import pytest

from tapsc import ir
from tapsc.errors import TapscError
from tapsc.printer import print_spec
from tapsc.shapes import count_relus, split_index
from tapsc.spec import load_spec_text

TEMPLATE = """data mnist {{ batch 64 }}
model {{ {model} }}
split relus_in_classifier = {split}
perturbation linf {{ eps 0.1 }}
method {{ phase ibp until epoch 2; phase taps }}
optimizer {optimizer}
"""


def spec_of(model: str, split: int = 0, optimizer: str = "adam { epochs 4 }") -> ir.Spec:
    return load_spec_text(TEMPLATE.format(model=model, split=split, optimizer=optimizer))


def round_trips(spec: ir.Spec) -> str:
    text = print_spec(spec)
    assert load_spec_text(text).model_dump() == spec.model_dump()
    return text


def first_error(model: str, **kwargs):
    with pytest.raises(TapscError) as info:
        spec_of(model, **kwargs)
    return info.value.diagnostics[0]


# ---------------------------------------------------------------- leaky_relu


@pytest.mark.parametrize("written,slope", [("leaky_relu(0.05)", 0.05), ("leaky_relu(slope = 0.2)", 0.2),
                                           ("leaky_relu", 0.01), ("leaky_relu(0)", 0.0)])
def test_leaky_relu_forms_load_and_round_trip(written, slope):
    spec = spec_of(f"flatten; linear(20); {written}; linear(10)")
    layer = spec.model.layers[2]
    assert isinstance(layer, ir.LeakyReLU) and layer.slope == slope
    round_trips(spec)


@pytest.mark.parametrize("slope,column", [("1.5", 42), ("1", 42), ("-0.1", 42)])
def test_leaky_relu_slope_outside_0_1_is_an_error_at_the_value(slope, column):
    d = first_error(f"flatten; linear(100); leaky_relu({slope}); linear(10)")
    assert d.code == "bad-slope" and (d.span.line, d.span.column) == (2, column)


def test_leaky_relu_misspelt_argument_and_kind_suggest_the_right_name():
    d = first_error("flatten; linear(100); leaky_relu(slop = 0.1); linear(10)")
    assert d.code == "unknown-argument" and "slope" in d.help
    d = first_error("flatten; linear(100); leaky_rel(0.1); linear(10)")
    assert d.code == "unknown-layer" and "leaky_relu" in d.help


def test_leaky_relu_counts_as_an_activation_for_the_split():
    spec = spec_of("flatten; linear(20); leaky_relu(0.1); linear(20); relu; linear(20); leaky_relu; linear(10)",
                   split=2)
    assert count_relus(spec.model.layers) == 3
    assert split_index(spec.model, spec.split) == 3  # after the first leaky relu
    assert ir.is_activation("leaky_relu") and ir.is_activation(ir.ReLU()) and not ir.is_activation("linear")
    assert "leaky_relu" in ir.LAYER_KINDS


def test_compiled_leaky_relu_is_a_relu_layer_of_the_network():
    from tapsc.compile import compile_network

    spec = spec_of("flatten; linear(20); leaky_relu(0.1); linear(20); relu; linear(10)", split=1)
    network = compile_network(spec)
    assert network.relu_layers() == [2, 4]
