"""A tiny deterministic CPU run (IBP ramp with Shi regularizer, then TAPS) reproduces its losses.

Regenerate with ``pytest --update-goldens`` and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from method_helpers import build

from tapsc.language import ir
from tapsc.method import eps_at, phase_loss

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "losses" / "taps_tiny_cpu.json"
SCHEDULE = ir.EpsSchedule(shape="smooth", start_epoch=0, end_epoch=2)
EPS_TARGET = 0.05
PHASES = [(0, 2, ir.IBPPhase(shi_regularizer=0.5)),
          (2, 4, ir.TAPSPhase(attack=ir.LatentAttack(steps=5), weight=5.0))]


def _tiny_run() -> list[dict[str, float]]:
    torch.manual_seed(0)
    network = build(split=1, seed=0, init="shi").train()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand((32, 1, 6, 6), generator=generator)
    y = (x[:, 0, :3].mean((1, 2)) * 5 * 0.999).long().clamp(max=4)  # a learnable labelling
    optimizer = torch.optim.Adam(network.parameters(), lr=5e-3)
    records = []
    for start, end, phase in PHASES:
        for epoch in range(start, end):
            for index in range(4):
                part = slice(8 * index, 8 * index + 8)
                eps = eps_at(SCHEDULE, EPS_TARGET, epoch, index, 4)
                optimizer.zero_grad()
                loss, terms = phase_loss(network, phase, x[part], y[part], eps, EPS_TARGET, l1=1e-5)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(network.parameters(), 10.0)
                optimizer.step()
                records.append({"epoch": epoch, "eps": eps, **terms})
    return records


def test_tiny_taps_run_reproduces_its_losses(request):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # summation order, hence the last bits, depends on threads
    try:
        records = _tiny_run()
    finally:
        torch.set_num_threads(threads)
    if request.config.getoption("--update-goldens", default=False) or not GOLDEN.exists():
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(records, indent=1) + "\n")
        if not request.config.getoption("--update-goldens", default=False):
            pytest.skip(f"wrote missing golden {GOLDEN.name}; rerun to compare")
    expected = json.loads(GOLDEN.read_text())
    assert len(records) == len(expected)
    for got, want in zip(records, expected):
        assert set(got) == set(want)
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-3, abs=1e-5), (got["epoch"], key)


PHASE_GOLDEN = GOLDEN.parent / "phases_tiny_cpu.json"


def _phase_step(phase: ir.Node) -> dict[str, float]:
    """One loss evaluation of ``phase`` on the tiny network, halfway up the eps ramp."""
    torch.manual_seed(0)
    network = build(split=1, seed=0, init="shi").train()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand((8, 1, 6, 6), generator=generator)
    y = (x[:, 0, :3].mean((1, 2)) * 5 * 0.999).long().clamp(max=4)
    _, terms = phase_loss(network, phase, x, y, 0.05, 0.1, l1=1e-5)
    return terms


def test_every_phase_kind_has_a_case_and_a_golden_loss(request):
    """Generated from ir.PHASE_KINDS: each phase kind has a test case (method_helpers.PHASE_CASES)
    and its loss terms on a tiny network are pinned in tests/golden/losses/phases_tiny_cpu.json;
    a new phase kind fails here, by name, until it has both (`pytest --update-goldens` writes
    the golden; review it)."""
    from method_helpers import PHASE_CASES

    cases = {phase.kind: phase for phase in PHASE_CASES}
    missing = sorted(set(ir.PHASE_KINDS) - set(cases))
    assert not missing, f"phase kind(s) {missing} have no case in tests/method/method_helpers.py PHASE_CASES"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = {kind: _phase_step(cases[kind]) for kind in ir.PHASE_KINDS}
    finally:
        torch.set_num_threads(threads)
    if request.config.getoption("--update-goldens", default=False):
        PHASE_GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    expected = json.loads(PHASE_GOLDEN.read_text()) if PHASE_GOLDEN.exists() else {}
    missing = sorted(set(got) - set(expected))
    assert not missing, f"phase kind(s) {missing} have no golden loss: run `pytest --update-goldens` and review"
    for kind, terms in got.items():
        assert set(terms) == set(expected[kind]), kind
        for key, value in expected[kind].items():
            assert terms[key] == pytest.approx(value, rel=1e-3, abs=1e-5), (kind, key)
