"""`tapsc run --resume` on a run folder in a bad or final state: each is recognised before
any data is loaded (a deleted checkpoint folder, a finished run), and a metrics.jsonl whose
last line was cut short is repaired on resume and tolerated by `tapsc plot`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from run_helpers import invoke, write_spec

from tapsc.train import rundir

EPOCHS = 4  # of TINY_SPEC


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("finished")
    result = invoke("run", write_spec(folder), "--out", folder / "run", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return folder / "run"


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A private copy of the finished run."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


@pytest.fixture
def no_data(monkeypatch):
    """Loading data fails loudly: the resume must decide before it."""
    import tapsc.train.run

    def refuse(self):
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(tapsc.train.run.Trainer, "_load_data", refuse)


def _cut_last_line(run: Path) -> str:
    path = run / rundir.METRICS
    text = path.read_text()
    path.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
    return text


def test_resume_without_checkpoints_fails_before_training(run, no_data):
    shutil.rmtree(run / rundir.CHECKPOINTS)
    result = invoke("run", "--resume", run, "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "error[missing-checkpoint]" in result.output and f"records {EPOCHS} finished epoch(s)" in result.output
    assert "Traceback" not in result.output and "epoch 1" not in result.output


def test_resume_of_a_finished_run_says_so_and_changes_nothing(run, no_data):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = invoke("run", "--resume", run, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "is finished" in result.output and f"all {EPOCHS} epochs" in result.output
    assert f"{EPOCHS + 1}..{EPOCHS}" not in result.output
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_resume_of_a_trained_run_without_results_only_evaluates(run):
    (run / rundir.RESULTS).unlink()
    rows = (run / rundir.METRICS).read_text()
    result = invoke("run", "--resume", run, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "evaluating it" in result.output and f"{EPOCHS + 1}..{EPOCHS}" not in result.output
    assert json.loads((run / rundir.RESULTS).read_text())["epochs"] == EPOCHS
    assert (run / rundir.METRICS).read_text() == rows  # no epoch trained again


def test_resume_repairs_a_metrics_line_cut_short(run, no_data):
    whole = _cut_last_line(run)
    result = invoke("run", "--resume", run, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "repaired metrics.jsonl" in result.output
    assert (run / rundir.METRICS).read_text() == whole


def test_plot_skips_a_last_line_cut_short_but_not_a_broken_middle(run):
    whole = _cut_last_line(run)
    result = invoke("plot", run)
    assert result.exit_code == 0, result.output
    assert "cut short" in result.output and f"{EPOCHS - 1} epochs" in result.output
    lines = whole.splitlines()
    (run / rundir.METRICS).write_text("\n".join([lines[0], "{broken", *lines[1:]]) + "\n")
    result = invoke("plot", run)
    assert result.exit_code == 1 and "error[bad-metrics]" in result.output and ":2 " in result.output


def test_checkpoints_record_the_precision_and_a_resume_in_another_warns(finished):
    # the bf16 attack follows the CPU and the flags: a resume that trains otherwise says so
    from types import SimpleNamespace

    import torch

    from tapsc.train import run as run_module

    state = torch.load(rundir.checkpoint_path(finished, "last"), map_location="cpu", weights_only=False)
    expected = "float32" + (", bf16 attack iterations" if run_module.attack_dtype_for(
        run_module.RunOptions(), torch.device("cpu")) is not None else "")
    assert state["precision"] == expected
    notes = []
    trainer = SimpleNamespace(precision=lambda: "float32", emit=notes.append)
    run_module._note_precision({"precision": "float32, bf16 attack iterations"}, trainer)
    assert len(notes) == 1 and notes[0].warning and "`--no-attack-bf16`" in notes[0].text
    notes.clear()
    run_module._note_precision({"precision": "float32"}, trainer)
    run_module._note_precision({"precision": None}, trainer)  # checkpoints from before: nothing recorded
    assert notes == []
