"""Mutation fuzzing of `tapsc check` over every shipped spec.

Each mutant is a shipped spec with one to three random edits: tokens or lines deleted,
duplicated or swapped, random bytes inserted, the file truncated, numbers made huge, values
nested deeply, layers wrapped in `repeat`, a byte-order mark, a block named like a layer.
`check` must accept it or raise a TapscError whose diagnostics have a code, a message and
a position, within `MUTANT_SECONDS`. The RNG is seeded per spec, so a failure replays; its
message shows the edits and the mutant's bytes.

The default run makes `MUTANTS_PER_SPEC` mutants per spec (a few seconds in all); the
`fuzz_long` marker (deselected by default: `pytest -m fuzz_long tests/language/test_fuzz.py`)
makes `LONG_MUTANTS_PER_SPEC`.
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import signal
import threading
import time
import zlib
from pathlib import Path

import pytest

from tapsc.commands.language import check_one
from tapsc.errors import TapscError
from tapsc.language.diagnostics import render_error

SPECS = Path(__file__).parent.parent.parent / "specs"
SHIPPED = sorted(SPECS.rglob("*.taps"))
MUTANTS_PER_SPEC = 12
LONG_MUTANTS_PER_SPEC = 1000
MUTANT_SECONDS = 10.0  # a spec checks in about 10 ms; the hangs found took minutes; CI shares 2 cores

_TOKEN = re.compile(rb'"(?:[^"\\\n]|\\.)*"|[A-Za-z_][A-Za-z0-9_-]*|[0-9.]+(?:[eE][+-]?[0-9]+)?|\S')
_NUMBER = re.compile(rb"(?<![A-Za-z_0-9.])[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?")
_LAYER_LINE = re.compile(rb"^[ \t]*(?:conv|linear|relu|batchnorm|flatten|cnn7|avgpool|maxpool)\b.*$", re.M)
_WORDS = [b"repeat", b"residual", b"shortcut", b"block", b"include", b"split", b"model", b"relu", b"conv",
          b"phase", b"taps", b"none", b"true", b"epoch", b"{", b"}", b"(", b")", b",", b"=", b";", b"\n",
          b"-", b"*", b"/", b"+", b'"', b"#"]


def _tokens(data: bytes) -> list[re.Match]:
    return list(_TOKEN.finditer(data))


def _splice(data: bytes, start: int, end: int, new: bytes) -> bytes:
    return data[:start] + new + data[end:]


def _token_edit(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    tokens = _tokens(data)
    if len(tokens) < 2:
        return "no tokens", data
    a, b = sorted(rng.sample(tokens, 2), key=lambda m: m.start())
    kind = rng.choice(["delete", "duplicate", "swap", "replace"])
    if kind == "delete":
        return f"delete token {a.group()!r}", _splice(data, a.start(), a.end(), b"")
    if kind == "duplicate":
        return f"duplicate token {a.group()!r}", _splice(data, a.start(), a.start(), a.group() + b" ")
    if kind == "replace":
        word = rng.choice(_WORDS)
        return f"replace {a.group()!r} by {word!r}", _splice(data, a.start(), a.end(), word)
    swapped = data[:a.start()] + b.group() + data[a.end():b.start()] + a.group() + data[b.end():]
    return f"swap tokens {a.group()!r} and {b.group()!r}", swapped


def _line_edit(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    lines = data.split(b"\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    kind = rng.choice(["delete", "duplicate", "swap"])
    if kind == "delete":
        del lines[i]
    elif kind == "duplicate":
        lines.insert(i, lines[i])
    else:
        lines[i], lines[j] = lines[j], lines[i]
    return f"{kind} line {i + 1}" + (f" with {j + 1}" if kind == "swap" else ""), b"\n".join(lines)


def _bytes_edit(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    at = rng.randrange(len(data) + 1)
    if rng.random() < 0.3:
        return f"truncate at byte {at}", data[:at]
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return f"insert bytes {junk!r} at {at}", _splice(data, at, at, junk)


def _number_edit(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    numbers = list(_NUMBER.finditer(data))
    if not numbers:
        return "no numbers", data
    match = rng.choice(numbers)
    huge = rng.choice([b"1" + b"0" * rng.choice([16, 400, 5000]), b"1e999", b"9e15", b"1e-999",
                       b"0." + b"0" * 500 + b"1", b"99999999999999999 * 99999999999999999"])
    return f"number {match.group()!r} -> {huge[:30]!r}", _splice(data, match.start(), match.end(), huge)


def _nesting_edit(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    numbers = list(_NUMBER.finditer(data))
    if not numbers:
        return "no numbers", data
    match = rng.choice(numbers)
    depth = rng.choice([10, 49, 60, 3000])
    form = rng.choice(["parens", "negations", "products", "sums"])
    value = match.group()
    if form == "parens":
        new = b"(" * depth + value + b")" * depth
    elif form == "negations":
        new = b"-" * depth + value
    elif form == "products":
        new = b" * ".join([value] + [b"1"] * depth)
    else:
        new = b"(" + b" + ".join([value] + [b"0"] * depth) + b")"
    return f"nest {value!r} {depth} deep as {form}", _splice(data, match.start(), match.end(), new)


def _repeat_edit(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    lines = list(_LAYER_LINE.finditer(data))
    if not lines:
        return "no layer lines", data
    match = rng.choice(lines)
    if rng.random() < 0.5:
        count = rng.choice([b"2", b"3", b"10000", b"20000", b"1000000000", b"0", b"-1", b"2.5", b"none"])
        body = match.group() if rng.random() < 0.7 else b""
        new = b"repeat " + count + b" { " + body + b" }"
        what = f"repeat {count.decode()} around line"
    else:
        depth = rng.choice([5, 20, 40, 60])
        new = b"repeat 2 { " * depth + match.group() + b" }" * depth
        what = f"nest {depth} `repeat 2`"
    return what, _splice(data, match.start(), match.end(), new)


def _structure_edit(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    kind = rng.choice(["bom", "shadow", "blocks", "brace"])
    if kind == "bom":
        return "byte-order mark", b"\xef\xbb\xbf" + data
    if kind == "shadow":
        name = rng.choice([b"relu", b"conv", b"repeat", b"split", b"linear"])
        return f"block named {name!r}", b"block " + name + b" { flatten }\n" + data
    if kind == "blocks":  # each block calls the next twice: 2**depth layers
        depth = rng.choice([10, 30, 60])
        defs = b"".join(b"block f%d { f%d; f%d }\n" % (i, i + 1, i + 1) for i in range(depth))
        defs += b"block f%d { relu }\n" % depth
        return f"{depth} doubling blocks", defs + data.replace(b"flatten", b"f0; flatten", 1)
    at = rng.randrange(len(data) + 1)
    return f"brace at {at}", _splice(data, at, at, rng.choice([b"{", b"}", b"(", b")"]))


EDITS = [_token_edit, _token_edit, _line_edit, _bytes_edit, _number_edit, _nesting_edit, _repeat_edit,
         _structure_edit]


def mutate(rng: random.Random, data: bytes) -> tuple[list[str], bytes]:
    """One to three random edits of ``data``; returns what was done and the mutant."""
    done = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        what, data = rng.choice(EDITS)(rng, data)
        done.append(what)
    return done, data


@contextlib.contextmanager
def _deadline(seconds: float):
    """Raise TimeoutError in the main thread after ``seconds`` (a hang must fail, not stall the run)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield  # the elapsed time is still asserted afterwards
        return

    def alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _show(done: list[str], data: bytes) -> str:
    shown = data if len(data) <= 3000 else data[:1500] + b"\n[...]\n" + data[-1500:]
    return f"edits: {done}\nmutant ({len(data)} bytes):\n{shown!r}"


