"""`--epochs N`: the whole schedule rescaled by a pure, torch-free function on the IR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tapsc.errors import TapscError
from tapsc.language import ir
from tapsc.language.schedule import rescale_epochs
from tapsc.language.spec import load_spec, load_spec_text, with_epochs

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "ir" / "rescaled" / "cnn7_cifar_8_epochs_8.json"


def test_golden_rescaled_ir(update_goldens: bool):
    rescaled = with_epochs(load_spec(ROOT / "specs" / "cnn7_cifar_8.taps"), 8)
    text = rescaled.spec.model_dump_json(indent=2) + "\n"
    if update_goldens or not GOLDEN.exists():
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert json.loads(text) == json.loads(GOLDEN.read_text())
    assert rescaled.summary() == (
        "schedule rescaled from 160 to 8 epochs: phases natural [0, 1), ibp [1, 81), taps [81, 160) -> "
        "natural [0, 1), ibp [1, 4), taps [4, 8); eps ramp epochs 1-81 -> 1-4; lr milestones (120, 140) -> (6, 7)")


def test_the_ramp_follows_the_phase_boundary_it_sits_on():
    spec = rescale_epochs(load_spec(ROOT / "specs" / "quickstart.taps"), 5).spec
    ibp = spec.method.phases[1]
    assert (ibp.start, ibp.end) == (spec.perturbation.schedule.start_epoch, spec.perturbation.schedule.end_epoch)


def test_too_few_epochs_for_the_phases_is_a_clean_error():
    with pytest.raises(TapscError) as info:
        rescale_epochs(load_spec(ROOT / "specs" / "cnn7_cifar_8.taps"), 2)
    assert info.value.diagnostics[0].code == "too-few-epochs" and "--epochs 3" in info.value.diagnostics[0].help


def test_same_epochs_changes_nothing():
    spec = load_spec(ROOT / "specs" / "cnn7_cifar_8.taps")
    rescaled = rescale_epochs(spec, 160)
    assert rescaled.spec.model_dump() == spec.model_dump() and rescaled.changes == ()


def test_rescaling_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from tapsc.commands.language import check_one; "
            "check_one(__import__('pathlib').Path('specs/cnn7_cifar_8.taps'), epochs=8); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(1, 400), min_size=0, max_size=5, unique=True),
       total=st.integers(1, 400), epochs=st.integers(1, 60), ramp=st.tuples(st.integers(0, 400), st.integers(0, 400)),
       milestones=st.lists(st.integers(1, 399), max_size=4, unique=True))
def test_rescaled_schedules_keep_order_and_pass_the_checks(cuts, total, epochs, ramp, milestones):
    ends = sorted(c for c in cuts if c < total)
    kinds = ["natural", "ibp", "taps", "pgd", "ibp", "natural"]
    phases = "; ".join(f"phase {kinds[i]} until {end}" for i, end in enumerate(ends))
    phases = (phases + "; " if phases else "") + f"phase {kinds[len(ends)]}"
    start, end = sorted(min(r, total) for r in ramp)
    stones = sorted(m for m in milestones if m < total)
    decay = f"decay 0.5 at ({', '.join(map(str, stones))},)" if stones else ""
    text = (f"data digits {{ batch 8 }}\nmodel {{ flatten; linear(16); relu; linear(10) }}\nsplit relus_in_classifier = 1\n"
            f"perturbation linf {{ eps 0.1; schedule linear from {start} to {end} }}\nmethod {{ {phases} }}\n"
            f"optimizer adam {{ epochs {total}; {decay} }}\n")
    spec = load_spec_text(text)
    if epochs < len(spec.method.phases):
        with pytest.raises(TapscError):
            rescale_epochs(spec, epochs)
        return
    rescaled = with_epochs(spec, epochs).spec  # raises if the rescaled spec fails a check
    new = rescaled.method.phases
    assert [p.kind for p in new] == [p.kind for p in spec.method.phases]
    assert all(p.start < (p.end if p.end is not None else epochs) for p in new)
    assert rescaled.optimizer.epochs == epochs
    assert isinstance(rescaled, ir.Spec)
