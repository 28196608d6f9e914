"""An independent, minimal VNN-LIB 1.0 reader for the tests (s-expressions, nothing shared
with the writer): the input box and the output disjunction of a robustness property."""

from __future__ import annotations

import re

TOKEN = re.compile(r"\(|\)|[^\s()]+")


def parse_sexprs(text: str) -> list:
    """Top-level s-expressions, comments (`;` to end of line) dropped."""
    text = "\n".join(line.split(";", 1)[0] for line in text.splitlines())
    stack: list[list] = [[]]
    for token in TOKEN.findall(text):
        if token == "(":
            stack.append([])
        elif token == ")":
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(token)
    assert len(stack) == 1, "unbalanced parentheses"
    return stack[0]


def _conjunct(term) -> tuple[str, str, str]:
    op, left, right = term
    return op, left, right


def read_property(text: str) -> dict:
    """{"inputs": n, "outputs": m, "lower": [...], "upper": [...], "disjuncts": [[(op, a, b), ...], ...],
    "top_level_output_asserts": k}"""
    declared, lower, upper = [], {}, {}
    disjuncts: list = []
    top_level_y = 0
    for expr in parse_sexprs(text):
        if expr[0] == "declare-const":
            assert expr[2] == "Real"
            declared.append(expr[1])
            continue
        assert expr[0] == "assert", expr
        body = expr[1]
        if body[0] in ("<=", ">=") and body[1].startswith("X_"):
            index, value = int(body[1][2:]), float(body[2])
            (upper if body[0] == "<=" else lower)[index] = value
        elif body[0] == "or":
            for term in body[1:]:
                assert term[0] == "and", term
                disjuncts.append([_conjunct(t) for t in term[1:]])
        else:
            top_level_y += 1
    inputs = sum(1 for name in declared if name.startswith("X_"))
    outputs = sum(1 for name in declared if name.startswith("Y_"))
    assert sorted(lower) == sorted(upper) == list(range(inputs)), "every X_i needs both bounds"
    return {"inputs": inputs, "outputs": outputs, "lower": [lower[i] for i in range(inputs)],
            "upper": [upper[i] for i in range(inputs)], "disjuncts": disjuncts,
            "top_level_output_asserts": top_level_y}


def unsafe(prop: dict, y) -> bool:
    """Whether the outputs ``y`` fall in the property's unsafe region (some disjunct holds)."""
    def holds(op, a, b):
        va, vb = float(y[int(a[2:])]), float(y[int(b[2:])])
        return va >= vb if op == ">=" else va <= vb

    return any(all(holds(*c) for c in conj) for conj in prop["disjuncts"])
