"""Multi-estimator PGD in the latent box, and the TAPS bound estimates it gives.

For each sample and each wrong class i (K - 1 estimators) and each restart, PGD
maximises the raw margin o_i - o_y of the classifier inside [z_lo, z_hi]. All
B * (K - 1) * R rows are one batched tensor computation (a Python loop runs only over
steps, and over memory chunks of samples when ``estimation_batch`` caps the rows).
The single-estimator option runs one attack per sample on the CE loss instead.

Choices (the authors' code): uniform random start per restart; step
z <- clip(z + sign(g) * lr * (z_hi - z_lo), z_lo, z_hi); lr0 = step_size or
max(0.2, 2 / steps), decayed x0.1 at 0.7 * steps; the best iterate per row is kept,
random start included. Performance: the bounds are detached and BatchNorm uses the
clean batch's detached statistics, so attack steps never backpropagate into the
extractor and never touch running statistics; each step asks autograd for the gradient
of the latent only (no parameter gradients), the final scoring pass runs without a
graph, and the (B*E*R, *Z) iterate, best point and step are updated in place (on CPU
every fresh tensor of that size costs a memory pass plus page faults). Only the final
pass of the chosen points (through the connector) is differentiable. Under autocast the
attack differentiates a low-precision copy of the iterate when the classifier would cast
it anyway (``attack_input_dtype``): same points, half the gradient's bytes. The attack's cost
is then two classifier matmuls per step over B*(K-1)*R rows (forward and the
gradient with respect to the latent): see benchmarks/ and docs/benchmarks.md. Rows that
reach a fixed point of the step stop being computed, and the points stay the same
(tapsc/method/attack_rows.py). When the classifier starts with a linear layer, the latent
gradient is written into one buffer for all steps (``_IntoBuffer``). A training pass may ask
for the iterations in bf16 (``tapsc.precision.attack_precision``; ``tapsc run`` does on CPUs
with native bf16): the classifier then runs under autocast but for its logits layer, which
stays float32 (``_attack_classifier``), and the chosen points are scored in float32 after.

Shape legend: B batch, E estimators (K - 1 or 1), R restarts, K classes, Z... latent dims.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tapsc.language import ir
from tapsc.layers import Linear
from tapsc.method.attack_rows import HeldRows, retirement, reused
from tapsc.method.connectors import connect_with
from tapsc.precision import attack_dtype

LR_DECAY_AT = 0.7
LR_DECAY = 0.1


def wrong_classes(y_B: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K-1) the classes other than y, in increasing order."""
    j_E = torch.arange(num_classes - 1, device=y_B.device)
    return j_E[None, :] + (j_E[None, :] >= y_B[:, None]).long()


def _objective(logits_NK, y_N, sign_NK):
    """Raw margin o_wrong - o_y (multi) or CE (single: sign_NK is None), per row.

    ``sign_NK`` holds +1 at the row's wrong class, -1 at y and 0 elsewhere: a product and a
    sum give the margin with the same single rounding as o_wrong - o_y (every other term is
    an exact zero), and its gradient is sign_NK itself, in two kernels each way where two
    gathers and their scatters took about ten.
    """
    if sign_NK is None:
        return F.cross_entropy(logits_NK, y_N, reduction="none")
    return (logits_NK * sign_NK).sum(1)


