"""The VNN-COMP benchmark layout: what a verifier's run scripts read without glue.

    OUT/onnx/net.onnx
    OUT/vnnlib/prop_<sample index>.vnnlib
    OUT/instances.csv     no header; onnx/net.onnx,vnnlib/prop_17.vnnlib,TIMEOUT
    OUT/manifest.json     instance -> sample index, label, eps, tapsc's own verdict; the
                          provenance (eps, norm, data split, checkpoint and spec sha256) and
                          the ONNX file's sha256, which `tapsc certify --merge` checks

VNN-COMP caps a benchmark's summed timeouts at 6 hours; when the instances would
exceed it, the per-instance timeout is lowered to fit and a warning says so. Timeouts
are written to 0.1 s, always rounded DOWN, so the written rows never sum past the cap;
instances.csv and manifest.json hold the same number, formatted by `timeout_text`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tapsc.errors import Diagnostic, TapscError
from tapsc.export.onnx import OnnxReport, export_onnx
from tapsc.export.vnnlib import write_property_file

MAX_TOTAL_TIMEOUT = 6 * 3600.0
TIMEOUT_STEPS_PER_SECOND = 10  # timeouts are written to 0.1 s
ONNX_NAME = "net.onnx"


@dataclass(frozen=True)
class Sample:
    """One test sample to export; ``verdict`` is tapsc's in-house verdict if known."""

    index: int
    x: torch.Tensor
    label: int
    verdict: str | None = None


@dataclass
class BenchmarkReport:
    out_dir: Path
    instances: int
    timeout: int | float  # seconds per instance, exactly as written (see `timeout_text`)
    skipped_misclassified: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    onnx: OnnxReport | None = None


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def capped_timeout(count: int, timeout: float) -> tuple[int | float, str | None]:
    """Per-instance timeout (seconds) for ``count`` instances, as written, and a warning if lowered.

    The result is ``timeout`` rounded DOWN to 0.1 s, lowered (again rounding down) when
    ``count`` instances would otherwise sum past VNN-COMP's 6 hours, so ``count`` times the
    written value never exceeds `MAX_TOTAL_TIMEOUT`. It is an int when whole and a float
    with one decimal otherwise; `timeout_text` gives its exact text in the csv and manifest.

    Raises:
        TapscError: ``count`` > 0 and the timeout would be written as 0 s (``timeout``
            under 0.1 s, or more instances than the cap has tenths of a second).
    """
    # the decimal the user wrote, exactly (300.3 is not a float's 300.29999...)
    steps = math.floor(Fraction(repr(float(timeout))) * TIMEOUT_STEPS_PER_SECOND)
    cap_steps = int(MAX_TOTAL_TIMEOUT) * TIMEOUT_STEPS_PER_SECOND
    warning = None
    if count > 0 and count * steps > cap_steps:
        steps = cap_steps // count
        warning = (f"{count} instances x {timeout:g} s exceed VNN-COMP's 6-hour cap per benchmark; "
                   f"timeout lowered to {timeout_text(_seconds(steps))} s per instance "
                   f"(export fewer samples to keep {timeout:g} s)")
    if steps <= 0 and count > 0:
        raise TapscError(Diagnostic(
            code="timeout-too-small",
            message=f"a timeout of {timeout:g} s for {count} instances is written as 0 s "
                    f"(timeouts are written to 0.1 s and sum to at most {MAX_TOTAL_TIMEOUT:g} s)",
            help="give a timeout of at least 0.1 s (`--timeout` or `export.timeout`), "
                 "or export fewer samples"))
    return _seconds(steps), warning


def _seconds(steps: int) -> int | float:
    """``steps`` tenths of a second as a number whose shortest text has at most one decimal."""
    whole, rest = divmod(steps, TIMEOUT_STEPS_PER_SECOND)
    return whole if rest == 0 else steps / TIMEOUT_STEPS_PER_SECOND


def timeout_text(timeout: int | float) -> str:
    """The text of a `capped_timeout` value in instances.csv: what json writes in manifest.json."""
    return json.dumps(timeout)


