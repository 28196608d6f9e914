"""The benchmark's quickest mode runs end to end and writes well-formed JSON (no timing assertions)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_benchmark_writes_positive_finite_ratios(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("train_step", None)
    import train_step

    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    with torch.random.fork_rng():  # the benchmark seeds torch; leave other tests' RNG alone
        train_step.main(["--quick", "--json", str(out)])
    assert torch.get_num_threads() == threads  # --quick runs on one thread and restores the count
    result = json.loads(out.read_text())
    assert {"machine", "settings", "baseline", "results", "certify"} <= set(result)
    rows = result["results"]
    assert {row["shape"] for row in rows} == {"cifar10", "mnist"}
    kinds = {row["kind"] for row in rows}
    assert kinds == {"natural", "ibp", "pgd", "sabr", "taps", "staps"}
    assert {row["relus_in_classifier"] for row in rows if row["kind"] == "taps"} == set(range(7))
    for row in rows:
        assert "error" not in row, row
        assert _finite_positive(row["median_s"]) and _finite_positive(row["ratio_to_ibp"]), row
        assert _finite_positive(row["peak_mb"]) and _finite_positive(row["memory_ratio_to_ibp"]), row
    for row in rows:
        if row["name"] == "ibp":
            assert row["ratio_to_ibp"] == 1.0
    certify = result["certify"]
    assert {r["method"] for r in certify["throughput"]} >= {"ibp", "crown_ibp"}
    assert all(_finite_positive(r["samples_per_s"]) for r in certify["throughput"])
    counts = certify["trained"]["certified"]
    assert set(counts) == {"ibp", "crown_ibp", "crown"}
    assert certify["trained"]["crown_gain_over_ibp"] == counts["crown"] - counts["ibp"]
