"""`tapsc check` and `tapsc show`: exit codes, rendered diagnostics, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tapsc.cli import app

ROOT = Path(__file__).parent.parent.parent
runner = CliRunner()


def test_check_all_shipped_specs(monkeypatch):
    monkeypatch.chdir(ROOT)
    shipped = [*(ROOT / "specs").glob("*.taps"), *(ROOT / "specs" / "study").glob("*.taps")]
    specs = sorted(str(p.relative_to(ROOT)) for p in shipped)
    result = runner.invoke(app, ["check", *specs])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok ") == len(specs)


def test_check_bad_spec_exits_1_with_rendered_error(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["check", "tests/golden/errors/unknown_dataset.taps", "specs/cnn7_cifar_8.taps"])
    assert result.exit_code == 1
    assert "error[unknown-dataset]" in result.output and "did you mean `mnist`" in result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)


def test_check_bad_set_value(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["check", "specs/cnn7_cifar_8.taps", "--set", "optimizer.lr=fast"])
    assert result.exit_code == 1 and "error[bad-value]" in result.output and "<--set 1>:1:14" in result.output


def test_show_ir_table_and_schedule(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["show", "specs/cnn7_cifar_8.taps"])
    assert result.exit_code == 0, result.output
    assert "linear(512)" in result.output and "classifier" in result.output and "extractor" in result.output
    assert "17,192,650 parameters" in result.output  # CNN7 on 3x32x32, 10 classes (with BatchNorm)
    assert "epochs [81, 160): taps" in result.output


def test_show_json_is_the_canonical_ir(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["show", "specs/cnn7_cifar_8.taps", "--json"])
    assert result.exit_code == 0
    golden = json.loads((ROOT / "tests/golden/ir/cnn7_cifar_8.json").read_text())
    assert json.loads(result.output) == golden


def test_show_tree_and_unknown_stage(monkeypatch):
    monkeypatch.chdir(ROOT)
    tree = runner.invoke(app, ["show", "specs/cnn7_cifar_8.taps", "--stage", "tree"])
    assert tree.exit_code == 0 and "statement" in tree.output and "include" in tree.output
    bad = runner.invoke(app, ["show", "specs/cnn7_cifar_8.taps", "--stage", "tre"])
    assert bad.exit_code == 1 and "did you mean `tree`" in bad.output
