"""Layer and optimizer vocabulary beyond the paper's: leaky_relu (and later additions).

Each form is checked end to end in the language: it loads to the IR it means, bad values
are clean diagnostics at the value, and the printer round-trips it."""

from __future__ import annotations

import pytest

from tapsc.errors import Diagnostic, TapscError
from tapsc.language import ir
from tapsc.language.printer import print_spec
from tapsc.language.shapes import count_relus, layer_shapes, split_index
from tapsc.language.spec import load_spec_text

TEMPLATE = """data mnist {{ batch 64 }}
model {{ {model} }}
split relus_in_classifier = {split}
perturbation linf {{ eps 0.1 }}
method {{ phase ibp until epoch 2; phase taps }}
optimizer {optimizer}
"""


def spec_of(model: str, split: int = 0, optimizer: str = "adam { epochs 4 }", data: str = "mnist") -> ir.Spec:
    text = TEMPLATE.format(model=model, split=split, optimizer=optimizer).replace("mnist", data, 1)
    return load_spec_text(text)


def round_trips(spec: ir.Spec) -> str:
    text = print_spec(spec)
    assert load_spec_text(text).model_dump() == spec.model_dump()
    return text


def first_error(model: str, **kwargs) -> Diagnostic:
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


# ---------------------------------------------------------------- non-square windows


def test_non_square_conv_and_pools_load_infer_shapes_and_round_trip():
    spec = spec_of("conv(16, kernel = (3, 5), stride = (1, 2), padding = (1, 2)); relu; "
                   "maxpool(kernel = (2, 3)); avgpool((3, 1), stride = (1, 1), padding = (1, 0)); "
                   "conv(4, (1, 3)); flatten; linear(10)", data="cifar10")
    conv, _, maxpool, avgpool, conv2 = spec.model.layers[:5]
    assert (conv.kernel, conv.stride, conv.padding) == ((3, 5), (1, 2), (1, 2))
    assert maxpool.kernel == (2, 3) and maxpool.stride is None and avgpool.kernel == (3, 1)
    assert conv2.kernel == (1, 3)
    # H: 32 -> 32 -> 16 -> 16 -> 16; W: (32 + 4 - 5) // 2 + 1 = 16 -> 5 -> 5 -> 3
    assert layer_shapes(spec.model.layers, (3, 32, 32))[:5] == [(16, 32, 16), (16, 32, 16), (16, 16, 5),
                                                                  (16, 16, 5), (4, 16, 3)]
    text = round_trips(spec)
    assert "kernel = (3, 5), stride = (1, 2), padding = (1, 2)" in text
    assert round_trips(spec_of("conv(8, 3, 2, 1); flatten; linear(10)")).count("(") == 3  # squares stay numbers


@pytest.mark.parametrize("written,code,message", [
    ("conv(16, kernel = (3, 0))", "bad-kernel", "at least 1"),
    ("conv(16, kernel = (3, 5, 4))", "bad-value", "a whole number or a pair"),
    ("conv(16, kernel = 2.5)", "bad-value", "a whole number or a pair"),
    ("maxpool(kernel = (2, 4), padding = (1, -1))", "bad-padding", "at least 0"),
    ("maxpool(kernel = (2, 4), padding = (1, 3))", "shape-mismatch", "padding 1x3 is more than half its kernel 2x4"),
    ("conv(16, kernel = (40, 3))", "shape-mismatch", "kernel 40x3 does not fit a 28x28 input"),
])
def test_bad_window_sizes_are_one_clean_error_each(written, code, message):
    with pytest.raises(TapscError) as info:
        spec_of(f"{written}; flatten; linear(10)")
    assert len(info.value.diagnostics) == 1
    d = info.value.diagnostics[0]
    assert d.code == code and message in d.message and d.span is not None and d.span.line == 2


# ---------------------------------------------------------------- optimizer vocabulary


def test_adamw_cosine_and_warmup_load_and_round_trip():
    spec = spec_of("flatten; linear(10)", optimizer="adamw { weight_decay 0.01; schedule cosine; "
                                                     "warmup 3 epochs; epochs 10 }")
    opt = spec.optimizer
    assert (opt.kind, opt.weight_decay, opt.schedule, opt.warmup) == ("adamw", 0.01, "cosine", 3)
    assert "warmup 3 epochs" in round_trips(spec)
    assert round_trips(spec_of("flatten; linear(10)", optimizer="adam { warmup 2; epochs 4 }"))


def test_rescaling_epochs_moves_the_warmup():
    from tapsc.language.spec import with_epochs

    spec = spec_of("flatten; linear(10)", optimizer="adam { schedule cosine; warmup 10 epochs; epochs 100 }")
    rescaled = with_epochs(spec, 20)
    assert rescaled.spec.optimizer.warmup == 2 and "lr warm-up 10 -> 2 epochs" in rescaled.summary()
    assert with_epochs(spec, 2).spec.optimizer.warmup == 1  # at least one epoch, before the end


