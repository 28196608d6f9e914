"""Gradient connectors: how the latent adversarial point passes gradient to the box bounds.

PGD's result z_hat depends on the latent box [z_lo, z_hi] only through its projection,
which has no useful derivative. The connector is an autograd Function whose forward
returns z_hat unchanged and whose backward sends, per dimension (no cross terms),

    d z / d z_lo = ramp(z_hat - z_lo, z_hi - z_lo)
    d z / d z_hi = ramp(z_hi - z_hat, z_hi - z_lo)

where ``ramp`` is the connector kind's (Mao et al. 2023, Sec. 3.3): the rectified linear
connector's is max(0, 1 - distance / (c width)); c = 0 (`binary`) sends gradient only where
z_hat sits on the bound, c = 1 is `linear`. Where z_hi == z_lo both derivatives are 0.5.
z_hat may carry extra leading estimator dimensions (B, E, ...) over bounds (B, 1, ...);
the gradients of all estimators are summed onto the shared bounds.

A connector kind is its IR node (``ir.CONNECTOR_CLASSES``: the parameters) and one ramp
registered here by kind; the reference weights (``connector_weights``) and the chunked,
in-place backward both call that one ramp.

Shape legend: B batch, E estimators, Z... latent dimensions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tapsc.language import ir

# ramp(distance, width, node) -> weight, IN PLACE on ``distance`` (a z_hat-sized temporary the
# caller owns): distance >= 0 inside the box (it may be negative by rounding), width > 0 (the
# caller substitutes 1 where the box is degenerate and overwrites those weights with 0.5)
Ramp = Callable[[torch.Tensor, torch.Tensor, ir.Node], torch.Tensor]
CONNECTORS: dict[str, Ramp] = {}


def register_connector(kind: str):
    """Register the ramp of a connector kind (see ``Ramp``)."""

    def decorate(fn: Ramp) -> Ramp:
        CONNECTORS[kind] = fn
        return fn

    return decorate


@register_connector("rectified_linear")
@register_connector("linear")  # c = 1 (a ClassVar of ir.LinearConnector)
@register_connector("binary")  # c = 0
def _rectified_linear(distance: torch.Tensor, width: torch.Tensor, node: ir.Node) -> torch.Tensor:
    """max(0, 1 - distance / (c width)); at c = 0 the limit, 1 where distance <= 0 else 0."""
    if node.c == 0:
        return distance.le_(0)  # distance <= 0 exactly when z_hat is on (or beyond) the bound
    return distance.div_(width * node.c).neg_().add_(1).clamp_(min=0)


def _weights_(distance: torch.Tensor, width: torch.Tensor, degenerate: torch.Tensor, node: ir.Node) -> torch.Tensor:
    """The ramp of ``node``'s kind, in place on ``distance``, 0.5 where the box is degenerate."""
    return CONNECTORS[node.kind](distance, width, node).masked_fill_(degenerate, 0.5)


def _safe_width(z_lo: torch.Tensor, z_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    width = z_hi - z_lo
    degenerate = width <= 0
    return torch.where(degenerate, torch.ones_like(width), width), degenerate


def connector_weights(z_hat, z_lo, z_hi, node: ir.Node | float) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-dimension derivatives (d z / d z_lo, d z / d z_hi), broadcast to z_hat's shape
    (the reference the backward pass is tested against)."""
    node = as_connector(node)
    width, degenerate = _safe_width(z_lo, z_hi)
    shape = torch.broadcast_shapes(z_hat.shape, z_lo.shape)
    d_lo = _weights_((z_hat - z_lo).expand(shape).clone(), width, degenerate.expand(shape), node)
    d_hi = _weights_((z_hi - z_hat).expand(shape).clone(), width, degenerate.expand(shape), node)
    return d_lo, d_hi


class _Connect(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z_hat, z_lo, z_hi, node, out_dtype):
        ctx.save_for_backward(z_hat, z_lo, z_hi)
        ctx.node = node
        if out_dtype is not None and out_dtype != z_hat.dtype:
            # the cast autocast would make at the classifier's first layer, made here: the
            # incoming gradient then stays in out_dtype instead of arriving widened to a
            # float32 (B, E, *Z) tensor, one memory pass and one such tensor fewer (same values)
            return z_hat.to(out_dtype)
        return z_hat.view_as(z_hat)  # an alias: a (B, E, *Z) copy would cost a memory pass

    @staticmethod
    def backward(ctx, grad_out):
        z_hat, z_lo, z_hi = ctx.saved_tensors
        width, degenerate = _safe_width(z_lo, z_hi)  # bounds-shaped, (B, 1, *Z): E times smaller than z_hat
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
                grad_lo[part] = _weighted_sum(z_hat[part] - z_lo[part], width[part], degenerate[part],
                                              grad_out[part], z_lo[part].shape, ctx.node)
            if grad_hi is not None:
                grad_hi[part] = _weighted_sum(z_hi[part] - z_hat[part], width[part], degenerate[part],
                                              grad_out[part], z_hi[part].shape, ctx.node)
        return None, grad_lo, grad_hi, None, None


def _weighted_sum(distance, width, degenerate, grad_out, shape, node):
    """sum over estimators of grad_out * the connector's weight, in place on the one z_hat-sized
    temporary ``distance``: the backward pass of a (B, K-1, *Z) latent is memory-bound, and every
    fresh temporary costs a pass and, on CPU, page faults. A bf16 ``grad_out`` is widened
    exactly inside the float32 product."""
    return _weights_(distance, width, degenerate, node).mul_(grad_out).sum_to_size(shape)


def as_connector(connector: ir.Node | float) -> ir.Node:
    """A connector IR node; a bare number c is the rectified linear connector with that c.

    Raises:
        ValueError: c outside [0, 1], or a kind with no registered ramp.
    """
    if isinstance(connector, (int, float)):
        if not 0 <= connector <= 1:
            raise ValueError(f"connector parameter c must be in [0, 1], got {connector}")
        return ir.RectifiedLinearConnector(c=float(connector))
    if connector.kind not in CONNECTORS:
        raise ValueError(f"connector `{connector.kind}` has no ramp; registered: {', '.join(sorted(CONNECTORS))}")
    return connector


def connect(z_hat: torch.Tensor, z_lo: torch.Tensor, z_hi: torch.Tensor, connector: ir.Node | float,
            out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """z_hat (detached) as a differentiable function of the box bounds, through ``connector``
    (an IR node, or a number c for the rectified linear connector).

    ``out_dtype``: return z_hat cast to it (for a classifier that would cast it anyway, see
    ``latent_attack.attack_input_dtype``); the bounds' gradients are the same bits.
    """
    return _Connect.apply(z_hat.detach(), z_lo, z_hi, as_connector(connector), out_dtype)


def connect_with(node: ir.Node, z_hat, z_lo, z_hi, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``connect`` with the connector IR node first (the order ``latent_attack`` calls it in)."""
    return connect(z_hat, z_lo, z_hi, node, out_dtype)
