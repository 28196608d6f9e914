"""VNN-LIB 1.0 local-robustness properties in VNN-COMP form.

A property states the UNSAFE region, so ``unsat`` means robust:

    (declare-const X_i Real)   one per ONNX input element, row-major (C order)
    (declare-const Y_j Real)   one per output (logit)
    (assert (<= X_i ub_i))     both bounds for every X_i, ub = clip(x + eps, 0, 1)
    (assert (>= X_i lb_i))                                lb = clip(x - eps, 0, 1)
    (assert (or (and (>= Y_j Y_t)) ...))   one disjunct per class j != t

One ``or`` of ``and`` terms, never several top-level ``(assert (>= Y_j Y_t))``: those
would be a conjunction ("every class beats t"), a different and wrong property.

Numbers are written in positional decimal (no exponent, which some parsers reject),
with the shortest digits that round-trip the float64 value, so the box read back is
exactly the box computed. The box is computed in float64 from the float32 image.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import numpy as np

from tapsc.errors import UnsupportedExport


def _number(value: float) -> str:
    return np.format_float_positional(float(value), unique=True, trim="0")


def input_box(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The flat (row-major) box clip(x -+ eps, 0, 1) in float64."""
    flat = np.asarray(x, dtype=np.float32).astype(np.float64).reshape(-1)
    return np.clip(flat - eps, 0.0, 1.0), np.clip(flat + eps, 0.0, 1.0)


def write_property(out: TextIO, x: np.ndarray, label: int, num_classes: int, eps: float,
                   norm: str = "linf", comment: str = "") -> None:
    """Write the local-robustness property of sample ``x`` (label ``label``) to ``out``.

    Raises:
        UnsupportedExport: for a perturbation VNN-LIB's linear constraints cannot state.
    """
    if norm != "linf":
        raise UnsupportedExport(f"a `{norm}` perturbation cannot be written as a VNN-LIB box",
                                help="VNN-LIB properties are linear constraints; only linf balls are boxes")
    if not 0 <= label < num_classes or num_classes < 2:
        raise ValueError(f"label {label} outside 0..{num_classes - 1}")
    lo, hi = input_box(x, eps)
    write = out.write
    if comment:
        write("".join(f"; {line}\n" for line in comment.splitlines()))
    write(f"; local robustness, l_inf eps {_number(eps)} in [0, 1] pixel units; label {label}\n")
    write("; the assertions state the unsafe region: unsat means robust\n\n")
    write("".join(f"(declare-const X_{i} Real)\n" for i in range(lo.size)))
    write("\n")
    write("".join(f"(declare-const Y_{j} Real)\n" for j in range(num_classes)))
    write("\n; input box\n")
    write("".join(f"(assert (<= X_{i} {_number(u)}))\n(assert (>= X_{i} {_number(l)}))\n"
                  for i, (l, u) in enumerate(zip(lo, hi))))
    write(f"\n; some class other than {label} scores at least as high as {label}\n(assert (or\n")
    write("".join(f"    (and (>= Y_{j} Y_{label}))\n" for j in range(num_classes) if j != label))
    write("))\n")


def property_text(x: np.ndarray, label: int, num_classes: int, eps: float, comment: str = "") -> str:
    """The property as a string (see `write_property`)."""
    from io import StringIO

    buffer = StringIO()
    write_property(buffer, x, label, num_classes, eps, comment=comment)
    return buffer.getvalue()


def write_property_file(path: Path, x: np.ndarray, label: int, num_classes: int, eps: float,
                        comment: str = "") -> Path:
    """Write one ``.vnnlib`` file; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        write_property(handle, x, label, num_classes, eps, comment=comment)
    return path
