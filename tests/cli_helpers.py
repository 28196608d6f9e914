"""Helpers every test folder shares (tests/ is on sys.path through its conftest.py)."""

from __future__ import annotations

from pathlib import Path


def invoke(*args):
    """Run ``tapsc ARGS`` in-process; returns typer's Result (output holds stdout and stderr)."""
    from typer.testing import CliRunner

    from tapsc.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def write_file(folder: Path, name: str, text: str) -> Path:
    """``folder / name`` holding ``text``."""
    path = folder / name
    path.write_text(text)
    return path


# The tests' small TAPS network on the 8x8 digits: natural, IBP ramp, then TAPS.
DIGITS_TAPS_BODY = """\
model { input (1, 8, 8); flatten; linear(32); batchnorm; relu; linear(32); relu; linear(10) }
split relus_in_classifier = 1
perturbation linf { eps 0.05; schedule linear from epoch 1 to 2 }
method {
  init shi
  phase natural until epoch 1
  phase ibp with shi_regularizer 0.5 until epoch 2
  phase taps { attack pgd(steps = 3, multi) }
}
"""


def digits_taps_spec(data: str, optimizer: str, *rest: str, comment: str | None = None) -> str:
    """A spec of that network: the ``data digits {...}`` and ``optimizer adam {...}`` settings,
    then any further sections, one per line."""
    head = f"# {comment}\n" if comment else ""
    lines = [f"data digits {{ {data} }}\n", DIGITS_TAPS_BODY, f"optimizer adam {{ {optimizer} }}\n"]
    return head + "".join(lines) + "".join(f"{section}\n" for section in rest)