def check_mutant(path: Path, done: list[str], data: bytes) -> str:
    """Check one mutant written at ``path``; 'ok' or the first diagnostic's code."""
    path.write_bytes(data)
    started = time.perf_counter()
    try:
        with _deadline(4 * MUTANT_SECONDS):
            check_one(path)
        outcome = "ok"
    except TapscError as error:
        outcome = error.diagnostics[0].code
        for diagnostic in error.diagnostics:
            assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", diagnostic.code), _show(done, data)
            assert diagnostic.message and diagnostic.span is not None, f"{diagnostic}\n{_show(done, data)}"
        text = render_error(error)
        assert re.search(r"--> .+:\d+:\d+", text) and "Traceback" not in text, f"{text}\n{_show(done, data)}"
    except Exception as error:  # noqa: BLE001 - the point of the test: report the mutant
        pytest.fail(f"{type(error).__name__}: {error}\n{_show(done, data)}")
    elapsed = time.perf_counter() - started
    assert elapsed < MUTANT_SECONDS, f"took {elapsed:.1f} s\n{_show(done, data)}"
    return outcome


@pytest.fixture(scope="module")
def spec_copy(tmp_path_factory) -> Path:
    """A copy of specs/, so mutants sit next to the files their includes name."""
    root = tmp_path_factory.mktemp("fuzz") / "specs"
    shutil.copytree(SPECS, root)
    return root


def _run(spec: Path, copy_root: Path, count: int, salt: str) -> dict[str, int]:
    relative = spec.relative_to(SPECS)
    rng = random.Random(zlib.crc32(f"{relative}:{salt}".encode()))
    original = spec.read_bytes()
    target = copy_root / relative.parent / f"mutant_{relative.stem}.taps"
    outcomes: dict[str, int] = {}
    for _ in range(count):
        done, data = mutate(rng, original)
        outcome = check_mutant(target, done, data)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: str(p.relative_to(SPECS)))
def test_mutants_are_accepted_or_diagnosed(spec: Path, spec_copy: Path):
    _run(spec, spec_copy, MUTANTS_PER_SPEC, "default")


@pytest.mark.fuzz_long
@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: str(p.relative_to(SPECS)))
def test_many_mutants_are_accepted_or_diagnosed(spec: Path, spec_copy: Path):
    _run(spec, spec_copy, LONG_MUTANTS_PER_SPEC, "long")


def test_the_fuzzer_reaches_the_limits(spec_copy: Path):
    """The mutations do reach each hostile kind (else the fuzz test proves little)."""
    seen: dict[str, int] = {}
    for spec in SHIPPED:
        for code, count in _run(spec, spec_copy, MUTANTS_PER_SPEC, "default").items():
            seen[code] = seen.get(code, 0) + count
    for code in ("ok", "number-too-large", "nesting-too-deep", "unexpected-token", "unexpected-character"):
        assert seen.get(code, 0) > 0, seen
