"""VNN-COMP timeouts: the written rows never sum past 6 hours; csv and manifest agree to the digit."""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from tapsc.errors import TapscError
from tapsc.export.benchmark import MAX_TOTAL_TIMEOUT, Sample, capped_timeout, timeout_text, write_benchmark
from tapsc.language import ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "certify"))
from certify_nets import random_network  # noqa: E402

MLP = (ir.Flatten(), ir.Linear(out_features=8), ir.ReLU(), ir.Linear(out_features=3))


def written_sum(count: int, text: str) -> Fraction:
    """The exact sum of ``count`` rows whose timeout column reads ``text``."""
    return count * Fraction(text)


@pytest.mark.parametrize("count, timeout", [(1, 300), (1, 30000), (7, 5000), (17, 2000), (100, 300),
                                            (1000, 300), (1000, 21.65), (3, 7200.05), (216000, 1)])
def test_written_timeouts_never_sum_past_the_cap(count: int, timeout: float):
    per_instance, warning = capped_timeout(count, timeout)
    text = timeout_text(per_instance)
    total = written_sum(count, text)
    assert total <= Fraction(int(MAX_TOTAL_TIMEOUT))
    assert Fraction(text) <= Fraction(repr(float(timeout)))  # never above the request
    assert len(text.partition(".")[2]) <= 1  # written to 0.1 s
    assert json.loads(text) == per_instance and text == json.dumps(per_instance)
    if warning is not None:
        assert f"{text} s per instance" in warning
        assert total + count * Fraction(1, 10) > Fraction(int(MAX_TOTAL_TIMEOUT))  # the largest that fits


@pytest.mark.parametrize("count, timeout, expected", [
    (17, 2000, "1270.5"),    # 21600 / 17 = 1270.588...: down, not to 1270.6
    (7, 5000, "3085.7"),     # 3085.714...
    (1000, 300, "21.6"),     # exactly 21.6, no float fuzz taking it to 21.5
    (100, 300, "216"),       # whole seconds are written without a decimal
    (10, 300, "300"),        # under the cap: unchanged, no warning
    (10, 299.99, "299.9"),   # the requested timeout is also rounded down, never up
])
def test_per_instance_text(count: int, timeout: float, expected: str):
    per_instance, warning = capped_timeout(count, timeout)
    assert timeout_text(per_instance) == expected
    assert (warning is None) == (count * timeout <= MAX_TOTAL_TIMEOUT)


def test_a_timeout_written_as_zero_is_an_error():
    with pytest.raises(TapscError) as info:
        capped_timeout(3, 0.05)
    assert info.value.diagnostics[0].code == "timeout-too-small"
    with pytest.raises(TapscError):
        capped_timeout(216001, 1)
    assert capped_timeout(0, 0.05)[1] is None  # nothing is written: nothing to refuse


def test_seventeen_samples_at_2000_seconds_csv_and_manifest_agree(tmp_path):
    network = random_network(21, layers=MLP, input_shape=(1, 3, 3))
    x = torch.rand(17, 1, 3, 3, generator=torch.Generator().manual_seed(2))
    labels = network(x).argmax(1)  # every sample correctly classified: all 17 are exported
    samples = [Sample(i, x[i], int(labels[i])) for i in range(17)]
    report = write_benchmark(tmp_path, network, samples, 0.01, timeout=2000, onnx=False)
    assert report.instances == 17 and len(report.warnings) == 2  # the cap, and "no onnx yet"
    csv_texts = [row.split(",")[2] for row in (tmp_path / "instances.csv").read_text().splitlines()]
    assert csv_texts == ["1270.5"] * 17
    assert sum(Fraction(t) for t in csv_texts) <= 21600
    manifest_text = (tmp_path / "manifest.json").read_text()
    assert manifest_text.count('"timeout": 1270.5,') == 17  # the same digits, not 1270.588...
    manifest = json.loads(manifest_text)
    assert [m["timeout"] for m in manifest["instances"]] == [json.loads(t) for t in csv_texts]
    assert report.timeout == 1270.5
