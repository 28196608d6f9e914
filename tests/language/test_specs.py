"""Every shipped spec: passes the checks, matches its golden IR, and round-trips
through the canonical printer; the built-in library blocks expand as documented."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tapsc.errors import TapscError
from tapsc.language import ir
from tapsc.language.printer import layer_rows, print_spec
from tapsc.language.shapes import count_relus, split_index
from tapsc.language.spec import load_spec, load_spec_text

ROOT = Path(__file__).parent.parent.parent
# specs/*.taps and one level of subfolders (specs/study/); specs/lib and specs/*/lib hold
# included fragments, not specs
SPECS = sorted([*(ROOT / "specs").glob("*.taps"), *(ROOT / "specs").glob("*/*.taps")])
SPECS = [path for path in SPECS if path.parent.name != "lib"]
GOLDEN_IR = ROOT / "tests" / "golden" / "ir"


def case(path: Path) -> str:
    """The golden stem: `cnn7_cifar_8`, or `study_fashion_taps` for specs/study/fashion_taps.taps."""
    return "_".join(path.relative_to(ROOT / "specs").with_suffix("").parts)


def dump(spec: ir.Spec) -> dict:
    return spec.model_dump(mode="json")


def dump_node(node) -> dict:
    return node.model_dump(mode="json")  # spans count in ==, not in dumps


@pytest.mark.parametrize("path", SPECS, ids=case)
def test_spec_header_names_what_it_reproduces_and_how_to_run_it(path: Path):
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert header and path.read_text().startswith("#")
    assert any(f"tapsc run {path.relative_to(ROOT).as_posix()}" in line for line in header)


@pytest.mark.parametrize("path", SPECS, ids=case)
def test_golden_ir(path: Path, update_goldens: bool):
    text = load_spec(path).model_dump_json(indent=2) + "\n"
    golden = GOLDEN_IR / f"{case(path)}.json"
    if update_goldens or not golden.exists():
        golden.write_text(text)
    assert json.loads(text) == json.loads(golden.read_text())


@pytest.mark.parametrize("path", SPECS, ids=case)
def test_round_trip_through_printer(path: Path):
    spec = load_spec(path)
    printed = print_spec(spec)
    again = load_spec_text(printed, "<printed>")
    assert dump(again) == dump(spec)
    assert print_spec(again) == printed  # the canonical form is a fixed point


def test_loading_a_spec_does_not_import_torch():
    import subprocess

    code = ("import sys; from tapsc.language.spec import load_spec; load_spec('specs/cnn7_cifar_8.taps'); "
            "import tapsc.language.check, tapsc.language.printer; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------------- the paper's settings


def test_cnn7_cifar_8_matches_the_reference():
    spec = load_spec(ROOT / "specs" / "cnn7_cifar_8.taps")
    assert spec.data.dataset == "cifar10" and spec.data.batch == 128
    assert spec.data.normalize.mean == (0.4914, 0.4822, 0.4465)
    assert [a.kind for a in spec.data.train_augment] == ["crop", "hflip"]
    assert spec.data.train_augment[0].padding == 2
    assert spec.perturbation.eps == pytest.approx(8 / 255)
    assert (spec.perturbation.schedule.start_epoch, spec.perturbation.schedule.end_epoch) == (1, 81)
    assert [(p.kind, p.start, p.end) for p in spec.method.phases] == [
        ("natural", 0, 1), ("ibp", 1, 81), ("taps", 81, None)]
    assert spec.method.phases[1].shi_regularizer == 0.5
    taps = spec.method.phases[2]
    assert (taps.connector.kind, taps.connector.c, taps.weight) == ("rectified_linear", 0.5, 5.0)
    assert (taps.attack.steps, taps.attack.estimator) == (20, "multi")
    opt = spec.optimizer
    assert (opt.kind, opt.lr, opt.milestones, opt.decay_factor, opt.clip, opt.l1, opt.epochs) == (
        "adam", 5e-4, (120, 140), 0.2, 10.0, 2e-6, 160)
    assert spec.method.initialization == "shi"
    assert dump_node(spec.split) == {"kind": "relus_in_classifier", "count": 1}


@pytest.mark.parametrize("stem, split, l1, weight, lam", [
    ("cnn7_mnist_01", 3, 1e-6, 5, None), ("cnn7_mnist_01_staps", 1, 2e-5, 5, 0.4),
    ("cnn7_mnist_03", 1, 0.0, 5, None), ("cnn7_mnist_03_staps", 1, 2e-6, 5, 0.6),
    ("cnn7_cifar_2", 5, 2e-6, 5, None), ("cnn7_cifar_2_staps", 1, 2e-6, 2, 0.1),
    ("cnn7_cifar_8", 1, 2e-6, 5, None), ("cnn7_cifar_8_staps", 1, 2e-6, 5, 0.7),
    ("cnn7_tinyimagenet_1", 1, 0.0, 5, None), ("cnn7_tinyimagenet_1_staps", 2, 1e-6, 5, 0.4),
])
def test_table1_hyperparameters(stem, split, l1, weight, lam):
    spec = load_spec(ROOT / "specs" / f"{stem}.taps")
    last = spec.method.phases[-1]
    assert spec.split.count == split and spec.optimizer.l1 == l1 and last.weight == weight
    assert last.kind == ("staps" if lam else "taps")
    if lam:
        assert last.sabr_lambda == lam
    if "mnist" in stem:
        assert spec.perturbation.train_eps == pytest.approx(2 * spec.perturbation.eps if "01" in stem else 0.4)
        assert (spec.data.batch, spec.optimizer.epochs, spec.optimizer.milestones) == (256, 70, (50, 60))
    if "tinyimagenet" in stem:
        assert spec.model.input_shape == (3, 56, 56) and spec.model.layers[-1].out_features == 200
        assert [a.kind for a in spec.data.test_augment] == ["center_crop"]


# ---------------------------------------------------------------- library and model building


def _model(body: str, data: str = "data mnist") -> ir.Spec:
    return load_spec_text(f"""{data}
