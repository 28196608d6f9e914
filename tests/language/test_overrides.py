"""Includes (later declarations override earlier ones field by field) and `--set`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tapsc.errors import TapscError
from tapsc.language.diagnostics import render_error
from tapsc.language.spec import load_spec, load_spec_text

ROOT = Path(__file__).parent.parent.parent
CIFAR8 = ROOT / "specs" / "cnn7_cifar_8.taps"


def test_later_section_overrides_one_field(tmp_path: Path):
    (tmp_path / "base.taps").write_text((ROOT / "specs" / "cnn7_cifar_8.taps").read_text()
                                        .replace('include "lib/cifar10.taps"', f'include "{ROOT}/specs/lib/cifar10.taps"'))
    (tmp_path / "short.taps").write_text('include "base.taps"\noptimizer { epochs 150 }\n')
    base, short = load_spec(tmp_path / "base.taps"), load_spec(tmp_path / "short.taps")
    assert short.optimizer.epochs == 150
    assert short.optimizer.model_dump(exclude={"epochs"}) == base.optimizer.model_dump(exclude={"epochs"})
    assert short.data.model_dump() == base.data.model_dump()


@pytest.mark.parametrize("override, read", [
    ("optimizer.lr=1e-3", lambda s: s.optimizer.lr == 1e-3),
    ("perturbation.eps=2/255", lambda s: s.perturbation.eps == pytest.approx(2 / 255)),
    ("split.relus_in_classifier=3", lambda s: s.split.count == 3),
    ("method.taps.weight=2", lambda s: s.method.phases[2].weight == 2),
    ("method.taps.attack.steps=7", lambda s: s.method.phases[2].attack.steps == 7),
    ("method.taps.connector=linear", lambda s: (s.method.phases[2].connector.kind,
                                                s.method.phases[2].connector.c) == ("linear", 1.0)),
    ("perturbation.schedule.end_epoch=41", lambda s: s.perturbation.schedule.end_epoch == 41),
    ("optimizer.milestones=(100, 150)", lambda s: s.optimizer.milestones == (100, 150)),
    ("data.batch=64", lambda s: s.data.batch == 64),
    ("eval.metrics=(natural, taps)", lambda s: s.eval.metrics == ("natural", "taps")),
])
def test_set_overrides(override: str, read):
    spec = load_spec(CIFAR8, [override])
    assert read(spec)
    assert load_spec(CIFAR8).model_dump() != spec.model_dump()


@pytest.mark.parametrize("override, code, column", [
    ("optimizer.lrate=1", "unknown-setting", 11),
    ("optimiser.lr=1", "unknown-section", 1),
    ("optimizer.lr", "bad-override", 1),
    ("method.sabr.weight=1", "unknown-phase", 8),
    ("optimizer.lr=(1", "unclosed-bracket", 14),
    ("optimizer.lr=-1", "bad-lr", 14),
    ("split.relus_in_classifier=9", "split-out-of-range", 1),
])
def test_bad_overrides_are_diagnostics(override: str, code: str, column: int):
    with pytest.raises(TapscError) as info:
        load_spec(CIFAR8, [override])
    diagnostic = info.value.diagnostics[0]
    assert diagnostic.code == code
    if code != "split-out-of-range":
        assert diagnostic.span.file.startswith("<--set") and diagnostic.span.column == column
        assert override in render_error(info.value)


def test_include_applies_where_it_stands(tmp_path: Path):
    (tmp_path / "lib.taps").write_text("optimizer adam { lr 0.1; epochs 3 }\n")
    body = "data mnist\nmodel { flatten; linear(10) }\nperturbation linf { eps 0.1 }\nmethod { phase ibp }\n"
    (tmp_path / "a.taps").write_text(body + 'include "lib.taps"\noptimizer { lr 0.2 }\n')
    (tmp_path / "b.taps").write_text(body + 'optimizer { lr 0.2 }\ninclude "lib.taps"\n')
    assert load_spec(tmp_path / "a.taps").optimizer.lr == 0.2
    assert load_spec(tmp_path / "b.taps").optimizer.lr == 0.1


def test_missing_spec_file_is_a_diagnostic(tmp_path: Path):
    with pytest.raises(TapscError) as info:
        load_spec(tmp_path / "nope.taps")
    assert info.value.diagnostics[0].code == "file-not-found"


def test_split_marker_and_split_section_later_wins():
    text = """data mnist
model { flatten; linear(32); relu; split; linear(10) }
split relus_in_classifier = 0
perturbation linf { eps 0.1 }
method { phase ibp }
optimizer adam { epochs 2 }"""
    assert load_spec_text(text).split.kind == "relus_in_classifier"
    moved = text.replace("split relus_in_classifier = 0\n", "").replace("model {", "split relus_in_classifier = 0\nmodel {")
    assert load_spec_text(moved).split.kind == "at_layer"
