"""Full float32 arithmetic for everything that claims soundness.

On Ampere and newer GPUs PyTorch lets cuDNN convolutions (and, when a user asks for it,
matrix products) run in TF32, which keeps 10 mantissa bits instead of 23: a bound
computed that way can be off by about 1e-3 relative, enough to "certify" a margin that
is not there. Certification and the evaluation metrics run inside ``full_float32()``;
training may use TF32 (its numbers are estimates, not claims): ``tf32_matmuls()`` turns it on
for CUDA matrix products, which PyTorch leaves in full float32 by default and which are most of
a TAPS step's latent attack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """TF32 off for cuDNN and CUDA matmuls inside the block; the previous settings after."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul
        torch.set_float32_matmul_precision(precision)


@contextlib.contextmanager
def tf32_matmuls(enabled: bool = True) -> Iterator[None]:
    """TF32 for CUDA matrix products inside the block (when ``enabled``); the previous setting after.

    A ``full_float32()`` block nested inside still turns it off.
    """
    if not enabled:
        yield
        return
    matmul, precision = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.set_float32_matmul_precision(precision)
