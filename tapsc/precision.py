"""Full float32 arithmetic for everything that claims soundness.

On Ampere and newer GPUs PyTorch lets cuDNN convolutions (and, when a user asks for it,
matrix products) run in TF32, which keeps 10 mantissa bits instead of 23: a bound
computed that way can be off by about 1e-3 relative, enough to "certify" a margin that
is not there. Certification and the evaluation metrics run inside ``full_float32()``;
training may use TF32 (its numbers are estimates, not claims): ``tf32_matmuls()`` turns it on
for CUDA matrix products, which PyTorch leaves in full float32 by default and which are most of
a TAPS step's latent attack. ``attack_precision(...)`` lets the training passes' attacks iterate in
bf16 where the hardware multiplies bf16 natively (``fast_attack_dtype``): the attack only
chooses points, and the loss at the chosen points stays float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch

# The dtype the training passes' attacks iterate in (None: the tensors' own); see attack_precision.
_ATTACK_DTYPE: ContextVar[torch.dtype | None] = ContextVar("tapsc_attack_dtype", default=None)


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """TF32 off for cuDNN and CUDA matmuls inside the block; the previous settings after."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    token = _ATTACK_DTYPE.set(None)  # and float32 attacks: an evaluation's PGD accuracy is a claim
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul
        torch.set_float32_matmul_precision(precision)
        _ATTACK_DTYPE.reset(token)


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


def fast_attack_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where ``device`` multiplies bf16 natively and faster than float32, else None.

    CPU: AVX512-BF16 or AMX (``torch.cpu``'s capability checks; oneDNN's bf16 kernels
    emulate bf16 without them, slower than float32). Measured on an AVX512-BF16 Zen 4 core,
    one thread: a 1152 x 32768 x 512 product (the CNN7 latent attack's) takes 0.08-0.12 s in
    bf16 against 0.35-0.43 s in float32 (docs/benchmarks.md). CUDA: None for now, the
    training passes already use TF32 matrix products there and a bf16 attack has not been
    measured on a GPU.
    """
    if device.type != "cpu":
        return None
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return torch.bfloat16 if any(check is not None and check() for check in checks) else None


@contextlib.contextmanager
def attack_precision(dtype: torch.dtype | None) -> Iterator[None]:
    """The training passes' attacks iterate in ``dtype`` inside the block (None: in the tensors' own).

    An attack reads it with ``attack_dtype()`` and runs its iterations under autocast to that
    dtype (``tapsc.method.latent_attack``); the points it returns are scored, and the loss
    computed, outside, in float32. A ``full_float32()`` block nested inside turns it off.
    """
    token = _ATTACK_DTYPE.set(dtype)
    try:
        yield
    finally:
        _ATTACK_DTYPE.reset(token)


def attack_dtype() -> torch.dtype | None:
    """The dtype ``attack_precision`` asked for here, or None."""
    return _ATTACK_DTYPE.get()
