"""`tapsc run --nproc-per-node 2` on the CPU with Gloo: it trains, its loss falls, rank 0
alone writes, and a run whose worker was killed resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch
from dist_helpers import DIST_SPEC, start_tapsc, tapsc, worker_with_rank

from tapsc.language.spec import load_spec_text
from tapsc.train import distributed, rundir
from tapsc.train.run import RunOptions, Trainer

pytestmark = pytest.mark.slow


def _rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_and_resume_after_a_killed_worker(tmp_path):
    spec = tmp_path / "dist.taps"
    spec.write_text(DIST_SPEC)
    whole = tapsc("run", spec, "--out", tmp_path / "whole", "--nproc-per-node", 2, "--device", "cpu")
    assert whole.returncode == 0, whole.stderr
    rows = _rows(tmp_path / "whole")
    assert [row["epoch"] for row in rows] == list(range(8))  # one writer: one row per epoch
    taps = [row["train_loss"] for row in rows if row["phase"] == "taps"]
    assert taps[-1] < taps[0]  # same phase, same eps: the loss falls
    state = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=False)
    assert state["world_size"] == 2
    env = json.loads((tmp_path / "whole" / "env.json").read_text())
    assert env["distributed"]["world_size"] == 2 and env["distributed"]["backend"] == "gloo"
    assert json.loads((tmp_path / "whole" / "results.json").read_text())["samples"] == 64
    assert sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir()) == ["best.pt", "last.pt"]

    # kill rank 1 once an epoch is checkpointed: the launcher stops rank 0 and fails
    killed = tmp_path / "killed"
    launcher = start_tapsc("run", spec, "--out", killed, "--nproc-per-node", 2, "--device", "cpu")
    worker = worker_with_rank(launcher.pid, 1)
    deadline = time.monotonic() + 90
    while not rundir.checkpoint_path(killed, "last").exists():
        assert launcher.poll() is None, launcher.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint within 90 s"
        time.sleep(0.01)
    os.kill(worker, signal.SIGKILL)
    launcher.wait(timeout=60)
    assert launcher.returncode != 0
    stopped_at = torch.load(rundir.checkpoint_path(killed, "last"), weights_only=False)["epoch"]
    assert stopped_at < 7 and not (killed / "results.json").exists()

    resumed = tapsc("run", "--resume", killed, "--nproc-per-node", 2, "--device", "cpu")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {killed} at epoch {stopped_at + 1}" in resumed.stdout
    for which in ("last", "best"):
        a = torch.load(rundir.checkpoint_path(tmp_path / "whole", which), weights_only=False)["model"]
        b = torch.load(rundir.checkpoint_path(killed, which), weights_only=False)["model"]
        for name in a:
            assert torch.equal(a[name], b[name]), f"{which}: {name} differs from the uninterrupted run"
    def strip(rows):
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]

    assert strip(_rows(killed)) == strip(rows)


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    """A rank other than 0 trains but writes no checkpoint, metrics or results."""
    monkeypatch.setattr(distributed, "_current", distributed.Context(rank=1, world_size=1))
    spec = load_spec_text(DIST_SPEC.replace("decay 0.5 at (6); epochs 8", "epochs 3"))
    run_dir = tmp_path / "rank1"
    trainer = Trainer(spec, run_dir, RunOptions(device="cpu"))
    before = {name: p.detach().clone() for name, p in trainer.network.named_parameters()}
    trainer.fit()
    assert not run_dir.exists()
    assert any(not torch.equal(before[n], p) for n, p in trainer.network.named_parameters())  # it did train


def test_batch_must_split_over_the_processes(monkeypatch):
    from tapsc.errors import TapscError

    monkeypatch.setattr(distributed, "_current", distributed.Context(rank=0, world_size=3))
    with pytest.raises(TapscError, match="does not split evenly over 3 processes"):
        Trainer(load_spec_text(DIST_SPEC), "unused", RunOptions(device="cpu"))
