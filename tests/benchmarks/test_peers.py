"""benchmarks/peers.py: argument handling, the skip messages and the JSON, with tapsc alone
(no test needs CTRAIN or the authors' code installed, and none checks a timing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _peers(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for name in ("TAPSC_CTRAIN_PYTHON", "TAPSC_AUTHORS_DIR", "TAPSC_AUTHORS_PYTHON"):
        monkeypatch.delenv(name, raising=False)
    sys.modules.pop("peers", None)
    import peers

    return peers


def test_absent_peers_are_skipped_with_the_reason(monkeypatch):
    peers = _peers(monkeypatch)
    args = peers.argparse.Namespace(ctrain_python=None, authors_dir=None, authors_python=None, batch=4, eps=0.1,
                                    steps="2", methods="ibp", width=4, threads=1)
    found = {p.name: p for p in peers.peers_from(args)}
    assert found["tapsc"].command and not found["tapsc"].skipped
    assert "--ctrain-python" in found["CTRAIN"].skipped and "TAPSC_CTRAIN_PYTHON" in found["CTRAIN"].skipped
    assert "--authors-dir" in found["authors"].skipped
    monkeypatch.setenv("TAPSC_CTRAIN_PYTHON", "/nowhere/bin/python")
    monkeypatch.setenv("TAPSC_AUTHORS_DIR", str(BENCHMARKS))  # a folder, but not an eth-sri/TAPS checkout
    found = {p.name: p for p in peers.peers_from(args)}
    assert "/nowhere/bin/python does not exist" in found["CTRAIN"].skipped
    assert "not an eth-sri/TAPS checkout" in found["authors"].skipped


def test_quick_run_times_tapsc_and_skips_a_peer_that_cannot_start(tmp_path, monkeypatch):
    peers = _peers(monkeypatch)
    out = tmp_path / "peers.json"
    # tapsc's own python has no CTRAIN: its driver starts, fails to import, and is skipped
    result = peers.main(["--quick", "--methods", "natural,taps", "--ctrain-python", sys.executable,
                         "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert set(result["implementations"]) == {"tapsc"}
    assert "did not start" in result["skipped"]["CTRAIN"] and "authors" in result["skipped"]
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["ibp", "natural", "taps_steps2"]  # the IBP baseline is always timed
    for row in rows.values():
        assert row["implementation"] == "tapsc" and "error" not in row, row
        assert row["median_cpu_s"] > 0 and row["peak_mib"] > 0 and row["ratio_to_tapsc"] == 1.0
    assert rows["ibp"]["ratio_to_own_ibp"] == 1.0
