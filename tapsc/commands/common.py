"""Options several commands share, declared once so that their flags and help agree."""

from __future__ import annotations

import typer

DEVICE = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")
DATA_ROOT = typer.Option(None, "--data-root", help="Folder holding the dataset.")
AMP = typer.Option(False, "--amp", help="bf16 autocast for the training passes (evaluation stays float32).")
TF32 = typer.Option(True, "--tf32/--no-tf32",
                    help="TF32 matrix products in the training passes on CUDA (certification stays float32).")
