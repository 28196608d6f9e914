"""Hostile input: one regression test per kind a mutation fuzzer found (tests/language/test_fuzz.py
covers the rest). Each asserts the diagnostic code, that it has a position, that its message
states the limit, and that it comes back within `SECONDS`."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tapsc.cli import app
from tapsc.commands import language
from tapsc.errors import TapscError
from tapsc.language import limits
from tapsc.language.spec import load_spec, load_spec_text

ROOT = Path(__file__).parent.parent.parent
QUICKSTART = (ROOT / "specs" / "quickstart.taps").read_text()
SECONDS = 10.0  # generous: CI shares its 2 cores; the hangs these tests guard against took minutes


def _with_layers(layers: str, prefix: str = "") -> str:
    """The quickstart spec with ``layers`` inserted before its `flatten`."""
    return prefix + QUICKSTART.replace("  flatten\n", f"  {layers}\n  flatten\n", 1)


def _with_eps(value: str) -> str:
    return QUICKSTART.replace("eps 0.1", f"eps {value}", 1)


def _diagnose(text: str | None = None, path: Path | None = None):
    """The first diagnostic of checking ``text`` (or the file ``path``), timed."""
    started = time.perf_counter()
    with pytest.raises(TapscError) as info:
        load_spec(path) if path is not None else load_spec_text(text, "hostile.taps")
    assert time.perf_counter() - started < SECONDS
    diagnostic = info.value.diagnostics[0]
    assert diagnostic.span is not None and diagnostic.span.line >= 1 and diagnostic.span.column >= 1
    return diagnostic


def _limit_stated(diagnostic, limit: limits.Limit) -> None:
    assert diagnostic.code == limit.code
    assert f"{limit.value:,}" in diagnostic.message and diagnostic.help


@pytest.mark.parametrize("value", ["1" + "0" * 400 + "/255", "1" + "0" * 5000, "1e400", "(99999999 * 99999999)",
                                   "(1e300 / 1e-300)"])
def test_numbers_too_large(value: str):
    diagnostic = _diagnose(_with_eps(value))
    _limit_stated(diagnostic, limits.NUMBER_MAGNITUDE)
    assert diagnostic.span.line == 19


def test_the_largest_allowed_number_is_accepted():
    spec = load_spec_text(QUICKSTART.replace("validation 200", f"validation 200\n  train_subset {10**15}"))
    assert spec.data.train_subset == 10**15


@pytest.mark.parametrize("text", [
    _with_eps("(" * 3000 + "0.1" + ")" * 3000),
    _with_eps("-" * 3000 + "0.1"),
    _with_eps(" * ".join(["0.1"] * 3000)),
    _with_layers("repeat 1 { " * 3000 + "relu" + " }" * 3000),
    _with_layers("f0", "".join(f"block f{i} {{ f{i + 1} }}\n" for i in range(300)) + "block f300 { relu }\n"),
])
def test_nesting_too_deep(text: str):
    _limit_stated(_diagnose(text), limits.NESTING_DEPTH)


def test_nesting_just_below_the_limit_is_accepted():
    depth = limits.NESTING_DEPTH.value - 3  # `model {` and the statement's own group count too
    spec = load_spec_text(_with_eps("(" * depth + "0.1" + ")" * depth))
    assert spec.perturbation.eps == 0.1


def test_long_source_lines_are_cut_around_the_caret():
    from tapsc.language.diagnostics import MAX_LINE, render_diagnostic

    text = render_diagnostic(_diagnose(_with_eps("(" * 3000 + "0.1" + ")" * 3000)))
    assert max(len(line) for line in text.splitlines()) < MAX_LINE + 20
    source, caret = [line for line in text.splitlines() if line.startswith(("19 |", "   |"))][-2:]
    assert source[caret.index("^")] == "(" and "..." in source


def test_repeat_count_too_large():
    diagnostic = _diagnose(_with_layers("repeat 20000 { relu }"))
    _limit_stated(diagnostic, limits.REPEAT_COUNT)
    assert (diagnostic.span.line, diagnostic.span.column) == (13, 10)


@pytest.mark.parametrize("layers", ["repeat 2 { " * 40 + "relu" + " }" * 40,
                                    "repeat 100 { residual { repeat 101 { relu } } }"])
def test_too_many_layers(layers: str):
    diagnostic = _diagnose(_with_layers(layers))
    _limit_stated(diagnostic, limits.LAYER_COUNT)
    assert diagnostic.span.line == 13


def test_too_many_layers_through_blocks():
    blocks = "".join(f"block f{i} {{ f{i + 1}; f{i + 1} }}\n" for i in range(40)) + "block f40 { relu }\n"
    _limit_stated(_diagnose(_with_layers("f0", blocks)), limits.LAYER_COUNT)


def test_repeat_of_nothing_a_billion_times():
    _limit_stated(_diagnose(_with_layers("repeat 1000000000 { }")), limits.REPEAT_COUNT)


def test_nested_repeats_of_nothing():
    _limit_stated(_diagnose(_with_layers("repeat 10000 { repeat 10000 { repeat 10000 { } } }")),
                  limits.EXPANSION_STEPS)


def test_byte_order_mark_is_accepted(tmp_path: Path):
    path = tmp_path / "bom.taps"
    path.write_bytes(b"\xef\xbb\xbf" + QUICKSTART.encode())
    assert load_spec(path).data.dataset == "digits"
    assert load_spec_text("\ufeff" + QUICKSTART).data.dataset == "digits"


def test_undecodable_bytes_are_located(tmp_path: Path):
    path = tmp_path / "latin1.taps"
    path.write_bytes(QUICKSTART.replace("eps 0.1", "eps 0.1 # \xe9ps", 1).encode("latin-1"))
    diagnostic = _diagnose(path=path)
    assert diagnostic.code == "invalid-encoding" and "0xE9" in diagnostic.message
    assert (diagnostic.span.line, diagnostic.span.column) == (19, 13)
    from tapsc.language.diagnostics import render_diagnostic

    assert "latin1.taps:19:13" in render_diagnostic(diagnostic) and "^" in render_diagnostic(diagnostic)


def test_file_too_large(tmp_path: Path):
    path = tmp_path / "huge.taps"
    path.write_bytes(QUICKSTART.encode() + b"#" * limits.SOURCE_BYTES.value)
    _limit_stated(_diagnose(path=path), limits.SOURCE_BYTES)


def test_includes_count_towards_the_size(tmp_path: Path):
    (tmp_path / "big.taps").write_text("#" * (limits.SOURCE_BYTES.value // 2) + "\n")
    spec = tmp_path / "spec.taps"
    spec.write_text('include "big.taps"\n' * 3 + QUICKSTART)
    diagnostic = _diagnose(path=spec)
    _limit_stated(diagnostic, limits.SOURCE_BYTES)
    assert diagnostic.span.file.endswith("big.taps")
    with pytest.raises(TapscError) as info:
        load_spec_text(QUICKSTART + "#" * limits.SOURCE_BYTES.value)
    _limit_stated(info.value.diagnostics[0], limits.SOURCE_BYTES)


@pytest.mark.parametrize("name", ["relu", "conv", "repeat", "shortcut"])
def test_block_named_like_a_layer(name: str):
    diagnostic = _diagnose(f"block {name} {{ flatten }}\n" + QUICKSTART)
    assert diagnostic.code == "block-name-taken" and f"`{name}`" in diagnostic.message
    assert (diagnostic.span.line, diagnostic.span.column) == (1, 7)


def test_unknown_string_escape_is_kept():
    spec = load_spec_text(QUICKSTART.replace("batch 64", 'root "C:\\data\\x"\n  batch 64'))
    assert spec.data.root == "C:\\data\\x"


def test_every_limit_is_documented_with_its_code():
    docs = (ROOT / "docs" / "language.md").read_text()
    assert len({limit.code for limit in limits.ALL}) == len(limits.ALL)
    for limit in limits.ALL:
        assert f"`{limit.code}`" in docs and f"{limit.value:,}" in docs, limit.code


# ---------------------------------------------------------------- tapsc check with several files


def test_one_failing_file_hides_no_other(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.taps"
    bad.write_text(_with_layers("repeat 20000 { relu }"))
    deep = tmp_path / "deep.taps"
    deep.write_text(_with_eps("(" * 3000 + "0.1" + ")" * 3000))
    result = CliRunner().invoke(app, ["check", str(bad), "specs/quickstart.taps", str(deep)])
    assert result.exit_code == 1
    assert re.search(r"fail .*bad\.taps", result.output) and re.search(r"fail .*deep\.taps", result.output)
    assert "ok   specs/quickstart.taps" in result.output
    assert "error[repeat-too-large]" in result.output and "error[nesting-too-deep]" in result.output


def test_an_internal_error_in_one_file_still_reports_the_others(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(ROOT)
    real = language.check_one

    def flaky(path, overrides=(), **options):
        if path.name == "quickstart.taps":
            raise RuntimeError("a bug")
        return real(path, overrides, **options)

    monkeypatch.setattr(language, "check_one", flaky)
    bad = tmp_path / "bad.taps"
    bad.write_text("data mnsit {}")
    result = CliRunner().invoke(app, ["check", "specs/quickstart.taps", str(bad), "specs/cnn7_cifar_8.taps"])
    assert isinstance(result.exception, RuntimeError)
    assert "fail specs/quickstart.taps  (internal error: RuntimeError)" in result.output
    assert "ok   specs/cnn7_cifar_8.taps" in result.output and re.search(r"fail .*bad\.taps", result.output)
    assert "error[unknown-dataset]" in result.output


# ---------------------------------------------------------------- no torch in `tapsc check`

_NO_TORCH = """
import sys
from typer.testing import CliRunner
from tapsc.cli import app
runner = CliRunner()
assert runner.invoke(app, ["--help"]).exit_code == 0
bad = runner.invoke(app, ["check", "tests/golden/errors/unknown_dataset.taps"])
assert bad.exit_code == 1 and "unknown-dataset" in bad.output, bad.output
good = runner.invoke(app, ["check", "specs/quickstart.taps"])
assert good.exit_code == 0, good.output
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def test_check_and_help_never_import_torch():
    result = subprocess.run([sys.executable, "-c", _NO_TORCH], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


# ---------------------------------------------------------------- found by the long fuzz run


def test_a_mistake_in_a_block_expanded_many_times_is_reported_once():
    blocks = "".join(f"block f{i} {{ f{i + 1}; f{i + 1} }}\n" for i in range(40) if i != 30)
    diagnostic = _diagnose(_with_layers("f0", blocks + "block f40 { relu }\n"))
    assert diagnostic.code == "unknown-layer"
    with pytest.raises(TapscError) as info:
        load_spec_text(_with_layers("f0", blocks + "block f40 { relu }\n"))
    assert [d.code for d in info.value.diagnostics].count("unknown-layer") == 2  # the two calls of f30


def test_diagnostic_codes_have_no_spaces():
    diagnostic = _diagnose(QUICKSTART.replace("validation 200", "validation 200\n  augment relu { hflip }"))
    assert diagnostic.code == "unknown-augmentation-split"
