"""Options several commands share, declared once so that their flags and help agree."""

from __future__ import annotations

import typer

DEVICE = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")
DATA_ROOT = typer.Option(None, "--data-root", help="Folder holding the dataset.")
AMP = typer.Option(False, "--amp", help="bf16 autocast for the training passes (evaluation stays float32).")
TF32 = typer.Option(True, "--tf32/--no-tf32",
                    help="TF32 matrix products in the training passes on CUDA (certification stays float32).")

ATTACK_BF16 = typer.Option(True, "--attack-bf16/--no-attack-bf16",
                           help="The training passes' attacks (TAPS's latent attack) iterate in bf16 on CPUs with "
                                "native bf16 (AVX512-BF16, AMX); the loss at the points found stays float32.")

CHECKPOINTS = ("best", "last")
WHICH = typer.Option("best", "--which", help="Checkpoint of a run: best or last.")


def check_which(which: str) -> str:
    """``--which``: one of a run's checkpoints, else a clean error."""
    if which not in CHECKPOINTS:
        from tapsc.errors import Diagnostic, TapscError

        raise TapscError(Diagnostic(code="bad-option", message=f"unknown checkpoint `{which}`",
                                    help=f"use `--which {'` or `--which '.join(CHECKPOINTS)}`"))
    return which
