"""`tapsc sweep`: the grid, sweep.csv, the table and plots, and resuming after a kill."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from experiment_helpers import SWEEP_SETS, invoke, write_spec

from tapsc import rundir
from tapsc.sweep import Axis, grid, parse_sets, split_values


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
