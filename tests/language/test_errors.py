"""Bad specs: each file in tests/golden/errors states its expected first error as
`# expect: CODE LINE:COL` on its first line; a few also have the full rendered text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tapsc.diagnostics import render_error
from tapsc.errors import TapscError
from tapsc.spec import load_spec, load_spec_text

ERRORS = Path(__file__).parent.parent / "golden" / "errors"
RENDERED = Path(__file__).parent.parent / "golden" / "rendered"
CASES = sorted(ERRORS.glob("*.taps"))
RENDERED_CASES = ["missing_comma", "unknown_dataset", "conv_on_flat", "phase_overlap", "unknown_setting",
                  "include_cycle", "connector_c_range"]


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
