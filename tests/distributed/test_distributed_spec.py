"""The `distributed` section: parsed, defaulted, overridable, printed back."""

from __future__ import annotations

from dist_helpers import DIST_SPEC

from tapsc.language.printer import print_spec
from tapsc.language.spec import load_spec_text

PLAIN = DIST_SPEC.replace("distributed { sync_batchnorm true }\n", "")


def test_sync_batchnorm_defaults_off_and_parses():
    assert load_spec_text(PLAIN).distributed.sync_batchnorm is False
    assert load_spec_text(DIST_SPEC).distributed.sync_batchnorm is True
    assert load_spec_text(PLAIN, overrides=["distributed.sync_batchnorm=true"]).distributed.sync_batchnorm


def test_printer_round_trips_the_section():
    spec = load_spec_text(DIST_SPEC)
    text = print_spec(spec)
    assert "distributed {" in text and "sync_batchnorm true" in text
    assert load_spec_text(text).distributed.model_dump() == spec.distributed.model_dump()
    assert "distributed" not in print_spec(load_spec_text(PLAIN))  # defaults are not printed
