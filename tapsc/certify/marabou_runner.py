"""Run Marabou (maraboupy) on one ONNX + VNN-LIB instance and write a VNN-COMP result file.

    python -m tapsc.certify.marabou_runner NET.onnx PROP.vnnlib RESULT_FILE TIMEOUT_SECONDS

``tapsc verify --verifier marabou`` starts this in its own process group, so the same
timeout and kill machinery applies as to any VNN-COMP tool. The property's unsafe region
(an ``or`` of ``and`` terms over the outputs) is checked one disjunct at a time, each a
fresh Marabou query with the box as variable bounds, sharing the time left: any ``sat``
ends the search (re-solved with the unsafe side tightened by `STRICT_MARGIN`, so the point
is not on the boundary where float32 rounding may undo it) and writes ``sat`` and the witness ``((X_0 v) ... (Y_0 v) ...)``; all
``unsat`` write ``unsat``; otherwise ``timeout`` or ``unknown``. The answer is not
trusted: the merge replays every witness with onnxruntime and checks ``unsat`` against
known counterexamples. Exit code 0 whenever a result file was written, 1 on an error.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

STRICT_MARGIN = 1e-4  # how far past the boundary a re-solved witness must lie


def _term(network, outputs, op, left, right, margin: float = 0.0) -> None:
    """Add ``left op right`` (each side an output index or a constant), tightened by ``margin``,
    as ``sum c v <= s``."""
    high, low = (right, left) if op == ">=" else (left, right)  # high - low <= -margin
    variables, coefficients, scalar = [], [], -margin
    for side, sign in ((high, 1.0), (low, -1.0)):
        if isinstance(side, int):
            variables.append(int(outputs[side]))
            coefficients.append(sign)
        else:
            scalar -= sign * float(side)
    network.addInequality(variables, coefficients, scalar)


def solve(onnx: Path, vnnlib: Path, timeout: float) -> tuple[str, str | None]:
    """``(word, witness)`` for the instance; the witness only with ``sat``."""
    from tapsc.export.vnnlib import read_property

    prop = read_property(vnnlib)
    deadline = time.monotonic() + timeout
    word = "unsat"
    for conjunct in prop.disjuncts:
        result, witness = _query(onnx, prop, conjunct, deadline)
        if result == "sat":
            # Marabou's point often sits on the boundary (y_j = y_t up to its tolerance), which a
            # float32 replay may put on the safe side: ask for a point strictly inside, if time allows
            strict, better = _query(onnx, prop, conjunct, deadline, STRICT_MARGIN)
            return "sat", better if strict == "sat" else witness
        if result != "unsat":
            word = "timeout" if result == "timeout" else "unknown"
    return word, None


def _query(onnx: Path, prop, conjunct, deadline: float, margin: float = 0.0) -> tuple[str, str | None]:
    """One Marabou query: the box and one conjunct of the unsafe region; (result, witness)."""
    from maraboupy import Marabou

    left = deadline - time.monotonic()
    if left < 1:
        return "timeout", None
    network = Marabou.read_onnx(str(onnx))
    inputs = network.inputVars[0].reshape(-1)
    outputs = network.outputVars[0].reshape(-1)
    if inputs.size != prop.lower.size or outputs.size != prop.outputs:
        raise ValueError(f"{onnx} has {inputs.size} inputs and {outputs.size} outputs, the property "
                         f"{prop.lower.size} and {prop.outputs}")
    for variable, lower, upper in zip(inputs, prop.lower, prop.upper):
        network.setLowerBound(int(variable), float(lower))
        network.setUpperBound(int(variable), float(upper))
    for term in conjunct:
        _term(network, outputs, *term, margin=margin)
    options = Marabou.createOptions(timeoutInSeconds=max(1, int(left)), verbosity=0)
    result, values, _ = network.solve(options=options, verbose=False)
    result = str(result).strip().lower()
    if result != "sat":
        return ("timeout" if result == "timeout" else result if result == "unsat" else "unknown"), None
    xs = " ".join(f"(X_{i} {values[int(v)]!r})" for i, v in enumerate(inputs))
    ys = " ".join(f"(Y_{j} {values[int(v)]!r})" for j, v in enumerate(outputs))
    return "sat", f"({xs} {ys})"


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 1
    onnx, vnnlib, result_file, timeout = Path(argv[0]), Path(argv[1]), Path(argv[2]), float(argv[3])
    word, witness = solve(onnx, vnnlib, timeout)
    result_file.write_text(word + "\n" + (witness + "\n" if witness else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
