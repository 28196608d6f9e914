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
