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

`read_property` reads a box property back (any VNN-LIB 1.0 file with bounds on every
X_i and one output assertion), for checking a verifier's counterexample against it.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from tapsc.errors import UnsupportedExport
from tapsc.measures import input_box


def _number(value: float) -> str:
    return np.format_float_positional(float(value), unique=True, trim="0")


def property_box(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The flat (row-major) box clip(x -+ eps, 0, 1) in float64, from the float32 image."""
    return input_box(np.asarray(x, dtype=np.float32).astype(np.float64).reshape(-1), eps)


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
    lo, hi = property_box(x, eps)
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


# ---------------------------------------------------------------- reading a property back


@dataclass(frozen=True)
class Property:
    """A VNN-LIB 1.0 box property: the input box and the unsafe region.

    ``disjuncts`` is the output region as an ``or`` of ``and`` terms, each term
    ``(op, left, right)`` with ``op`` one of ``>=``/``<=`` and each side an output index
    (int) or a constant (float).
    """

    lower: np.ndarray  # float64, one per X_i in row-major order
    upper: np.ndarray
    outputs: int
    disjuncts: tuple[tuple[tuple[str, int | float, int | float], ...], ...]

    def violated_by(self, y: np.ndarray) -> bool:
        """Whether the outputs ``y`` lie in the unsafe region (exact comparison, no tolerance)."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)

        def value(side):
            return float(y[side]) if isinstance(side, int) else side

        def holds(op, left, right):
            return value(left) >= value(right) if op == ">=" else value(left) <= value(right)

        return any(all(holds(*term) for term in conjunct) for conjunct in self.disjuncts)

    def robustness_label(self) -> int | None:
        """The class ``t`` of a local-robustness property (every term ``Y_j >= Y_t``), else None."""
        targets = {term[2] if term[0] == ">=" else term[1] for conjunct in self.disjuncts for term in conjunct}
        if len(targets) == 1 and isinstance(next(iter(targets)), int):
            return next(iter(targets))
        return None


_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def _sexprs(text: str) -> list:
    text = "\n".join(line.split(";", 1)[0] for line in text.splitlines())
    stack: list[list] = [[]]
    for token in _TOKEN.findall(text):
        if token == "(":
            stack.append([])
        elif token == ")":
            if len(stack) == 1:
                raise ValueError("unbalanced parentheses")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(token)
    if len(stack) != 1:
        raise ValueError("unbalanced parentheses")
    return stack[0]


def _side(token) -> int | float:
    if isinstance(token, str) and token.startswith("Y_"):
        return int(token[2:])
    if isinstance(token, str) and token.startswith("X_"):
        raise ValueError("mixed input/output constraints are not a box property")
    return float(token)


def _terms(expr) -> list:
    if expr[0] == "and":
        return [term for part in expr[1:] for term in _terms(part)]
    if expr[0] not in ("<=", ">=") or len(expr) != 3:
        raise ValueError(f"unsupported output constraint {expr[0]!r}")
    return [(expr[0], _side(expr[1]), _side(expr[2]))]


def parse_property(text: str) -> Property:
    """Read a box property (bounds on every X_i, one output region) from VNN-LIB 1.0 text.

    Raises:
        ValueError: the text is not such a property.
    """
    lower: dict[int, float] = {}
    upper: dict[int, float] = {}
    inputs, outputs = 0, 0
    output_asserts: list[list] = []
    for expr in _sexprs(text):
        if expr[0] == "declare-const":
            inputs += expr[1].startswith("X_")
            outputs += expr[1].startswith("Y_")
            continue
        if expr[0] != "assert":
            raise ValueError(f"unexpected {expr[0]!r}")
        body = expr[1]
        if body[0] in ("<=", ">=") and isinstance(body[1], str) and body[1].startswith("X_"):
            (upper if body[0] == "<=" else lower)[int(body[1][2:])] = float(body[2])
        elif body[0] == "or":
            output_asserts.append([_terms(term) for term in body[1:]])
        else:
            output_asserts.append([_terms(body)])
    if sorted(lower) != list(range(inputs)) or sorted(upper) != list(range(inputs)):
        raise ValueError("not every X_i has both bounds")
    if len(output_asserts) != 1:
        raise ValueError(f"{len(output_asserts)} output assertions (a box property has one `or`)")
    disjuncts = tuple(tuple(conjunct) for conjunct in output_asserts[0])
    return Property(np.array([lower[i] for i in range(inputs)]), np.array([upper[i] for i in range(inputs)]),
                    outputs, disjuncts)


def read_property(path: Path) -> Property:
    """`parse_property` of a ``.vnnlib`` (or ``.vnnlib.gz``) file."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return parse_property(data.decode())
