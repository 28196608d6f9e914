"""`--set method.phase[N].setting=value` changes one phase by position (counted from 0), and
every `--set` mistake points into the override text (`<--set N>`), not the spec text."""

from __future__ import annotations

from pathlib import Path

import pytest

from tapsc.errors import TapscError
from tapsc.language.diagnostics import render_error
from tapsc.language.spec import load_spec

QUICKSTART = Path(__file__).resolve().parents[2] / "specs" / "quickstart.taps"
TWO_IBP = """data digits { batch 8 }
model { flatten; linear(16); relu; linear(10) }
split relus_in_classifier = 1
perturbation linf { eps 0.1 }
method { phase ibp until 2; phase ibp until 4; phase taps }
optimizer adam { epochs 6 }
"""


def _error(*overrides: str):
    with pytest.raises(TapscError) as info:
        load_spec(QUICKSTART, overrides)
    return info.value


def test_one_phase_by_position():
    spec = load_spec(QUICKSTART, ["method.phase[2].attack.steps=3", "method.phase[0].until=2"])
    phases = spec.method.phases
    assert phases[2].attack.steps == 3 and (phases[0].end, phases[1].start) == (2, 2)


def test_only_the_named_phase_of_a_kind_changes(tmp_path):
    path = tmp_path / "two.taps"
    path.write_text(TWO_IBP)
    spec = load_spec(path, ["method.phase[1].shi_regularizer=0.5"])
    assert [p.shi_regularizer for p in spec.method.phases[:2]] == [0.0, 0.5]
    by_kind = load_spec(path, ["method.ibp.shi_regularizer=0.5"])
    assert [p.shi_regularizer for p in by_kind.method.phases[:2]] == [0.5, 0.5]


def test_a_phase_past_the_last_points_at_the_index():
    error = _error("method.phase[9].attack.steps=8")
    diagnostic = error.diagnostics[0]
    assert diagnostic.code == "unknown-phase"
    assert (diagnostic.span.file, diagnostic.span.column, diagnostic.span.end_column) == ("<--set 1>", 13, 16)
    assert "`phase[2]` taps" in diagnostic.help
    assert "1 | method.phase[9].attack.steps=8" in render_error(error)


@pytest.mark.parametrize("override, code, column", [
    ("method.phase[1].weight=3", "unknown-setting", 17),
    ("method.phase[2].attack.stepz=3", "unknown-argument", 24),
    ("method.phase[2].attack.steps=0", "bad-steps", 30),
    ("perturbation.eps=2", "eps-outside-range", 18),
])
def test_override_mistakes_point_into_the_override(override, code, column):
    diagnostic = _error("data.batch=32", override).diagnostics[0]
    assert (diagnostic.code, diagnostic.span.file, diagnostic.span.column) == (code, "<--set 2>", column)
