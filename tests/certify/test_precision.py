"""Sound numbers are computed in full float32: TF32 is off wherever a bound or an accuracy is
claimed, and the user's own settings come back afterwards."""

from __future__ import annotations

import pytest
import torch

from tapsc import evaluate as evaluate_module
from tapsc.certify import certified, full_float32
from tapsc.certify.cascade import certify_dataset
from tapsc.language.spec import load_spec_text
from tapsc.precision import tf32_matmuls


def tf32_state():
    return (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
            torch.get_float32_matmul_precision())


@pytest.fixture
def tf32_on():
    """The fastest settings a user could have chosen (cuDNN's TF32 is on by default)."""
    before = tf32_state()
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    yield tf32_state()
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before[:2]
    torch.set_float32_matmul_precision(before[2])


def test_full_float32_turns_tf32_off_and_restores_it(tf32_on):
    with full_float32():
        assert tf32_state() == (False, False, "highest")
    assert tf32_state() == tf32_on
    with pytest.raises(RuntimeError), full_float32():
        raise RuntimeError("an error inside still restores the settings")
    assert tf32_state() == tf32_on


def test_evaluation_metrics_run_without_tf32(tf32_on, monkeypatch):
    seen = []

    def recording_verdict(name, network, x_B, y_B, spec):
        seen.append(tf32_state())
        return torch.ones(len(y_B), dtype=torch.bool)

    monkeypatch.setattr(evaluate_module, "robust", recording_verdict)
    spec = load_spec_text("data digits { batch 4 }\nmodel { flatten; linear(10) }\nperturbation { eps 0.1 }\n"
                          "method { phase ibp }\noptimizer { epochs 1 }\neval { metrics (ibp); select ibp }\n", "<test>")
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    dataset = [(torch.rand(1, 8, 8), 0) for _ in range(6)]
    result = evaluate_module.evaluate(network, dataset, spec, ["ibp"], batch=4)
    assert result["metrics"]["ibp"] == 1.0 and seen == [(False, False, "highest")] * 2
    assert tf32_state() == tf32_on


def test_certification_runs_without_tf32(tf32_on, monkeypatch):
    # through the real code: the cascade's attack calls the network, its bounds call node_boxes
    from certify_nets import random_network

    from tapsc.certify.cascade import Cascade
    from tapsc.certify.linear import LinearBounds
    from tapsc.language import ir

    seen = []
    real_node_boxes = LinearBounds.node_boxes

    def recording_node_boxes(self, *args, **kwargs):
        seen.append(("bounds", tf32_state()))
        return real_node_boxes(self, *args, **kwargs)

    monkeypatch.setattr(LinearBounds, "node_boxes", recording_node_boxes)
    network = random_network(0).eval()
    network.register_forward_hook(lambda module, inputs, output: seen.append(("attack", tf32_state())))
    cascade = Cascade(network, 0.01, ir.InputAttack(steps=2, restarts=1, loss="margin"), methods=("ibp",))
    dataset = [(torch.rand(network.input_shape), i % 3) for i in range(3)]
    certify_dataset(cascade, dataset, range(3), batch=2)
    assert {kind for kind, _ in seen} == {"bounds", "attack"}
    assert {state for _, state in seen} == {(False, False, "highest")} and tf32_state() == tf32_on

    seen.clear()
    assert certified(network, torch.rand(2, *network.input_shape), torch.tensor([0, 1]), 0.01, "ibp").shape == (2,)
    assert seen and {state for _, state in seen} == {(False, False, "highest")} and tf32_state() == tf32_on


def test_tf32_matmuls_for_training_yield_to_full_float32():
    before = tf32_state()
    torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's default for matrix products
    strict = tf32_state()
    try:
        with tf32_matmuls(enabled=False):
            assert tf32_state() == strict
        with tf32_matmuls():
            assert torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() != "highest"
            with full_float32():  # certification inside a training block is still full float32
                assert tf32_state() == (False, False, "highest")
            assert torch.backends.cuda.matmul.allow_tf32
        assert tf32_state() == strict
        with pytest.raises(RuntimeError), tf32_matmuls():
            raise RuntimeError("an error inside still restores the settings")
        assert tf32_state() == strict
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before[:2]
        torch.set_float32_matmul_precision(before[2])
