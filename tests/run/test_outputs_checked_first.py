"""Every command that writes somewhere checks that it can before it loads data, models or
checkpoints: an unwritable `--out` is reported at once, as a diagnostic, not after the work.

The unwritable path is a folder under a regular file, which fails even for root. The run
directories here hold only ir.json (no checkpoint, no data): a command that loaded
anything before checking its output would report that instead."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from run_helpers import TINY_SPEC, invoke, write_spec

from tapsc.errors import TapscError
from tapsc.language.spec import load_spec_text
from tapsc.train.outputs import ensure_writable_file, ensure_writable_folder


@pytest.fixture
def blocked(tmp_path: Path) -> Path:
    """A path whose parent is a regular file: nothing can be created there."""
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path / "a-file" / "out"


@pytest.fixture
def bare_run(tmp_path: Path) -> Path:
    """A run directory with its ir.json only: any loading would fail with another error."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "ir.json").write_text(load_spec_text(TINY_SPEC, "tiny.taps").model_dump_json())
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "train_loss": 1.0}) + "\n")
    return run


def _assert_unwritable(result, path: Path) -> None:
    assert result.exit_code == 1, result.output
    assert "error[unwritable-output]" in result.output and str(path) in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["certify", "export", "analyze"])
def test_run_commands_check_out_before_loading(command, bare_run, blocked):
    _assert_unwritable(invoke(command, bare_run, "--out", blocked), blocked)


def test_plot_checks_its_file_first(bare_run, blocked):
    _assert_unwritable(invoke("plot", bare_run, "--out", blocked / "curves.png"), blocked)


def test_run_and_sweep_check_out_before_training(tmp_path, blocked):
    spec = write_spec(tmp_path)
    _assert_unwritable(invoke("run", spec, "--out", blocked, "--device", "cpu"), blocked)
    _assert_unwritable(invoke("sweep", spec, "--set", "optimizer.lr=1e-3", "--out", blocked), blocked)
    assert not blocked.parent.is_dir()


def test_eval_checks_the_run_folder_first(bare_run, monkeypatch):
    import tapsc.train.outputs

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tapsc.train.outputs.tempfile, "mkstemp", refuse)
    result = invoke("eval", bare_run, "--device", "cpu")
    _assert_unwritable(result, bare_run)
    assert "Permission denied" in result.output


def test_the_check_leaves_no_folder_behind(tmp_path):
    target = tmp_path / "new" / "deeper"
    assert ensure_writable_folder(target) == target
    assert not (tmp_path / "new").exists()
    ensure_writable_file(tmp_path / "plots" / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_given_as_a_file_is_refused(tmp_path):
    with pytest.raises(TapscError) as info:
        ensure_writable_file(tmp_path)
    assert info.value.diagnostics[0].code == "unwritable-output"


def test_a_run_directory_written_before_a_setting_was_removed_still_loads(tmp_path):
    """ir.json from an older tapsc holds `data.test_batch: null` (removed: no stage read it);
    it loads, while a non-default value of a removed setting is still refused."""
    import json

    from tapsc.errors import TapscError
    from tapsc.train import rundir

    run = tmp_path / "old"
    run.mkdir()
    document = json.loads(load_spec_text(TINY_SPEC, "tiny.taps").model_dump_json())
    document["data"]["test_batch"] = None
    (run / "ir.json").write_text(json.dumps(document))
    assert rundir.read_spec(run).model_dump_json() == load_spec_text(TINY_SPEC, "tiny.taps").model_dump_json()
    document["data"]["test_batch"] = 64
    (run / "ir.json").write_text(json.dumps(document))
    with pytest.raises(TapscError, match="not a valid IR"):
        rundir.read_spec(run)
