"""Never lose a run: resume after a real SIGKILL, NaN handling, bad input is exit 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_helpers import TINY_SPEC, assert_same_weights, invoke, weights, write_spec

from tapsc.errors import TapscError
from tapsc.train import rundir

LONGER = TINY_SPEC.replace("train_subset 192", "train_subset 320").replace("epochs 4", "epochs 8")
ROOT = Path(__file__).resolve().parents[2]


def _kill_after_first_checkpoint(spec_path: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "tapsc", "run", str(spec_path), "--out", str(out),
                                "--device", "cpu"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    last = rundir.checkpoint_path(out, "last")
    deadline = time.monotonic() + 120
    while not last.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before its first checkpoint: {process.stderr.read().decode()}")
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    return process


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path):
    spec_path = write_spec(tmp_path, LONGER)
    whole = invoke("run", spec_path, "--out", tmp_path / "whole", "--device", "cpu")
    assert whole.exit_code == 0, whole.output

    killed = _kill_after_first_checkpoint(spec_path, tmp_path / "killed")
    assert killed.returncode == -signal.SIGKILL
    stopped_at = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=False)["epoch"]
    assert stopped_at < 7 and not (tmp_path / "killed" / "results.json").exists()

    resumed = invoke("run", "--resume", tmp_path / "killed", "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output
    assert f"at epoch {stopped_at + 1}" in resumed.output  # the note counts epochs from 0
    for which in ("last", "best"):
        assert_same_weights(weights(tmp_path / "whole" / "checkpoints" / f"{which}.pt"),
                            weights(tmp_path / "killed" / "checkpoints" / f"{which}.pt"))

    def rows(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if not k.endswith("seconds")} for line in lines]

    assert rows("whole") == rows("killed")
    whole_results = json.loads((tmp_path / "whole" / "results.json").read_text())
    killed_results = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert whole_results["metrics"] == killed_results["metrics"]


def test_nan_loss_stops_with_epoch_batch_and_term(tmp_path, monkeypatch):
    import tapsc.method

    real = tapsc.method.phase_loss
    calls = {"n": 0}

    def poisoned(network, phase, x, y, eps, eps_target, l1=0.0, global_mean=None):
        loss, terms = real(network, phase, x, y, eps, eps_target, l1=l1, global_mean=global_mean)
        calls["n"] += 1
        if calls["n"] == 6 + 2:  # 6 batches per epoch: epoch 1, batch 1
            terms["ibp"] = float("nan")
            loss = loss * float("nan")
        return loss, terms

    monkeypatch.setattr(tapsc.method, "phase_loss", poisoned)
    result = invoke("run", write_spec(tmp_path), "--out", tmp_path / "run", "--device", "cpu")
    assert result.exit_code == 1
    assert "epoch 1, batch 1" in result.output and "`ibp`" in result.output
    assert "Traceback" not in result.output
    kept = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert kept["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def _fails_cleanly(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_unknown_device(tmp_path):
    _fails_cleanly(invoke("run", write_spec(tmp_path), "--out", tmp_path / "r", "--device", "tpu"), "unknown device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tmp_path):
    _fails_cleanly(invoke("run", write_spec(tmp_path), "--out", tmp_path / "r", "--device", "cuda"), "no CUDA")


def test_missing_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("TAPSC_OFFLINE", "1")
    text = TINY_SPEC.replace("data digits", "data mnist").replace("input (1, 8, 8)", "input (1, 28, 28)")
    result = invoke("run", write_spec(tmp_path, text), "--out", tmp_path / "r", "--data-root", tmp_path / "none")
    _fails_cleanly(result, "MNIST was not found", "ossci-datasets")
    assert not (tmp_path / "r").exists()


def test_unwritable_output(tmp_path):
    (tmp_path / "a-file").write_text("")
    _fails_cleanly(invoke("run", write_spec(tmp_path), "--out", tmp_path / "a-file" / "run", "--device", "cpu"),
                   "cannot write the run directory")


def test_spec_error(tmp_path):
    spec_path = write_spec(tmp_path, TINY_SPEC.replace("linear(10)", "linaer(10)"))
    _fails_cleanly(invoke("run", spec_path, "--out", tmp_path / "r"), "linaer")


def test_missing_spec_and_bad_resume(tmp_path):
    _fails_cleanly(invoke("run", tmp_path / "nope.taps"), "no spec file")
    _fails_cleanly(invoke("run", "--resume", tmp_path), "not a tapsc run directory")
    _fails_cleanly(invoke("eval", tmp_path), "not a tapsc run directory")


def test_existing_run_is_not_overwritten(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "ir.json").write_text("{}")
    _fails_cleanly(invoke("run", write_spec(tmp_path), "--out", tmp_path / "r", "--device", "cpu"),
                   "already holds a run")


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "last.pt"
    rundir.save_checkpoint(path, {"model": {"w": torch.ones(3)}})

    class Boom(Exception):
        pass

    def failing(handle):
        handle.write(b"half a checkpoint")
        raise Boom

    with pytest.raises(Boom):
        rundir.atomic_write_bytes(path, failing)
    assert torch.equal(rundir.read_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left
    path.write_bytes(b"garbage")
    with pytest.raises(TapscError):
        rundir.read_checkpoint(path)
