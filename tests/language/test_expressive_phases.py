"""The mtl_ibp, cc_ibp, exp_ibp and crown_ibp phases in the language: settings, did-you-mean,
printer round trip and the checks every robust phase gets."""

from __future__ import annotations

import pytest

from tapsc.errors import TapscError
from tapsc.language import ir
from tapsc.language.printer import print_spec
from tapsc.language.spec import load_spec_text

NEW = ("mtl_ibp", "cc_ibp", "exp_ibp", "crown_ibp")
HEAD = """data mnist { batch 64 }
model { flatten; linear(100); relu; linear(10) }
perturbation linf { eps EPS; schedule linear from epoch 1 to 5 }
"""
ALL = HEAD + """method {
  phase natural until epoch 1
  phase mtl_ibp with alpha 0.01 until epoch 2 { attack pgd(steps = 1, step_size = 10) }
  phase cc_ibp until epoch 3 { alpha 0.5; attack pgd(steps = 8, margin) }
  phase exp_ibp with alpha 0.1 until epoch 4
  phase crown_ibp { beta_start 0.9; beta_end 0.1; kappa_start 1; kappa_end 0.5 }
}
optimizer adam { epochs 6 }
"""


def test_every_setting_reaches_the_ir_and_round_trips_through_the_printer():
    spec = load_spec_text(ALL.replace("EPS", "0.1"), "<all>")
    expected = (ir.NaturalPhase(end=1),
                ir.MTLIBPPhase(start=1, end=2, alpha=0.01, attack=ir.InputAttack(steps=1, step_size=10)),
                ir.CCIBPPhase(start=2, end=3, alpha=0.5, attack=ir.InputAttack(steps=8, loss="margin")),
                ir.ExpIBPPhase(start=3, end=4, alpha=0.1),
                ir.CROWNIBPPhase(start=4, beta_start=0.9, beta_end=0.1, kappa_start=1.0, kappa_end=0.5))
    assert [p.model_dump(mode="json") for p in spec.method.phases] == [p.model_dump(mode="json") for p in expected]
    printed = print_spec(spec)
    again = load_spec_text(printed, "<printed>")
    assert again.model_dump(mode="json") == spec.model_dump(mode="json")
    assert print_spec(again) == printed


@pytest.mark.parametrize("kind, typo, meant", [
    ("mtl_ibp", "alpah 0.1", "alpha"), ("cc_ibp", "atack pgd(steps = 2)", "attack"),
    ("exp_ibp", "alfa 0.1", "alpha"), ("crown_ibp", "beta_strat 1", "beta_start"),
    ("crown_ibp", "kapa_end 0.5", "kappa_end"), ("crown_ibp", "kappa_strat 1", "kappa_start"),
])
def test_a_misspelt_setting_names_the_one_meant(kind, typo, meant):
    text = HEAD.replace("EPS", "0.1") + f"method {{ phase {kind} {{ {typo} }} }}\noptimizer adam {{ epochs 6 }}\n"
    with pytest.raises(TapscError) as info:
        load_spec_text(text, "<typo>")
    diagnostic = info.value.diagnostics[0]
    assert diagnostic.code == "unknown-setting" and f"`{meant}`" in diagnostic.help


def test_a_misspelt_phase_kind_names_the_one_meant():
    text = HEAD.replace("EPS", "0.1") + "method { phase mtl_ipb }\noptimizer adam { epochs 6 }\n"
    with pytest.raises(TapscError) as info:
        load_spec_text(text, "<typo>")
    assert "`mtl_ibp`" in info.value.diagnostics[0].help


@pytest.mark.parametrize("kind", NEW)
def test_zero_eps_is_an_error_for_every_new_phase(kind):
    text = HEAD.replace("EPS", "0") + f"method {{ phase {kind} }}\noptimizer adam {{ epochs 6 }}\n"
    with pytest.raises(TapscError) as info:
        load_spec_text(text, "<zero>")
    assert [d.code for d in info.value.diagnostics] == ["zero-eps"]


def test_alpha_beta_and_kappa_stay_in_the_unit_interval():
    for setting in ("alpha 1.5", "alpha -0.1"):
        text = HEAD.replace("EPS", "0.1") + f"method {{ phase mtl_ibp {{ {setting} }} }}\noptimizer adam {{ epochs 6 }}\n"
        with pytest.raises(TapscError):
            load_spec_text(text, "<range>")
    for setting in ("beta_end 2", "kappa_start 1.5", "kappa_end -0.1"):
        with pytest.raises(TapscError):
            load_spec_text(HEAD.replace("EPS", "0.1") + f"method {{ phase crown_ibp {{ {setting} }} }}\n"
                           "optimizer adam { epochs 6 }\n", "<range>")


def test_robust_kinds_are_derived_from_the_phase_classes():
    assert set(NEW) <= set(ir.ROBUST_PHASE_KINDS) and "natural" not in ir.ROBUST_PHASE_KINDS
    assert set(ir.PHASE_KINDS) == {cls.model_fields["kind"].default for cls in ir.PHASE_CLASSES}
