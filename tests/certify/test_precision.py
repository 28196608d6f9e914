"""Sound numbers are computed in full float32: TF32 is off wherever a bound or an accuracy is
claimed, and the user's own settings come back afterwards."""

from __future__ import annotations

import pytest
import torch

from tapsc import certify as certify_module
from tapsc import evaluate as evaluate_module
from tapsc.certify import certified, full_float32
from tapsc.certify.cascade import certify_dataset
from tapsc.spec import load_spec_text


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

    def recording_metric(network, x_B, y_B, spec):
        seen.append(tf32_state())
        return torch.ones(len(y_B), dtype=torch.bool)

    monkeypatch.setitem(evaluate_module.METRICS, "ibp", recording_metric)
    spec = load_spec_text("data digits { batch 4 }\nmodel { flatten; linear(10) }\nperturbation { eps 0.1 }\n"
                          "method { phase ibp }\noptimizer { epochs 1 }\neval { metrics (ibp); select ibp }\n", "<test>")
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    dataset = [(torch.rand(1, 8, 8), 0) for _ in range(6)]
    result = evaluate_module.evaluate(network, dataset, spec, ["ibp"], batch=4)
    assert result["metrics"]["ibp"] == 1.0 and seen == [(False, False, "highest")] * 2
    assert tf32_state() == tf32_on


def test_certification_runs_without_tf32(tf32_on, monkeypatch):
    seen = []

    class RecordingCascade:
        def run(self, x_BX, labels_B, chunk):
            seen.append(tf32_state())
            return []

    certify_dataset(RecordingCascade(), [(torch.rand(2), 0)] * 3, range(3), batch=2)
    assert seen == [(False, False, "highest")] * 2 and tf32_state() == tf32_on

    class RecordingBounds:
        def __init__(self, layers):
            pass

        def margin_lower_bounds(self, lo, hi, labels_B, method):
            seen.append(tf32_state())
            return torch.ones(len(labels_B), 9)

    monkeypatch.setattr(certify_module, "LinearBounds", RecordingBounds)
    assert bool(certified(torch.nn.Linear(2, 10), torch.rand(2, 2), torch.tensor([0, 1]), 0.01, "ibp").all())
    assert seen[-1] == (False, False, "highest") and tf32_state() == tf32_on
