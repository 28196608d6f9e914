"""BatchNorm with statistics the interval and attack passes can reuse.

In training, TAPS needs the interval pass and the latent attack to apply exactly the
affine map that the clean forward of the same batch applied. So:

- ``stats_mode == "record"`` (default) and training: forward computes the batch
  mean/variance, updates the running statistics, and records the statistics (the live
  tensors, so gradients flow through them, as in the authors' code).
- ``stats_mode == "reuse"`` / ``"reuse_detached"`` and training: forward applies the
  recorded statistics (live or detached) and updates nothing. ``Network.frozen_batchnorm``
  switches every BatchNorm layer; the attacks use the detached form, which differentiates
  with respect to the input only: there the whole affine map is a constant, computed once
  per block rather than once per attack step (the same values).
- ``interval`` in training always uses the recorded statistics (detached under
  ``"reuse_detached"``). ORDER: run the clean forward of the batch first; an interval
  pass in training before any forward raises ``RuntimeError``.
- In eval mode both use the running statistics.

The map is per-channel y = scale * x + shift; its interval is monotone per channel
(swap bounds where scale < 0), hence exactly sound in floating point.

Shape legend: B batch, C channels (features for 1-d), H/W spatial.
"""

from __future__ import annotations

import torch
from torch import nn

from tapsc.certify import rules
from tapsc.export.modules import ChannelAffine
from tapsc.language import ir
from tapsc.language.shapes import Shape
from tapsc.layers.base import BoundLayer, register_layer

STATS_MODES = ("record", "reuse", "reuse_detached")


def local_statistics(x: torch.Tensor, reduce_dims: tuple[int, ...]):
    """(mean, biased variance, unbiased variance) per channel of this process's batch ``x``."""
    mean = x.mean(reduce_dims)
    var = x.var(reduce_dims, unbiased=False)
    count = x.numel() // x.shape[1]
    return mean, var, var * (count / max(count - 1, 1))


@register_layer("batchnorm")
class BatchNorm(BoundLayer):
    """BatchNorm over dim 1 for (B, C, H, W) or (B, D); state dict keys as nn.BatchNorm.
    Certification and export see it in eval mode: an affine map of the running statistics."""

    backward = rules.affine_backward

    def __init__(self, channels: int, ndim: int, node: ir.BatchNorm):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.eps = node.eps
        self.momentum = node.momentum
        self.reduce_dims = (0,) if ndim == 1 else (0, 2, 3)
        self.view = (1, -1) + (1,) * (ndim - 1)
        self.stats_mode = "record"
        self.constant_affine: tuple[torch.Tensor, torch.Tensor] | None = None  # "reuse_detached" only
        self.batch_mean: torch.Tensor | None = None
        self.batch_var: torch.Tensor | None = None
        # the hook that computes the training statistics, ``local_statistics`` by default;
        # tapsc.train.distributed.sync_batchnorm sets the global batch's (two all-reduces)
        self.statistics = local_statistics

    @classmethod
    def build(cls, node: ir.BatchNorm, in_shape: Shape):
        if len(in_shape) not in (1, 3):
            raise ValueError(f"batchnorm needs (C, H, W) or (D,) inputs, got {in_shape}")
        return cls(in_shape[0], len(in_shape), node), tuple(in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.stats_mode == "record":
            self._record(x)
        scale, shift = self._affine()
        return x * scale + shift

    def interval(self, lo: torch.Tensor, hi: torch.Tensor):
        scale, shift = self._affine()
        lo_out, hi_out = lo * scale + shift, hi * scale + shift
        positive = scale >= 0
        return torch.where(positive, lo_out, hi_out), torch.where(positive, hi_out, lo_out)

    def magnitude(self, m: torch.Tensor) -> torch.Tensor:
        scale, shift = self._affine()
        return m * scale.abs() + shift.abs()

    def onnx_module(self, lower) -> ChannelAffine:
        """The eval-mode map, which the exporter folds into a neighbouring conv or linear."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return ChannelAffine(scale, self.bias - self.running_mean * scale)

    def _record(self, x: torch.Tensor) -> None:
        mean, var, unbiased = self.statistics(x, self.reduce_dims)
        self.batch_mean, self.batch_var = mean, var
        with torch.no_grad():
            # Under autocast the batch statistics may be bf16/fp16; the running buffers stay float32.
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked += 1

    def _statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return self.running_mean, self.running_var
        if self.batch_mean is None:
            raise RuntimeError("BatchNorm in training mode has no batch statistics yet: run the clean "
                               "forward of the batch before interval or attack passes")
        if self.stats_mode == "reuse_detached":
            return self.batch_mean.detach(), self.batch_var.detach()
        return self.batch_mean, self.batch_var

    def _affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stats_mode != "reuse_detached":
            return self._affine_now()
        if self.constant_affine is None:
            with torch.no_grad():
                self.constant_affine = self._affine_now()
        return self.constant_affine

    def _affine_now(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var = self._statistics()
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        return scale.reshape(self.view), shift.reshape(self.view)

    def set_stats_mode(self, mode: str) -> None:
        if mode not in STATS_MODES:
            raise ValueError(f"unknown BatchNorm stats mode {mode!r}; expected one of {STATS_MODES}")
        self.stats_mode = mode
        self.constant_affine = None

    def train(self, mode: bool = True):
        self.constant_affine = None  # eval and training use different statistics
        return super().train(mode)
