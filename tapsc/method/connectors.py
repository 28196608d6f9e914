"""Gradient connectors: how the latent adversarial point passes gradient to the box bounds.

PGD's result z_hat depends on the latent box [z_lo, z_hi] only through its projection,
which has no useful derivative. The connector is an autograd Function whose forward
returns z_hat unchanged and whose backward sends, per dimension (no cross terms),

    d z / d z_lo = max(0, 1 - (z_hat - z_lo) / (c (z_hi - z_lo)))
    d z / d z_hi = max(0, 1 - (z_hi - z_hat) / (c (z_hi - z_lo)))

c = 0 is the binary connector (gradient only where z_hat sits on a bound), c = 1 the
linear one, 0 < c < 1 the rectified linear one. Where z_hi == z_lo both are 0.5.
z_hat may carry extra leading estimator dimensions (B, E, ...) over bounds (B, 1, ...);
the gradients of all estimators are summed onto the shared bounds.

Shape legend: B batch, E estimators, Z... latent dimensions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tapsc import ir

CONNECTORS: dict[str, Callable[[ir.Connector], float]] = {}


def register_connector(kind: str):
    """Register a function mapping the connector IR node to its c."""

    def decorate(fn):
        CONNECTORS[kind] = fn
        return fn

    return decorate


@register_connector("rectified_linear")
def _rectified_linear(node: ir.Connector) -> float:
    return node.c


@register_connector("linear")
def _linear(node: ir.Connector) -> float:
    return 1.0


@register_connector("binary")
def _binary(node: ir.Connector) -> float:
    return 0.0


def connector_weights(z_hat, z_lo, z_hi, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-dimension derivatives (d z / d z_lo, d z / d z_hi), broadcast to z_hat's shape."""
    width = z_hi - z_lo
    degenerate = width <= 0
    if c == 0:
        d_lo = (z_hat <= z_lo).to(z_hat.dtype)
        d_hi = (z_hat >= z_hi).to(z_hat.dtype)
    else:
        safe = torch.where(degenerate, torch.ones_like(width), width) * c
        d_lo = (1 - (z_hat - z_lo) / safe).clamp(min=0)
        d_hi = (1 - (z_hi - z_hat) / safe).clamp(min=0)
    half = torch.full_like(d_lo, 0.5)
    return torch.where(degenerate, half, d_lo), torch.where(degenerate, half, d_hi)


class _Connect(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z_hat, z_lo, z_hi, c, out_dtype):
        ctx.save_for_backward(z_hat, z_lo, z_hi)
        ctx.c = c
        if out_dtype is not None and out_dtype != z_hat.dtype:
            # the cast autocast would make at the classifier's first layer, made here: the
            # incoming gradient then stays in out_dtype instead of arriving widened to a
            # float32 (B, E, *Z) tensor, one memory pass and one such tensor fewer (same values)
            return z_hat.to(out_dtype)
        return z_hat.view_as(z_hat)  # an alias: a (B, E, *Z) copy would cost a memory pass

    @staticmethod
    def backward(ctx, grad_out):
        z_hat, z_lo, z_hi = ctx.saved_tensors
        if ctx.c == 0:
            d_lo, d_hi = connector_weights(z_hat, z_lo, z_hi, ctx.c)
            grad_lo = (grad_out * d_lo).sum_to_size(z_lo.shape) if ctx.needs_input_grad[1] else None
            grad_hi = (grad_out * d_hi).sum_to_size(z_hi.shape) if ctx.needs_input_grad[2] else None
            return None, grad_lo, grad_hi, None, None
        width = z_hi - z_lo  # bounds-shaped, (B, 1, *Z): E times smaller than z_hat
        degenerate = width <= 0
        safe = torch.where(degenerate, torch.ones_like(width), width) * ctx.c
        grad_lo = torch.empty_like(z_lo) if ctx.needs_input_grad[1] else None
        grad_hi = torch.empty_like(z_hi) if ctx.needs_input_grad[2] else None
        # Memory chunks of samples, each temporary about one bounds tensor in size: this
        # backward runs at the TAPS step's memory peak (z_hat and grad_out are both alive).
        batch = z_hat.shape[0]
        per_chunk = batch
        if z_lo.dim() == z_hat.dim() and z_lo.shape[0] == batch and z_hi.shape[0] == batch:
            per_chunk = -(-batch // max(1, z_hat.numel() // max(z_lo.numel(), 1)))  # samples / E
        for start in range(0, batch, per_chunk):
            part = slice(start, start + per_chunk)
            if grad_lo is not None:
                grad_lo[part] = _weighted_sum(z_hat[part] - z_lo[part], safe[part], degenerate[part],
                                              grad_out[part], z_lo[part].shape)
            if grad_hi is not None:
                grad_hi[part] = _weighted_sum(z_hi[part] - z_hat[part], safe[part], degenerate[part],
                                              grad_out[part], z_hi[part].shape)
        return None, grad_lo, grad_hi, None, None


def _weighted_sum(distance, safe, degenerate, grad_out, shape):
    """sum over estimators of grad_out * where(degenerate, 0.5, max(0, 1 - distance / safe)).

    The same arithmetic as ``connector_weights`` (so the same bits), in place on the one
    z_hat-sized temporary ``distance``: the backward pass of a (B, K-1, *Z) latent is
    memory-bound, and every fresh temporary costs a pass and, on CPU, page faults. A bf16
    ``grad_out`` is widened exactly inside the float32 product.
    """
    weight = distance.div_(safe).neg_().add_(1).clamp_(min=0).masked_fill_(degenerate, 0.5)
    return weight.mul_(grad_out).sum_to_size(shape)


def connect(z_hat: torch.Tensor, z_lo: torch.Tensor, z_hi: torch.Tensor, c: float,
            out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """z_hat (detached) as a differentiable function of the box bounds with parameter c in [0, 1].

    ``out_dtype``: return z_hat cast to it (for a classifier that would cast it anyway, see
    ``latent_attack.attack_input_dtype``); the bounds' gradients are the same bits.
    """
    if not 0 <= c <= 1:
        raise ValueError(f"connector parameter c must be in [0, 1], got {c}")
    return _Connect.apply(z_hat.detach(), z_lo, z_hi, float(c), out_dtype)


def connect_with(node: ir.Connector, z_hat, z_lo, z_hi, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``connect`` with c taken from the connector IR node (by its kind)."""
    return connect(z_hat, z_lo, z_hi, CONNECTORS[node.kind](node), out_dtype)
