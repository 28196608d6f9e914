"""The benchmark's quickest mode runs end to end and writes well-formed JSON (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_benchmark_writes_positive_finite_ratios(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("TAPSC_CACHE_DIR", str(tmp_path / "cache"))  # the trained workload's run is cached here
    sys.modules.pop("train_step", None)
    import train_step

    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    with torch.random.fork_rng():  # the benchmark seeds torch; leave other tests' RNG alone
        train_step.main(["--quick", "--json", str(out)])
    assert torch.get_num_threads() == threads  # --quick runs on one thread and restores the count
    result = json.loads(out.read_text())
    assert {"machine", "settings", "baseline", "results", "certify", "trained"} <= set(result)
    _check_trained_rows([row for row in result["results"] if row["workload"] == "trained"], result["trained"])
    rows = [row for row in result["results"] if row["workload"] == "random"]
    assert {row["shape"] for row in rows} == {"cifar10", "mnist"}
    kinds = {row["kind"] for row in rows}
    from tapsc.language import ir

    assert kinds == set(ir.PHASE_KINDS)  # a row for every phase kind
    assert {row["relus_in_classifier"] for row in rows if row["kind"] == "taps"} == set(range(7))
    for row in rows:
        assert "error" not in row, row
        assert _finite_positive(row["median_s"]) and _finite_positive(row["ratio_to_ibp"]), row
        assert _finite_positive(row["peak_mb"]) and _finite_positive(row["memory_ratio_to_ibp"]), row
    for row in rows:
        if row["name"] == "ibp":
            assert row["ratio_to_ibp"] == 1.0
    for shape in ("cifar10", "mnist"):  # the single-estimator attack is modelled 9x cheaper
        by_name = {row["name"]: row for row in rows if row["shape"] == shape}
        multi, single = by_name["taps_relu1_steps2"], by_name["taps_single_relu1_steps2"]
        assert multi["estimators"] == "multi" and single["estimators"] == "single"
        assert (single["mac_model_ratio"] - 1) * 9 == pytest.approx(multi["mac_model_ratio"] - 1, abs=0.01)
    certify = result["certify"]
    assert {r["method"] for r in certify["throughput"]} >= {"ibp", "crown_ibp"}
    assert all(_finite_positive(r["samples_per_s"]) for r in certify["throughput"])
    counts = certify["trained"]["certified"]
    assert set(counts) == {"ibp", "crown_ibp", "crown"}
    assert certify["trained"]["crown_gain_over_ibp"] == counts["crown"] - counts["ibp"]


def _check_trained_rows(rows: list[dict], trained: dict) -> None:
    """The quickstart network (3 ReLUs) on its digits, each method against its own IBP step."""
    assert "tapsc run" in trained["command"] and Path(trained["run_dir"], "results.json").is_file()
    assert {row["shape"] for row in rows} == {"digits"} and {row["batch"] for row in rows} == {trained["batch"]}
    assert {row["relus_in_classifier"] for row in rows if row["kind"] == "taps"} == {0, 1, 2, 3}
    for row in rows:
        assert "error" not in row, row
        assert _finite_positive(row["median_s"]) and _finite_positive(row["ratio_to_ibp"]), row
    assert next(row for row in rows if row["name"] == "ibp")["ratio_to_ibp"] == 1.0


def test_trained_workload_trains_once_per_spec_text(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("TAPSC_CACHE_DIR", str(tmp_path / "cache"))
    sys.modules.pop("trained_workload", None)
    import trained_workload

    calls = []

    def fake_run(command, **kwargs):  # stands in for `tapsc run SPEC --out DIR`
        out = Path(command[command.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "results.json").write_text("{}")
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "")

    monkeypatch.setattr(trained_workload.subprocess, "run", fake_run)
    spec = tmp_path / "tiny.taps"
    spec.write_text("first")
    run_dir, command = trained_workload.cached_run(spec, torch.device("cpu"), log=lambda m: None)
    assert command[2:4] == ["tapsc", "run"] and str(run_dir) in command
    assert run_dir.parent == tmp_path / "cache" / "benchmarks" / "trained" and (run_dir / "results.json").is_file()
    assert trained_workload.cached_run(spec, torch.device("cpu"))[0] == run_dir and len(calls) == 1  # cached
    spec.write_text("edited")
    assert trained_workload.cached_run(spec, torch.device("cpu"), log=lambda m: None)[0] != run_dir
    assert len(calls) == 2


def test_epoch_benchmark_times_a_real_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("epoch", None)
    import epoch

    data = epoch.write_random_cifar10(tmp_path / "data", test_images=8, per_batch=8)
    assert epoch.has_cifar10(data)
    out = tmp_path / "epoch.json"
    rows = epoch.main(["--device", "cpu", "--precision", "fp32", "--methods", "ibp", "--images", "16",
                       "--data-root", str(data), "--out", str(tmp_path / "runs"), "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == rows and [r["method"] for r in rows] == ["ibp"]
    assert rows[0]["precision"] == "fp32" and "--no-tf32" in rows[0]["command"].split()
    row = rows[0]
    assert row["images"] == 16 and row["batches"] == 1 and _finite_positive(row["train_seconds"])
    assert set(row["parts"]) == {"data", "step", "probe", "display"}
    assert sum(row["parts"].values()) <= row["train_seconds"] + 0.01 <= row["epoch_seconds"] + 0.01


def test_attack_sparsity_counts_moves_and_flips(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("attack_sparsity", None)
    import attack_sparsity

    with torch.random.fork_rng():
        rows = attack_sparsity.main(["--width", "4", "--batch", "3", "--steps", "4"])
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["coords_moved"] > 0  # a random start inside the box always moves
    for row in rows:
        assert 0 <= row["coords_moved"] <= 1 and 0 <= row["rows_still"] <= 1
        assert 0 <= row["flips_per_row"] <= row["units"] and math.isfinite(row["objective"])


def test_runner_step_compares_the_runner_with_the_bare_step(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("runner_step", None)
    import runner_step

    spec = tmp_path / "tiny.taps"
    spec.write_text("data digits { batch 8 }\nmodel { input (1, 8, 8); flatten; linear(16); relu; linear(10) }\n"
                    "split relus_in_classifier = 1\nperturbation linf { eps 0.05 }\n"
                    "method { phase taps { attack pgd(steps = 2, multi) } }\noptimizer adam { l1 1e-5; epochs 1 }\n")
    out = tmp_path / "runner.json"
    with torch.random.fork_rng():
        result = runner_step.main(["--device", "cpu", "--spec", str(spec), "--steps", "2", "--profile", "1",
                                   "--json", str(out)])
    assert json.loads(out.read_text()) == result and result["batch"] == 8 and not result["tf32"]
    assert set(result["seconds"]) == {"bare", "bare_l1", "runner"}
    for value in result["seconds"].values():
        assert _finite_positive(value["synced"]) and _finite_positive(value["queued"])
    assert "aten::" in result["profile"]


def test_attack_ab_compares_two_commits_attacks_on_the_same_step(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("attack_ab", None)
    import attack_ab

    from tapsc.method import latent_attack

    ours = latent_attack._attack_chunk
    with torch.random.fork_rng():
        result = attack_ab.main(["--before", "HEAD", "--width", "4", "--batch", "2", "--steps", "2", "--reps", "1"])
    assert latent_attack._attack_chunk is ours  # put back
    assert result["same_points"] and len(result["times"]["before"]) == 1
    assert _finite_positive(result["ibp_cpu_s"]) and _finite_positive(result["after_over_before"])