def correctly_classified(network: nn.Module, samples: Sequence[Sample]) -> tuple[list[Sample], list[int]]:
    """Keep the samples the network classifies correctly; returns them and the dropped indices."""
    if not samples:
        return [], []
    with torch.no_grad():
        predictions = network.eval()(torch.stack([s.x for s in samples]).float()).argmax(1).tolist()
    kept = [s for s, p in zip(samples, predictions) if p == s.label]
    return kept, [s.index for s, p in zip(samples, predictions) if p != s.label]


def write_benchmark(out_dir: Path, network: nn.Module, samples: Sequence[Sample], eps: float, timeout: float,
                    opset: int = 13, onnx: bool = True, vnnlib: bool = True,
                    parity_inputs: torch.Tensor | None = None, provenance: dict | None = None,
                    pool_as_conv: bool = False) -> BenchmarkReport:
    """Write the VNN-COMP folder for ``samples`` (misclassified ones are skipped).

    Args:
        parity_inputs: real inputs for the onnxruntime check (default: the samples).
        provenance: what the benchmark was made from (eps, norm, dataset, split,
            checkpoint_sha256, spec_sha256), copied into manifest.json; ``tapsc certify
            --merge`` refuses results whose manifest does not match certify.json's.
        pool_as_conv: average pooling as an equal fixed-weight Conv (for Marabou);
            recorded in manifest.json.
    """
    out_dir = Path(out_dir)
    kept, dropped = correctly_classified(network, samples)
    per_instance, warning = capped_timeout(len(kept), timeout)
    report = BenchmarkReport(out_dir, len(kept) if vnnlib else 0, per_instance, dropped,
                             [warning] if warning and vnnlib else [])
    if onnx:
        inputs = parity_inputs if parity_inputs is not None else torch.stack([s.x for s in samples[:100]])
        report.onnx = export_onnx(network, out_dir / "onnx" / ONNX_NAME, inputs.float(), opset,
                                  pool_as_conv=pool_as_conv)
    elif vnnlib and not (out_dir / "onnx" / ONNX_NAME).exists():
        report.warnings.append(f"{out_dir / 'onnx' / ONNX_NAME} does not exist yet; add --onnx")
    if vnnlib:
        _write_properties(out_dir, kept, eps, per_instance, network.num_classes, provenance or {}, pool_as_conv)
    return report


def _write_properties(out_dir: Path, samples: Sequence[Sample], eps: float, timeout: int | float,
                      num_classes: int, provenance: dict, pool_as_conv: bool = False):
    folder = out_dir / "vnnlib"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("prop_*.vnnlib"):  # a previous export's properties would mislead
        stale.unlink()
    rows, instances = [], []
    for sample in samples:
        name = f"vnnlib/prop_{sample.index}.vnnlib"
        comment = f"tapsc: test sample {sample.index}, label {sample.label}, eps {eps:g}"
        write_property_file(out_dir / name, np.asarray(sample.x.cpu(), dtype=np.float32), sample.label,
                            num_classes, eps, comment=comment)
        rows.append(f"onnx/{ONNX_NAME},{name},{timeout_text(timeout)}\n")
        instances.append({"onnx": f"onnx/{ONNX_NAME}", "vnnlib": name, "index": sample.index,
                          "label": sample.label, "eps": eps, "timeout": timeout, "verdict": sample.verdict})
    (out_dir / "instances.csv").write_text("".join(rows))
    onnx_file = out_dir / "onnx" / ONNX_NAME
    manifest = {"format": "vnncomp", "onnx": f"onnx/{ONNX_NAME}", "eps": eps, "norm": "linf",
                "onnx_sha256": file_sha256(onnx_file) if onnx_file.is_file() else None,
                "provenance": {**provenance, "eps": eps, "norm": "linf"},
                "input_units": "[0, 1] pixels (normalisation is inside the ONNX graph)",
                "avgpool_as_conv": pool_as_conv,
                "result_meaning": "unsat = robust, sat = counterexample", "instances": instances}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