model {body}
perturbation linf {{ eps 0.1 }}
method {{ phase ibp }}
optimizer adam {{ epochs 2 }}""")


def test_library_cnn7_has_the_papers_shape():
    spec = _model("cnn7(classes = 10)", "data cifar10")
    kinds = [layer.kind for layer in spec.model.layers]
    assert kinds.count("conv") == 5 and kinds.count("linear") == 2 and count_relus(spec.model.layers) == 6
    assert [l.out_channels for l in spec.model.layers if l.kind == "conv"] == [64, 64, 128, 128, 128]
    assert [l.stride for l in spec.model.layers if l.kind == "conv"] == [1, 1, 2, 1, 1]
    assert layer_rows(spec)[-1]["shape"] == (10,)


def test_block_parameters_arithmetic_and_repeat():
    spec = _model("""{ block_here(8) }
block block_here(width, depth = 2) {
  repeat depth { conv(width * 2, kernel = 3, padding = (depth - 1)); relu }
  flatten; linear(10)
}""".replace("block_here(8) }\n", "block_here(8) }\n", 1))
    convs = [l for l in spec.model.layers if l.kind == "conv"]
    assert [(c.out_channels, c.padding) for c in convs] == [(16, 1), (16, 1)]


def test_arithmetic_with_a_zero_right_operand():
    # found by the mutation test: `+`, `-` and `*` with a right operand of 0 raised
    # ZeroDivisionError because every operation was evaluated, not only the written one
    spec = load_spec_text("data mnist\nmodel { flatten; linear(10 - 0 + 0) }\n"
                          "perturbation linf { eps 0.1 }\nmethod { phase ibp }\n"
                          "optimizer adam { epochs 2 * 1; l1 1e-6 * 0 }")
    assert spec.model.layers[-1].out_features == 10
    assert spec.optimizer.epochs == 2 and spec.optimizer.l1 == 0
    with pytest.raises(TapscError, match="division by zero"):
        load_spec_text("data mnist\nmodel { flatten; linear(10 / 0) }\nperturbation linf { eps 0.1 }\n"
                       "method { phase ibp }\noptimizer adam { epochs 2 }")


def test_residual_blocks_and_split_marker():
    spec = _model("{ conv(4, kernel = 3, padding = 1); relu; basic_block(4); split; flatten; linear(10) }")
    residual = spec.model.layers[2]
    assert residual.kind == "residual" and len(residual.body) == 5 and residual.shortcut == ()
    assert dump_node(spec.split) == {"kind": "at_layer", "index": 4}
    assert split_index(spec.model, spec.split) == 4


def test_default_input_shape_follows_dataset_and_crop():
    assert _model("{ flatten; linear(10) }", "data digits").model.input_shape == (1, 8, 8)
    cropped = _model("{ flatten; linear(10) }",
                     "data cifar10 { augment { crop 24; hflip }; augment test { center_crop 24 } }")
    assert cropped.model.input_shape == (3, 24, 24)
    explicit = _model("{ input (784,); linear(10) }")  # a flat input of the same size is allowed
    assert explicit.model.input_shape == (784,)


def test_statement_and_call_forms_agree():
    a = _model("{ conv(8, kernel = 3, stride = 2, padding = 1); flatten; linear(10) }")
    b = _model("{ conv 8 kernel 3 stride 2 pad 1; flatten; linear out = 10 }")
    assert dump(a) == dump(b)


@pytest.mark.parametrize("attack", ["eval { attack pgd(steps = 5, restarts = 1) }",
                                    "eval { attack pgd(loss = ce) }",
                                    "eval { attack pgd(restarts = 3, step_size = 0.01) }"])
def test_round_trip_keeps_attack_settings_equal_to_another_default(attack: str):
    # Eval's default attack (50 steps, 2 restarts, margin) differs from InputAttack()'s defaults;
    # the printer must name every setting the reader would otherwise fill differently.
    text = ("data digits { batch 64 }\nmodel { input (1, 8, 8); flatten; linear(32); relu; linear(10) }\n"
            "perturbation linf { eps 0.1 }\nmethod { phase natural until epoch 1; phase pgd }\n"
            f"optimizer adam {{ epochs 2 }}\n{attack}\n")
    spec = load_spec_text(text, "<attack>")
    again = load_spec_text(print_spec(spec), "<printed>")
    assert dump(again) == dump(spec)
