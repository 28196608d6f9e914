"""`tapsc sweep`: the grid, sweep.csv, the table and plots, and resuming after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from experiment_helpers import FAST_SPEC, SWEEP_SETS, invoke, write_spec

from tapsc.experiments.sweep import METRIC_COLUMNS, Axis, grid, parse_sets, split_values
from tapsc.train import rundir


def test_values_split_at_top_level_commas_only():
    assert split_values("0.05,0.1,8/255") == ["0.05", "0.1", "8/255"]
    assert split_values("(natural, taps),(natural, pgd)") == ["(natural, taps)", "(natural, pgd)"]
    assert split_values('"a,b",c') == ['"a,b"', "c"]
    assert split_values("(20, 25)") == ["(20, 25)"]


def test_grid_is_the_product_and_single_values_are_fixed():
    fixed, axes = parse_sets(["split.relus_in_classifier=0,1", "method.taps.weight=1,5,10",
                              "optimizer.milestones=(20, 25)"])
    assert fixed == ["optimizer.milestones=(20, 25)"]
    assert axes == [Axis("split.relus_in_classifier", ("0", "1")), Axis("method.taps.weight", ("1", "5", "10"))]
    points = grid(axes)
    assert len(points) == 6 and points[1].values == {"split.relus_in_classifier": "0", "method.taps.weight": "5"}
    assert points[1].name == "01-relus_in_classifier=0_weight=5"


@pytest.mark.parametrize("sets, code", [
    (["method.taps.weight"], "bad-sweep-set"),
    (["method.taps.weight=1,,5"], "bad-sweep-set"),
    (["method.taps.weight=1,5", "method.taps.weight=2"], "bad-sweep-set"),
    (["method.taps.weight=1,1"], "bad-sweep-set"),
])
def test_bad_sets_are_user_errors(sets, code):
    from tapsc.errors import TapscError

    with pytest.raises(TapscError) as raised:
        parse_sets(sets)
    assert raised.value.diagnostics[0].code == code


def test_a_bad_value_fails_before_training(tmp_path: Path):
    spec = write_spec(tmp_path)
    result = invoke("sweep", spec, "--set", "method.taps.weight=1,-5", "--out", tmp_path / "sw", "--device", "cpu")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "<--set" in result.output  # the diagnostic points into the override
    assert not (tmp_path / "sw" / "00-weight=1").exists()
    assert invoke("sweep", spec, "--device", "cpu").exit_code == 1  # nothing to sweep: a message, exit 1
    assert invoke("sweep", "--resume", tmp_path / "nowhere").exit_code == 1


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    result = invoke("sweep", write_spec(folder), *SWEEP_SETS, "--out", folder / "sw", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return folder / "sw"


def test_sweep_writes_csv_table_and_plots(swept: Path):
    rows = list(csv.DictReader((swept / "sweep.csv").open()))
    assert [row["method.taps.weight"] for row in rows] == ["1", "5"]
    assert all(row["status"] == "done" for row in rows)
    for row in rows:
        assert 0 <= float(row["natural"]) <= 1 and row["crown_ibp"] != ""  # the fixed tuple applied
        assert float(row["pgd"]) >= float(row["ibp"])  # a certified sample is never broken by PGD
        assert (Path(row["run_dir"]) / "results.json").is_file()
    png = swept / "sweep-method.taps.weight.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((swept / "sweep.json").read_text())
    assert manifest["axes"] == {"method.taps.weight": ["1", "5"]} and "correlation" in manifest


def test_resume_after_a_kill_skips_finished_points(swept: Path, tmp_path: Path, monkeypatch):
    spec = write_spec(tmp_path)
    out = tmp_path / "sw"
    original = rundir.write_metrics

    def killed_in_point_two(run_dir, history):  # "SIGKILL" right after point 2's first checkpoint
        original(run_dir, history)
        if Path(run_dir).name.startswith("01-"):
            raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "write_metrics", killed_in_point_two)
    first = invoke("sweep", spec, *SWEEP_SETS, "--out", out, "--device", "cpu")
    assert first.exit_code != 0  # typer turns the KeyboardInterrupt into exit 130
    monkeypatch.setattr(rundir, "write_metrics", original)
    finished = out / "00-weight=1" / "results.json"
    stamp = finished.stat().st_mtime_ns
    assert not (out / "01-weight=5" / "results.json").exists()
    assert rundir.checkpoint_path(out / "01-weight=5").is_file()

    second = invoke("sweep", "--resume", out, "--device", "cpu")
    assert second.exit_code == 0, second.output
    assert "finished already, skipped" in second.output and "resuming" in second.output
    assert finished.stat().st_mtime_ns == stamp
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [row["status"] for row in rows] == ["done", "done"]
    # the resumed point ends with exactly the weights of the uninterrupted sweep's point (CPU)
    a = torch.load(rundir.checkpoint_path(out / "01-weight=5"), weights_only=False)["model"]
    b = torch.load(rundir.checkpoint_path(swept / "01-weight=5"), weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same command again: everything is finished, nothing runs
    third = invoke("sweep", spec, *SWEEP_SETS, "--out", out, "--device", "cpu")
    assert third.exit_code == 0 and third.output.count("skipped") == 2
    other = invoke("sweep", spec, "--set", "method.taps.weight=2,3", "--out", out, "--device", "cpu")
    assert other.exit_code == 1 and "different sweep" in other.output


# ---------------------------------------------------------------- --parallel


def test_parallel_below_one_is_a_user_error(tmp_path: Path):
    spec = write_spec(tmp_path)
    result = invoke("sweep", spec, *SWEEP_SETS, "--out", tmp_path / "sw", "--device", "cpu", "--parallel", "0")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "bad-parallel" in result.output and not (tmp_path / "sw").exists()


def test_parallel_points_match_the_sequential_sweep(swept: Path, tmp_path: Path, monkeypatch):
    # the subprocesses sum floats with as many threads as the in-process sweep did
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    out = tmp_path / "sw"
    result = invoke("sweep", write_spec(tmp_path), *SWEEP_SETS, "--out", out, "--device", "cpu", "--parallel", "2")
    assert result.exit_code == 0, result.output
    assert result.output.count("starting") == 2 and result.output.count("): finished\n") == 2
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    reference = list(csv.DictReader((swept / "sweep.csv").open()))
    assert [row["status"] for row in rows] == ["done", "done"]
    for row, before in zip(rows, reference):
        run_dir = Path(row["run_dir"])
        assert (run_dir / "results.json").is_file() and (run_dir / "sweep.log").is_file()
        assert {m: row[m] for m in METRIC_COLUMNS} == {m: before[m] for m in METRIC_COLUMNS}
        a = torch.load(rundir.checkpoint_path(run_dir), weights_only=False)["model"]
        b = torch.load(rundir.checkpoint_path(Path(before["run_dir"])), weights_only=False)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_failed_parallel_point_is_recorded_and_the_sweep_goes_on(tmp_path: Path, monkeypatch):
    import tapsc.experiments.sweep as sweep_module

    def stand_ins(sweep, point, status, options):  # no training: what the sweep does with each outcome
        results = sweep.run_dir(point) / "results.json"
        return [sys.executable, "-c", [
            f"import pathlib; pathlib.Path({str(results)!r}).write_text('{{\"metrics\": {{\"natural\": 0.5}}}}')",  # finishes
            "import sys; print('loss is nan'); sys.exit('error[diverged]: boom')",  # diverges
            "pass",  # exits 0 but leaves no results.json
        ][point.index]]

    monkeypatch.setattr(sweep_module, "point_command", stand_ins)
    out = tmp_path / "sw"
    result = invoke("sweep", write_spec(tmp_path), "--set", "method.taps.weight=1,5,7", "--out", out,
                    "--device", "cpu", "--parallel", "3")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error[diverged]: boom" in result.output and result.output.count("): finished\n") == 1
    assert "boom" in (out / "01-weight=5" / "sweep.log").read_text()
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [row["status"] for row in rows] == ["done", "failed", "failed"]


def test_each_cpu_point_gets_a_share_of_the_cores(monkeypatch):
    import os

    from tapsc.experiments.sweep import point_environment

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert point_environment(1, "cpu", True, 2)["OMP_NUM_THREADS"] == str(max(1, cores // 2))
    assert point_environment(1, "cpu", True, 2).get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert point_environment(0, "cpu", True, 64)["OMP_NUM_THREADS"] == "3"


def test_each_gpu_slot_gets_its_own_gpu(monkeypatch):
    from tapsc.experiments.sweep import point_environment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [point_environment(s, "auto", False, 3)["CUDA_VISIBLE_DEVICES"] for s in range(3)] == ["0", "1", "0"]
    assert "OMP_NUM_THREADS" not in point_environment(0, "cuda", False, 3)
    assert "CUDA_VISIBLE_DEVICES" not in point_environment(1, "cuda:0", False, 3)  # one named GPU for all
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert point_environment(1, "cuda", False, 2)["CUDA_VISIBLE_DEVICES"] == "6"


def _processes_mentioning(text: str) -> list[int]:
    """Live (not zombie) processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in command and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_parallel_points_stop_when_the_sweep_is_killed(tmp_path: Path):
    # SIGKILL reaches no handler; the points must not train on as orphans.
    spec = write_spec(tmp_path, FAST_SPEC.replace("epochs 3", "epochs 400"))
    out = tmp_path / "sw"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = subprocess.Popen([sys.executable, "-m", "tapsc", "sweep", str(spec), "--set", "method.taps.weight=1,5",
                              "--out", str(out), "--device", "cpu", "--parallel", "2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    points: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while len(points) < 2 and time.monotonic() < deadline and sweep.poll() is None:
            time.sleep(0.5)
            points = [pid for pid in _processes_mentioning(str(out)) if pid != sweep.pid]
        assert len(points) == 2, "the two points never started"
        sweep.kill()
        sweep.wait()
        deadline = time.monotonic() + 30
        while _processes_mentioning(str(out)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _processes_mentioning(str(out)), "points outlived the killed sweep"
    finally:
        for pid in _processes_mentioning(str(out)):
            os.kill(pid, signal.SIGKILL)
        if sweep.poll() is None:
            sweep.kill()
