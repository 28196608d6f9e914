"""``phase_loss``: the one training-step entry point, dispatching on the phase kind.

Every phase first runs the clean forward of the batch (it records BatchNorm's batch
statistics, which the interval and attack passes reuse, and gives the running natural
accuracy), then adds its robust loss:

- natural: CE of the clean logits.
- pgd: CE at the PGD point (Madry).
- ibp: IBP loss (eps = 0 is plain CE) + Shi regularizer during the ramp.
- sabr: IBP loss of SABR's small box + Shi regularizer during the ramp.
- taps: L_TAPS * L_IBP of batch means with App. A gradient scaling by w; the IBP factor
  is the classifier's IBP on the same latent box (as in the authors' code). With several
  processes the means are those of the global batch.
- staps: as taps, on SABR's small box instead of the eps box.
- mtl_ibp, cc_ibp, exp_ibp: De Palma et al.'s expressive losses (ICLR 2024), mixing the
  PGD point's CE (the pgd phase's attack) and the IBP loss by alpha (see `expressive_loss`).
- crown_ibp: kappa CE(clean logits) + (1 - kappa) CE(beta z_CROWN-IBP + (1 - beta) z_IBP),
  beta and kappa linear in eps/eps_target.
At eps = 0 every bound phase's box is a point and its loss is the clean CE (no attack or
interval pass runs).
An L1 penalty ``l1 * l1_penalty(network)`` is added when ``l1 > 0``.

Shape legend: B batch, K classes.
"""

from __future__ import annotations

from typing import Callable

import torch

from tapsc.language import ir
from tapsc.method import losses
from tapsc.method.crown_ibp import crown_ibp_margin_upper
from tapsc.method.input_attack import input_box, pgd_attack
from tapsc.method.latent_attack import taps_margins
from tapsc.method.regularizers import l1_penalty, shi_regularizer_from_trace, shi_weight
from tapsc.method.sabr import sabr_box

LOSSES: dict[str, Callable] = {}
GlobalMean = Callable[[torch.Tensor], torch.Tensor]


def register_loss(kind: str):
    """Register the robust-loss function of a phase kind: fn(network, phase, x, y, eps, eps_target,
    logits, global_mean) -> (loss, terms); ``global_mean`` as in `phase_loss`."""

    def decorate(fn):
        LOSSES[kind] = fn
        return fn

    return decorate


