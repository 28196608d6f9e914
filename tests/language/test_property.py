"""Random mutations of valid specs give either a valid IR or clean diagnostics, never
another exception (hypothesis)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tapsc.errors import TapscError
from tapsc.language import ir
from tapsc.language.diagnostics import render_error
from tapsc.language.spec import load_spec_text

ROOT = Path(__file__).parent.parent.parent
SPECS = sorted((ROOT / "specs").glob("*.taps"))
TEXTS = [(str(p), p.read_text()) for p in SPECS]
TOKENS = ["{", "}", "(", ")", ",", ";", "\n", "=", ":", "-", "*", "/", "0", "-1", "1e9", "0.5", "8/255",
          "relu", "conv", "phase", "taps", "split", "repeat", "until", "epoch", "with", "include", '"x.taps"',
          "cnn7", "block", "eps", "none", "true", "#", "residual", "shortcut", "1/0", "1e999", "9" * 30]


@st.composite
def mutated(draw):
    filename, text = draw(st.sampled_from(TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 12)))
        kind = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        if kind == "delete":
            text = text[:start] + text[end:]
        elif kind == "insert":
            text = text[:start] + " " + draw(st.sampled_from(TOKENS)) + " " + text[start:]
        elif kind == "replace":
            text = text[:start] + draw(st.text(alphabet="abcdefxyz_0123456789(){};=,.-/* \n", max_size=6)) + text[end:]
        else:
            text = text[:end] + text[start:end] + text[end:]
    return filename, text


@settings(max_examples=int(__import__("os").environ.get("TAPS_FUZZ", 250)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_specs_give_ir_or_diagnostics(case):
    filename, text = case
    try:
        spec = load_spec_text(text, filename)
    except TapscError as error:
        assert error.diagnostics
        rendered = render_error(error)
        assert rendered.startswith("error[") and "Traceback" not in rendered
    else:
        assert isinstance(spec, ir.Spec)