def _margin_signs(y_N, wrong_N, classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(N, K): +1 at wrong_N, -1 at y_N, 0 elsewhere (``_objective``'s multi form)."""
    sign_NK = torch.zeros((y_N.shape[0], classes), device=y_N.device, dtype=dtype)
    return sign_NK.scatter_(1, wrong_N[:, None], 1.0).scatter_(1, y_N[:, None], -1.0)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The active autocast dtype on ``device_type``, or None when autocast is off."""
    try:
        on, dtype = torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4: per-device functions
        cpu = device_type == "cpu"
        on = torch.is_autocast_cpu_enabled() if cpu else torch.is_autocast_enabled()
        dtype = torch.get_autocast_cpu_dtype() if cpu else torch.get_autocast_gpu_dtype()
    return dtype if on else None


def attack_input_dtype(layers, like: torch.Tensor) -> torch.dtype:
    """The dtype in which the attack holds the copy of its iterate that it differentiates.

    Under autocast a conv or linear casts its input to the autocast dtype first. When such a
    layer is the classifier's first arithmetic (after reshapes only), casting the iterate
    ourselves gives the layer the same values, and autograd then returns the gradient in
    that dtype: half the bytes of the float32 gradient autocast's cast would hand back,
    with the same signs (that cast's backward is an exact widening). Otherwise the
    iterate's own dtype.
    """
    low = _autocast_dtype(like.device.type)
    if low is None:
        return like.dtype
    for layer in layers:
        how = getattr(layer, "autocast", "other")
        if how != "reshapes":
            return low if how == "lowers" else like.dtype
    return like.dtype


def _attack_chunk(classifier, lo_B, hi_B, y_B, estimators: int, attack: ir.LatentAttack, multi: bool,
                  input_dtype: torch.dtype | None = None):
    """Attack one chunk of samples; returns the best point per (sample, estimator), (B, E, *Z)."""
    batch, restarts, latent = lo_B.shape[0], attack.restarts, tuple(lo_B.shape[1:])
    view = (batch, 1, 1) + latent
    lo, hi = lo_B.reshape(view), hi_B.reshape(view)
    width = hi - lo
    rows = batch * estimators * restarts
    y_N = y_B[:, None, None].expand(batch, estimators, restarts).reshape(rows)
    wrong_N = None
    if multi:
        wrong_BE = wrong_classes(y_B, estimators + 1)
        wrong_N = wrong_BE[:, :, None].expand(batch, estimators, restarts).reshape(rows)
    z = torch.rand((batch, estimators, restarts) + latent, device=lo.device, dtype=lo.dtype).mul_(width).add_(lo)
    best_z, best_value = z.clone(), torch.full((rows,), float("-inf"), device=lo.device, dtype=lo.dtype)
    lr0 = attack.step_size if attack.step_size is not None else max(0.2, 2 / attack.steps)
    decay_step = math.ceil(LR_DECAY_AT * attack.steps)
    input_dtype = input_dtype or z.dtype
    held = HeldRows(z, lo, hi, width, y_N, *retirement(attack.steps, lr0))  # tapsc/method/attack_rows.py
    for step in range(attack.steps + 1):
        last = step == attack.steps
        z = held.z
        z_in = z if input_dtype == z.dtype else held.low_copy(input_dtype)  # see attack_input_dtype
        z_in.requires_grad_(not last)
        with torch.set_grad_enabled(not last):  # the last pass only scores the final points
            logits_NK = classifier(held.flat(z_in))
            if multi and held.sign_NK is None:  # in the logits' dtype (bf16 under autocast), once per chunk
                held.sign_NK = _margin_signs(y_N, wrong_N, logits_NK.shape[1], logits_NK.dtype)
            value_N = _objective(logits_NK, held.y_N, held.sign_NK)
        value_N, graph_N = value_N.detach(), value_N
        held.keep_best(value_N, best_value, best_z)
        if last:
            break
        grad, = torch.autograd.grad(graph_N.sum(), z_in)
        del z_in, graph_N
        held.z = z.detach()
        lr = lr0 * (LR_DECAY if step >= decay_step else 1.0)
        if held.signs_in_update(grad):  # a bf16 gradient on the CPU: signed per memory chunk, in float32
            direction = grad
        else:
            direction = grad.sign_() if grad.is_contiguous() else grad.sign()
        held.find_stopped(direction, step)  # reads the direction's signs only
        held.update(direction, lr)  # in place; the step's graph is freed
        del grad, direction, z  # free before the next step's gradient is allocated
        if held.moving(attack.steps - step) == 0:  # every row is a fixed point: the remaining steps change nothing
            break
    if restarts == 1:
        return best_z[:, :, 0]
    winner_BE = best_value.reshape(batch, estimators, restarts).argmax(2)
    index = winner_BE.reshape((batch, estimators, 1) + (1,) * len(latent)).expand(
        (batch, estimators, 1) + latent)
    return best_z.gather(2, index)[:, :, 0]


class _GradientBuffer:
    """One (rows, F) tensor kept across the attack's steps for the latent gradient (``_IntoBuffer``)."""

    def __init__(self):
        self.tensor: torch.Tensor | None = None

    def take(self, like: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
        self.tensor = reused(self.tensor, (rows, columns), like.dtype, like.device)
        return self.tensor


class _IntoBuffer(torch.autograd.Function):
    """x W^T + b, the attack's first classifier layer when it is a linear one. Its backward gives
    dL/dx only, ``torch.mm(dL/dy, W, out=buffer)``: the product autograd's own linear backward
    computes (the same values, tests/method/test_latent_attack.py), written into a tensor kept
    across the steps instead of a fresh (rows, F) one per step, which on the CPU costs page faults
    (measured: 25 ms of a 96 ms bf16 product of 1152 x 512 x 25088). The attack never asks for
    the weights' gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, buffer: _GradientBuffer):
        ctx.weight, ctx.buffer = weight, buffer
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y):
        grad_x = ctx.buffer.take(grad_y, grad_y.shape[0], ctx.weight.shape[1])
        return torch.mm(grad_y, ctx.weight.to(grad_y.dtype), out=grad_x), None, None, None


def _attack_classifier(network, low: torch.dtype | None):
    """The classifier as the attack iterates it: the layers from the split on, with the first
    arithmetic layer, when it is a linear one after reshapes only, run through ``_IntoBuffer``.

    With ``low`` (``tapsc.precision.attack_precision``, e.g. bf16): ``layers[split:-1]`` under
    autocast to ``low`` (the first linear's weight and bias cast once per attack, as autocast's
    cache would), then the last layer (the logits) in float32 from those activations. Float32
    logits keep the margins that choose each row's best point at float32's resolution: with bf16
    logits (8 bits of mantissa) a later, better iterate often ties with an earlier one and loses,
    and the points came out weaker (Fashion-MNIST study net: mean margin 0.007 lower, 65% of the
    margins lower; with float32 logits 0.0003 lower, docs/benchmarks.md). The last layer is a
    product of B*(K-1)*R rows with a small matrix: its cost does not show.
    """
    layers = list(network.layers[network.split:])
    body, head = (layers[:-1], layers[-1]) if low is not None else (layers, None)
    first = next((i for i, layer in enumerate(body) if getattr(layer, "autocast", "other") != "reshapes"), None)
    buffer, linear = _GradientBuffer(), None
    if first is not None and isinstance(body[first], Linear):
        layer = body[first]
        weight, bias = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
        if low is not None:
            weight, bias = weight.to(low), None if bias is None else bias.to(low)

        def linear(x):
            return _IntoBuffer.apply(x, weight, bias, buffer)

    def run_body(z: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(body):
            z = linear(z) if index == first and linear is not None else layer(z)
        return z

    if low is None:
        return run_body

    def classifier(z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(z.device.type, dtype=low):
            z = run_body(z)
        return head(z.float())

    return classifier


def latent_attack(network, z_lo: torch.Tensor, z_hi: torch.Tensor, y: torch.Tensor,
                  attack: ir.LatentAttack) -> torch.Tensor:
    """Best latent points per (sample, estimator), (B, E, *Z), detached.

    Requires the clean forward of the batch first when the network is in training mode.
    """
    multi = attack.estimator == "multi"
    estimators = network.num_classes - 1 if multi else 1
    lo, hi = z_lo.detach(), z_hi.detach()
    per_chunk = lo.shape[0]
    if attack.estimation_batch is not None:
        per_chunk = max(1, attack.estimation_batch // (estimators * attack.restarts))
    chunks = []
    low = attack_dtype()  # a training pass's attack_precision (tapsc.precision), or None
    if _autocast_dtype(lo.device.type) is not None:  # --amp: the classifier as the whole step runs it
        classifier = network.classifier
        input_dtype = attack_input_dtype(network.layers[network.split:], lo)
    elif low is not None and network.split < len(network.layers) - 1:  # else the classifier is the logits layer
        classifier = _attack_classifier(network, low)
        with torch.autocast(lo.device.type, dtype=low):
            input_dtype = attack_input_dtype(network.layers[network.split:-1], lo)
    else:
        classifier, input_dtype = _attack_classifier(network, None), lo.dtype
    with network.frozen_batchnorm(detach=True), torch.enable_grad():
        for start in range(0, lo.shape[0], per_chunk):
            part = slice(start, start + per_chunk)
            chunks.append(_attack_chunk(classifier, lo[part], hi[part], y[part], estimators,
                                        attack, multi, input_dtype))
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def margins_at(network, z_BE: torch.Tensor, y: torch.Tensor, multi: bool) -> torch.Tensor:
    """(B, K) estimated o_i - o_y (0 at y) from the classifier at the chosen points.

    Multi: estimator e gives the margin of its own wrong class; single: every margin
    is read at the one point. BatchNorm uses the clean batch's live statistics.
    """
    batch, estimators = z_BE.shape[:2]
    with network.frozen_batchnorm(detach=False):
        logits_BEK = network.classifier(z_BE.flatten(0, 1)).reshape(batch, estimators, -1)
    true_BE = logits_BEK.gather(2, y[:, None, None].expand(batch, estimators, 1))[:, :, 0]
    if not multi:
        return logits_BEK[:, 0] - true_BE
    wrong_BE = wrong_classes(y, logits_BEK.shape[2])
    margin_BE = logits_BEK.gather(2, wrong_BE[:, :, None])[:, :, 0] - true_BE
    return torch.zeros_like(logits_BEK[:, 0]).scatter(1, wrong_BE, margin_BE)


def taps_margins(network, z_lo, z_hi, y, attack: ir.LatentAttack, connector: ir.Connector) -> torch.Tensor:
    """TAPS estimates of the upper bounds of o_i - o_y, (B, K), 0 at y.

    Differentiable with respect to the classifier's parameters (concrete forward) and,
    through the connector, with respect to the latent box bounds.
    """
    z_BE = latent_attack(network, z_lo, z_hi, y, attack)
    z_BE = connect_with(connector, z_BE, z_lo[:, None], z_hi[:, None],
                        attack_input_dtype(network.layers[network.split:], z_lo))
    return margins_at(network, z_BE, y, attack.estimator == "multi")