def phase_loss(network, phase: ir.Node, x: torch.Tensor, y: torch.Tensor, eps: float, eps_target: float,
               l1: float = 0.0, global_mean: GlobalMean | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one batch (x in [0, 1] pixels) under ``phase``.

    ``global_mean`` maps a tensor of this process's batch means to the means over the GLOBAL
    batch (detached), for the losses that multiply batch means (taps, staps, exp_ibp): with
    data-parallel processes the trainer passes an all-reduce, so the value and gradient are
    those one process would compute on the whole batch. None: this batch is the whole batch.

    Returns:
        (loss, terms): terms holds floats, always "loss", "nat_correct" (correct clean
        predictions in the batch) and "count" (batch size), plus the phase's parts
        ("ce", "ibp", "taps", "reg", "l1", ...).
    """
    logits = network(x)  # clean forward first: sets BatchNorm's batch statistics
    loss, terms = LOSSES[phase.kind](network, phase, x, y, eps, eps_target, logits, global_mean)
    if l1 > 0:
        penalty = l1_penalty(network)
        loss = loss + l1 * penalty
        terms["l1"] = float(penalty.detach())
    terms["loss"] = float(loss.detach())
    terms["nat_correct"] = float((logits.detach().argmax(1) == y).sum())
    terms["count"] = float(y.shape[0])
    return loss, terms


@register_loss("natural")
def _natural(network, phase, x, y, eps, eps_target, logits, global_mean):
    loss = losses.natural_loss(network, x, y, logits)
    return loss, {"ce": float(loss.detach())}


@register_loss("pgd")
def _pgd(network, phase: ir.PGDPhase, x, y, eps, eps_target, logits, global_mean):
    loss = losses.pgd_loss(network, x, y, eps, phase.attack)
    return loss, {"pgd": float(loss.detach())}


def _bound_loss_with_regularizer(network, lo, hi, y, lambda_reg, eps, eps_target):
    """IBP loss of the box [lo, hi] plus the weighted Shi regularizer (one interval pass)."""
    weight = shi_weight(lambda_reg, eps, eps_target)
    if weight == 0:
        loss = losses.bound_ce(losses.ibp_margin_upper(network, lo, hi, y), y)
        return loss, {"ibp": float(loss.detach())}
    trace = network.interval_trace(lo, hi, 0, len(network.layers) - 1)
    loss = losses.bound_ce(losses.margin_upper_last(network, *trace[-1], y), y)
    reg = shi_regularizer_from_trace(network, lo, hi, trace)
    return loss + weight * reg, {"ibp": float(loss.detach()), "reg": float(reg.detach())}


@register_loss("ibp")
def _ibp(network, phase: ir.IBPPhase, x, y, eps, eps_target, logits, global_mean):
    if eps == 0:
        loss = losses.natural_loss(network, x, y, logits)  # IBP of a point box is the clean CE
        return loss, {"ibp": float(loss.detach())}
    lo, hi = input_box(x, eps)
    return _bound_loss_with_regularizer(network, lo, hi, y, phase.shi_regularizer, eps, eps_target)


@register_loss("sabr")
def _sabr(network, phase: ir.SABRPhase, x, y, eps, eps_target, logits, global_mean):
    lo, hi = sabr_box(network, x, y, eps, phase.sabr_lambda, phase.attack)
    return _bound_loss_with_regularizer(network, lo, hi, y, phase.shi_regularizer, eps, eps_target)


def _taps_on_box(network, phase, lo, hi, y, global_mean):
    """The combined TAPS loss for the input box [lo, hi]."""
    z_lo, z_hi = network.extractor_box(lo, hi)
    l_ibp = losses.bound_ce(losses.ibp_margin_upper(network, z_lo, z_hi, y, start=network.split), y)
    l_taps = losses.bound_ce(taps_margins(network, z_lo, z_hi, y, phase.attack, phase.connector), y)
    if global_mean is not None:  # the product of the GLOBAL batch means, as one process would take it
        taps_mean, ibp_mean = global_mean(torch.stack([l_taps.detach(), l_ibp.detach()]))
        loss = losses.combine_scaled_over_ranks(l_taps, l_ibp, phase.weight, taps_mean, ibp_mean)
    else:
        loss = losses.combine_scaled(l_taps, l_ibp, phase.weight)
    return loss, {"taps": float(l_taps.detach()), "ibp": float(l_ibp.detach())}


@register_loss("taps")
def _taps(network, phase: ir.TAPSPhase, x, y, eps, eps_target, logits, global_mean):
    return _taps_on_box(network, phase, *input_box(x, eps), y, global_mean)


@register_loss("staps")
def _staps(network, phase: ir.STAPSPhase, x, y, eps, eps_target, logits, global_mean):
    lo, hi = sabr_box(network, x, y, eps, phase.sabr_lambda, phase.input_attack)
    return _taps_on_box(network, phase, lo, hi, y, global_mean)


def _adversarial_logits(network, phase, x, y, eps):
    """Logits at the PGD point of ``phase.attack``; BatchNorm reuses the clean batch's statistics."""
    x_adv, _ = pgd_attack(network, x, y, eps, phase.attack)
    with network.frozen_batchnorm(detach=False):
        return network(x_adv)



def _expressive(combine: Callable):
    """The robust loss of an expressive phase: ``combine(alpha, z_adv, z_IBP, y)``."""

    def loss_fn(network, phase, x, y, eps, eps_target, logits, global_mean):
        if eps == 0:
            loss = losses.natural_loss(network, x, y, logits)  # x_adv = x and the IBP box is a point
            return loss, {"adv": float(loss.detach()), "ibp": float(loss.detach())}
        z_adv_BK = losses.adversarial_margins(_adversarial_logits(network, phase, x, y, eps), y)
        z_ibp_BK = losses.ibp_margin_upper(network, *input_box(x, eps), y)
        loss, l_adv, l_ibp = combine(phase.alpha, z_adv_BK, z_ibp_BK, y)
        if combine is losses.exp_ibp_loss and global_mean is not None:  # a product of GLOBAL means, as for taps
            adv_mean, ibp_mean = global_mean(torch.stack([l_adv.detach(), l_ibp.detach()]))
            loss = losses.exp_ibp_over_ranks(phase.alpha, l_adv, l_ibp, adv_mean, ibp_mean)
        return loss, {"adv": float(l_adv.detach()), "ibp": float(l_ibp.detach())}

    return loss_fn


register_loss("mtl_ibp")(_expressive(losses.mtl_ibp_loss))
register_loss("cc_ibp")(_expressive(losses.cc_ibp_loss))
register_loss("exp_ibp")(_expressive(losses.exp_ibp_loss))

def along_eps(start: float, end: float, eps: float, eps_target: float) -> float:
    """``start`` at eps = 0, linear in eps to ``end`` at eps_target (and after): the schedule
    of crown_ibp's beta and kappa."""
    progress = min(eps / eps_target, 1.0) if eps_target > 0 else 1.0
    return start + (end - start) * progress


@register_loss("crown_ibp")
def _crown_ibp(network, phase: ir.CROWNIBPPhase, x, y, eps, eps_target, logits, global_mean):
    if eps == 0:
        loss = losses.natural_loss(network, x, y, logits)  # both bounds of a point are the logits
        return loss, {"ibp": float(loss.detach())}
    lo, hi = input_box(x, eps)
    trace = network.interval_trace(lo, hi, 0, len(network.layers) - 1)
    ibp_BK = losses.margin_upper_last(network, *trace[-1], y)
    beta = along_eps(phase.beta_start, phase.beta_end, eps, eps_target)
    kappa = along_eps(phase.kappa_start, phase.kappa_end, eps, eps_target)
    terms = {"ibp": float(losses.bound_ce(ibp_BK, y).detach()), "beta": beta, "kappa": kappa}
    if beta == 0:
        robust = losses.bound_ce(ibp_BK, y)
    else:
        crown_BK = crown_ibp_margin_upper(network, lo, hi, y, boxes=[(lo, hi)] + trace)
        terms["crown_ibp"] = float(losses.bound_ce(crown_BK, y).detach())
        robust = losses.bound_ce(beta * crown_BK + (1 - beta) * ibp_BK, y)
    if kappa == 0:
        return robust, terms
    natural = losses.natural_loss(network, x, y, logits)
    terms["ce"] = float(natural.detach())
    return kappa * natural + (1 - kappa) * robust, terms