@pytest.mark.parametrize("optimizer,code,suggestion", [
    ("adamx { epochs 4 }", "unknown-optimizer", "adam"),
    ("adam { schedule cosin; epochs 4 }", "unknown-schedule", "cosine"),
    ("adam { warmup 3 epohcs; epochs 4 }", "bad-warmup", "epochs"),
    ("adamw { momentum 0.9; epochs 4 }", "momentum-not-sgd", None),
    ("adam { warmpu 3; epochs 4 }", "unknown-setting", "warmup"),
    ("adam { warmup 5 epochs; epochs 4 }", "warmup-too-long", None),
    ("adam { schedule cosine; decay 0.2 at (2); epochs 4 }", "milestones-with-cosine", None),
])
def test_optimizer_mistakes_are_clean_diagnostics(optimizer, code, suggestion):
    d = first_error("flatten; linear(10)", optimizer=optimizer)
    assert d.code == code and d.span is not None and d.span.line == 6
    if suggestion:
        assert f"did you mean `{suggestion}`" in d.help


def test_warmup_takes_epoch_or_epochs_and_sgd_takes_momentum():
    assert spec_of("flatten; linear(10)", optimizer="adam { warmup 1 epoch; epochs 4 }").optimizer.warmup == 1
    assert spec_of("flatten; linear(10)", optimizer="sgd { momentum 0.5; epochs 4 }").optimizer.momentum == 0.5


def test_learning_rate_follows_the_formula_each_epoch():
    import math

    from tapsc.train.lr_schedule import learning_rate

    cosine = ir.Optimizer(lr=0.1, schedule="cosine", warmup=3, epochs=13)
    expected = [0.1 * (e + 1) / 4 for e in range(3)] + [0.1 * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(10)]
    assert [learning_rate(cosine, e) for e in range(13)] == pytest.approx(expected)
    step = ir.Optimizer(lr=1.0, milestones=(4, 6), decay_factor=0.5, warmup=1, epochs=8)
    assert [learning_rate(step, e) for e in range(8)] == pytest.approx([0.5, 1, 1, 1, 0.5, 0.5, 0.25, 0.25])


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
def test_the_run_scheduler_applies_the_formula(kind):
    import torch

    from tapsc.train.lr_schedule import learning_rate
    from tapsc.train.run import make_optimizer

    spec = spec_of("flatten; linear(10)", optimizer=f"{kind} {{ lr 0.2; schedule cosine; warmup 2 epochs; "
                                                    "weight_decay 0.01; epochs 6 }")
    optimizer, scheduler = make_optimizer(spec, torch.nn.Linear(3, 2))
    assert type(optimizer).__name__.lower() == kind
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([learning_rate(spec.optimizer, e) for e in range(6)])


# ---------------------------------------------------------------- named layers and `split at NAME`

NAMED = ("conv(4, kernel = 3) as stem; relu as act; residual as blk { conv(4, 3, padding = 1) as inner; relu }; "
         "flatten; linear(10) as head")


def named_spec(model: str, split_line: str) -> ir.Spec:
    text = TEMPLATE.format(model=model, split=0, optimizer="adam { epochs 4 }")
    return load_spec_text(text.replace("split relus_in_classifier = 0", split_line))


def test_named_layers_and_split_at_a_name_load_and_round_trip():
    spec = named_spec(NAMED, "split at act")
    assert [layer.name for layer in spec.model.layers] == ["stem", "act", "blk", None, "head"]
    assert spec.model.layers[2].body[0].name == "inner"
    assert spec.split.model_dump() == {"kind": "at_name", "name": "act"} and split_index(spec.model, spec.split) == 1
    text = round_trips(spec)
    assert "conv(4, kernel = 3) as stem" in text and "residual as blk {" in text and "split at act" in text
    # unnamed layers dump as before names existed (golden IR stays stable)
    assert "name" not in spec.model.layers[3].model_dump() and spec.model.layers[0].model_dump()["name"] == "stem"


def test_split_at_a_number_is_at_layer():
    spec = named_spec("conv(4, kernel = 3); relu; flatten; linear(10)", "split at 2")
    assert spec.split.model_dump() == {"kind": "at_layer", "index": 2}


@pytest.mark.parametrize("model,split_line,code,line,column,text", [
    (NAMED, "split at stm", "unknown-layer-name", 3, 10, "did you mean `stem`"),
    (NAMED, "split at inner", "split-inside-residual", 3, 10, "residual as NAME"),
    ("conv(4, kernel = 3) as stem; relu as stem; flatten; linear(10)", "", "duplicate-layer-name", 2, 46,
     "line 2"),
    ("conv(4, kernel = 3) as; relu; flatten; linear(10)", "", "bad-layer-name", 2, 29, "as stem"),
    ("conv(4, kernel = 3) as a b; relu; flatten; linear(10)", "", "bad-layer-name", 2, 32, "as stem"),
    ("conv(4, kernel = 3, name = x); relu; flatten; linear(10)", "", "unknown-argument", 2, 29, None),
])
def test_layer_name_mistakes_are_clean_diagnostics(model, split_line, code, line, column, text):
    with pytest.raises(TapscError) as info:
        named_spec(model, split_line)
    d = info.value.diagnostics[0]
    assert d.code == code and (d.span.line, d.span.column) == (line, column)
    if text:
        assert text in d.help


def test_compiled_network_splits_at_the_named_layer():
    from tapsc.compile import compile_network

    network = compile_network(named_spec(NAMED, "split at blk"))
    assert network.split == 2
