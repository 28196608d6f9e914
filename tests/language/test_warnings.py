"""Check-time warnings and the dataset catalogue: specs that are legal but probably not meant
(tests/golden/warnings: `# expect: CODE LINE:COL`), and mistakes that used to pass `tapsc check`
and die in `tapsc run` (an empty classifier, an input that is not the dataset's shape...)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tapsc.data.catalogue import CATALOGUE
from tapsc.errors import TapscError
from tapsc.language import ir, limits
from tapsc.language.diagnostics import render_diagnostics
from tapsc.language.spec import load_spec, load_spec_text

ROOT = Path(__file__).resolve().parents[2]
WARNINGS = ROOT / "tests" / "golden" / "warnings"
CASES = sorted(WARNINGS.glob("*.taps"))
QUICKSTART = ROOT / "specs" / "quickstart.taps"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_warning_has_code_and_position_and_does_not_fail(path: Path):
    code, line, column = re.match(r"# expect: (\S+) (\d+):(\d+)", path.read_text()).groups()
    found = []
    load_spec(path, warnings=found)  # no TapscError: a warning is not an error
    assert [(d.code, d.severity) for d in found] == [(code, "warning")]
    assert (found[0].span.line, found[0].span.column) == (int(line), int(column))
    text = render_diagnostics(found)
    assert text.startswith(f"warning[{code}]: ") and "^" in text


def test_check_cli_prints_warning_and_exits_zero():
    result = subprocess.run([sys.executable, "-m", "tapsc", "check", str(WARNINGS / "relu_after_logits.taps")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "warning[relu-after-logits]" in result.stderr
    assert "Traceback" not in result.stderr


def _error(overrides, path=QUICKSTART):
    with pytest.raises(TapscError) as info:
        load_spec(path, overrides)
    return info.value.diagnostics[0]


def test_input_shape_against_the_dataset_chosen_by_set():
    diagnostic = _error(["data.dataset=fashion-mnist"])
    assert diagnostic.code == "input-shape"
    assert "(1, 28, 28)" in diagnostic.message and "(1, 8, 8)" in diagnostic.message
    assert (diagnostic.span.file, diagnostic.span.line) == (str(QUICKSTART), 10)  # the `input` line
    assert "input (1, 28, 28)" in diagnostic.help


def test_class_count_against_the_dataset_chosen_by_set():
    problems = pytest.raises(TapscError, load_spec, QUICKSTART, ["data.dataset=tinyimagenet"]).value.diagnostics
    codes = {d.code for d in problems}
    assert {"wrong-class-count", "input-channels"} <= codes
    assert any("200 classes" in d.message for d in problems)


def test_split_after_the_last_layer_with_taps_is_an_empty_classifier():
    diagnostic = _error(["split.at_layer=11"])
    assert diagnostic.code == "empty-classifier"
    assert diagnostic.span.file == "<--set 1>" and diagnostic.span.column == 16  # at the `11`
    assert "at most 10" in diagnostic.help


def test_split_after_the_last_layer_is_fine_without_a_latent_attack():
    text = QUICKSTART.read_text().replace("split relus_in_classifier = 1", "split at_layer = 11")
    text = re.sub(r"phase taps \{.*?\n  \}", "phase ibp", text, flags=re.S)
    load_spec_text(text, "quick.taps")


def test_eps_beyond_the_pixel_range_points_at_the_override():
    diagnostic = _error(["perturbation.eps=2"])
    assert diagnostic.code == "eps-outside-range"
    assert diagnostic.span.file == "<--set 1>" and diagnostic.span.column == len("perturbation.eps=") + 1


def test_parameter_limit_is_declared_once_and_states_itself():
    assert limits.PARAMETER_COUNT in limits.ALL
    text = QUICKSTART.read_text().replace("linear(100); batchnorm; relu", "linear(5000000); batchnorm; relu")
    text = text.replace("conv(32, kernel = 3, stride = 2, padding = 1)", "conv(1500, kernel = 3, padding = 1)")
    with pytest.raises(TapscError) as info:
        load_spec_text(text, "big.taps")
    diagnostic = info.value.diagnostics[0]
    assert diagnostic.code == "too-many-parameters"
    assert f"{limits.PARAMETER_COUNT.value:,}" in diagnostic.message
    assert diagnostic.span.line == 14  # the huge linear layer


def test_catalogue_is_the_one_list_of_datasets():
    import tapsc.data.loading  # noqa: F401  (registers the loaders)
    from tapsc.data.base import LOADERS

    assert set(LOADERS) == set(CATALOGUE)
    assert set(ir.Data.model_fields["dataset"].annotation.__args__) == set(CATALOGUE)


def test_catalogue_shapes_match_what_the_digits_loader_serves():
    from tapsc.data import load_dataset

    data = ir.Data(dataset="digits", test_subset=3)
    image, label = load_dataset(data, train=False)[0]
    assert tuple(image.shape) == CATALOGUE["digits"].shape
    low, high = CATALOGUE["digits"].value_range
    assert low <= float(image.min()) and float(image.max()) <= high
    assert 0 <= label < CATALOGUE["digits"].classes


def test_the_catalogue_does_not_import_torch():
    code = "import tapsc.data.catalogue, tapsc.language.ir, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
