"""Connector kinds in the language, generated from ir.CONNECTOR_CLASSES: every kind parses with
its parameters, prints back, has a ramp (tests/method/test_connectors.py checks the ramp's
contract), and a parameter a kind fixes is the `connector-c` error. A new connector kind is
one IR node class and one registered ramp; these tests name whatever is missing."""

from __future__ import annotations

import pytest

from tapsc.errors import TapscError
from tapsc.language import ir
from tapsc.language.build_ir import field_names
from tapsc.language.printer import print_spec
from tapsc.language.spec import load_spec_text

SPEC = """data mnist { batch 64 }
model { flatten; linear(100); relu; linear(10) }
perturbation linf { eps 0.1 }
method { phase ibp until epoch 1; phase taps { CONNECTOR } }
optimizer adam { epochs 2 }
"""


def _example(cls: type[ir.Node]) -> tuple[str, dict]:
    """`connector KIND(field = value, ...)` with every field set to a non-default value."""
    values = {}
    for name in field_names(cls):
        default = cls.model_fields[name].default
        values[name] = default / 2 if isinstance(default, float) and default else 0.25
    args = ", ".join(f"{k} = {v}" for k, v in values.items())
    kind = cls.model_fields["kind"].default
    return f"connector {kind}({args})" if args else f"connector {kind}", values


@pytest.mark.parametrize("kind", sorted(ir.CONNECTOR_CLASSES))
def test_every_connector_kind_parses_prints_back_and_has_a_ramp(kind):
    from tapsc.method.connectors import CONNECTORS

    cls = ir.CONNECTOR_CLASSES[kind]
    text, values = _example(cls)
    spec = load_spec_text(SPEC.replace("CONNECTOR", text), "<connector>")
    connector = spec.method.phases[1].connector
    assert type(connector) is cls and connector.model_dump(mode="json") == {"kind": kind, **values}
    printed = print_spec(spec)
    assert load_spec_text(printed, "<printed>").model_dump(mode="json") == spec.model_dump(mode="json")
    assert kind in CONNECTORS, f"connector `{kind}` has no ramp in tapsc/method/connectors.py"


@pytest.mark.parametrize("kind", sorted(k for k, cls in ir.CONNECTOR_CLASSES.items() if not field_names(cls)))
def test_a_parameter_the_kind_fixes_is_an_error_that_says_which_kind_to_write(kind):
    with pytest.raises(TapscError) as error:
        load_spec_text(SPEC.replace("CONNECTOR", f"connector {kind}(c = 0.3)"), "<fixed>")
    diagnostic = error.value.diagnostics[0]
    assert diagnostic.code == "connector-c" and "rectified_linear(c = 0.3)" in diagnostic.help


def _dump(node: ir.Node) -> tuple:
    return type(node), node.model_dump(mode="json")


def test_a_new_kind_replaces_the_connector_an_include_set_and_arguments_alone_change_it():
    spec = load_spec_text(SPEC.replace("CONNECTOR", "connector rectified_linear(c = 0.2); connector linear"), "<a>")
    assert _dump(spec.method.phases[1].connector) == _dump(ir.LinearConnector())
    spec = load_spec_text(SPEC.replace("CONNECTOR", "connector linear; connector rectified_linear"), "<b>")
    assert _dump(spec.method.phases[1].connector) == _dump(ir.RectifiedLinearConnector())
    spec = load_spec_text(SPEC.replace("CONNECTOR", "connector(c = 0.3)"), "<c>")
    assert _dump(spec.method.phases[1].connector) == _dump(ir.RectifiedLinearConnector(c=0.3))


def test_an_unknown_argument_names_the_kinds_parameters():
    with pytest.raises(TapscError) as error:
        load_spec_text(SPEC.replace("CONNECTOR", "connector rectified_linear(cc = 0.3)"), "<typo>")
    assert "`c`" in error.value.diagnostics[0].help
