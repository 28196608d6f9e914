"""Bad specs: each file in tests/golden/errors states its expected first error as
`# expect: CODE LINE:COL` on its first line; a few also have the full rendered text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tapsc.errors import TapscError
from tapsc.language import ir
from tapsc.language.diagnostics import render_error
from tapsc.language.spec import load_spec, load_spec_text

ERRORS = Path(__file__).parent.parent / "golden" / "errors"
RENDERED = Path(__file__).parent.parent / "golden" / "rendered"
CASES = sorted(ERRORS.glob("*.taps"))
RENDERED_CASES = ["missing_comma", "unknown_dataset", "conv_on_flat", "phase_overlap", "unknown_setting",
                  "include_cycle", "connector_c_range", "random_test_augmentation"]


def _first_error(path: Path) -> TapscError:
    with pytest.raises(TapscError) as info:
        load_spec(path)
    return info.value


def test_there_are_enough_distinct_mistakes():
    codes = {re.match(r"# expect: (\S+)", p.read_text()).group(1) for p in CASES}
    assert len(CASES) >= 30 and len(codes) >= 25


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_bad_spec_reports_code_line_and_column(path: Path):
    code, line, column = re.match(r"# expect: (\S+) (\d+):(\d+)", path.read_text()).groups()
    diagnostic = _first_error(path).diagnostics[0]
    assert diagnostic.code == code
    assert diagnostic.span is not None
    assert (diagnostic.span.line, diagnostic.span.column) == (int(line), int(column))


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_rendered_error_has_location_caret_and_no_python_text(path: Path):
    text = render_error(_first_error(path))
    assert re.search(r"^error\[[a-z-]+\]: ", text)
    assert re.search(r"--> .+:\d+:\d+", text)
    assert "^" in text
    for leak in ("Traceback", "pydantic", "lark", "Token(", "validation error"):
        assert leak not in text


@pytest.mark.parametrize("stem", RENDERED_CASES)
def test_rendered_golden(stem: str, update_goldens: bool, monkeypatch):
    monkeypatch.chdir(ERRORS.parent.parent.parent)  # paths in the text are relative to the repo root
    text = render_error(_first_error(Path("tests/golden/errors") / f"{stem}.taps")) + "\n"
    golden = RENDERED / f"{stem}.txt"
    if update_goldens or not golden.exists():
        golden.write_text(text)
    assert text == golden.read_text()


def test_all_errors_of_a_pass_are_reported_together():
    text = """data mnsit { batch 0 }
model { flatten; linear(10) }
perturbation linf { eps -1 }
method { phase taps }
optimizer adam { lrate 3; epochs 0 }"""
    with pytest.raises(TapscError) as info:
        load_spec_text(text)
    codes = [d.code for d in info.value.diagnostics]
    assert codes == ["unknown-setting"]  # the build pass stops before validation
    with pytest.raises(TapscError) as info:
        load_spec_text(text.replace("lrate 3; ", ""))
    codes = sorted(d.code for d in info.value.diagnostics)
    assert codes == ["bad-batch", "bad-epochs", "bad-eps", "unknown-dataset"]


def test_many_errors_are_capped():
    body = "\n".join(f"optimizer {{ lrate{i} 1 }}" for i in range(30))
    with pytest.raises(TapscError) as info:
        load_spec_text(body)
    text = render_error(info.value)
    assert len(info.value.diagnostics) == 30
    assert "... and 10 more" in text


def _augment_statement(cls: type[ir.Node]) -> str:
    """`kind` or `kind 6`: the augmentation with its required sizes (6 fits digits' 8x8)."""
    kind = cls.model_fields["kind"].default
    return kind + " 6" * sum(f.is_required() for f in cls.model_fields.values())


@pytest.mark.parametrize("cls", ir.AUGMENTATION_CLASSES, ids=lambda c: c.__name__)
def test_only_deterministic_augmentations_are_allowed_in_augment_test(cls: type[ir.Node]):
    statement = _augment_statement(cls)
    text = f"""data digits {{ augment train {{ {statement} }}; augment test {{ {statement} }} }}
model {{ flatten; linear(10) }}
perturbation linf {{ eps 0.1 }}
method {{ phase ibp }}
optimizer adam {{ epochs 1 }}"""
    if not cls.random:
        load_spec_text(text)  # and a random kind is fine for training: only the test line can fail
        return
    with pytest.raises(TapscError) as info:
        load_spec_text(text)
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.code == "random-test-augmentation"
    line = text.splitlines()[0]
    column = line.index(statement, line.index("augment test")) + 1
    assert (diagnostic.span.line, diagnostic.span.column) == (1, column)
    allowed = [c.model_fields["kind"].default for c in ir.AUGMENTATION_CLASSES if not c.random]
    assert allowed and all(f"`{kind}`" in diagnostic.help for kind in allowed)
