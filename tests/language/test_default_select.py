"""`eval.select` left unset follows the phases (ir.default_select): natural-only specs select
on natural accuracy, natural/PGD ones on PGD, certified-training ones on TAPS accuracy."""

from __future__ import annotations

import pytest
from cli_helpers import DIGITS_TAPS_BODY

from tapsc.language import ir
from tapsc.language.printer import print_spec
from tapsc.language.spec import load_spec_text

TAPS_PHASES = """\
  phase natural until epoch 1
  phase ibp with shi_regularizer 0.5 until epoch 2
  phase taps { attack pgd(steps = 3, multi) }
"""


def spec_with(phases: str, *rest: str) -> ir.Spec:
    body = DIGITS_TAPS_BODY.replace(TAPS_PHASES, phases)
    assert body != DIGITS_TAPS_BODY or phases == TAPS_PHASES
    text = "data digits { }\n" + body + "optimizer adam { epochs 3 }\n" + "".join(f"{r}\n" for r in rest)
    return load_spec_text(text, "<test>")


@pytest.mark.parametrize("phases, expected", [
    ("  phase natural\n", "natural"),
    ("  phase natural until epoch 1\n  phase pgd\n", "pgd"),
    ("  phase pgd until epoch 2\n  phase natural\n", "pgd"),  # the most robust, not the last
    (TAPS_PHASES, "taps"),
    ("  phase natural until epoch 1\n  phase ibp\n", "taps"),
])
def test_unset_select_follows_the_phases(phases, expected):
    spec = spec_with(phases)
    assert spec.eval.select == expected
    assert ir.default_select(spec.method.phases) == expected
    assert '"select":"' + expected + '"' in spec.model_dump_json()  # stored in ir.json


@pytest.mark.parametrize("phases", ["  phase natural\n", "  phase natural until epoch 1\n  phase pgd\n", TAPS_PHASES])
@pytest.mark.parametrize("select", ["natural", "pgd", "taps"])
def test_a_written_select_wins_and_round_trips(phases, select):
    spec = spec_with(phases, f"eval {{ select {select} }}")
    assert spec.eval.select == select
    again = load_spec_text(print_spec(spec), "<printed>")
    assert again.model_dump() == spec.model_dump()
    reloaded = ir.Spec.model_validate_json(spec.model_dump_json())  # as ir.json is read back
    assert reloaded.eval.select == select
