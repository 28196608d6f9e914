"""One margin function per computed measure of `tapsc.measures`, registered under its name, and
the verdict each kind draws from it.

A margin function is ``(network, x_B, y_B, spec, eps) -> margin_B``: the per-sample margin
(logit units, positive: robust by that measure) over the box clip(x -+ eps, 0, 1), with the
attack settings the spec gives. `margin` looks one up; `robust` is the verdict of a
measure, by its kind:

- ``clean``: the prediction, argmax o = y (natural accuracy);
- ``attack``: margin > 0 (the margin includes the clean point, so the prediction is right);
- ``estimate``: margin > 0 and the prediction right (the estimate never looks at x itself);
- ``sound``: `tapsc.certify.certified`, certification's verdict (float64 bounds rounded
  outward, so it holds in exact arithmetic; CROWN runs only where CROWN-IBP leaves a
  sample). The sound margins registered here are what `tapsc analyze` compares:
  `tapsc.certify`'s bounds for CROWN-IBP, CROWN and alpha-CROWN, and for IBP the
  network's own float32 interval pass.

`tapsc.evaluate` counts verdicts (accuracies); `tapsc.experiments.analysis` records margins.

Shape legend: B batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tapsc.language import ir
from tapsc.measures import MEASURES
from tapsc.method import metrics

MarginFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, ir.Spec, float], torch.Tensor]
MARGINS: dict[str, MarginFn] = {}
DEFAULT_SABR_LAMBDA = 0.4  # the SABR estimate of a spec without a SABR phase (the paper's MNIST value)


def register_margin(name: str) -> Callable[[MarginFn], MarginFn]:
    """Register the margin function of the computed measure ``name``."""
    assert name in MEASURES and MEASURES[name].computed, f"{name} is not a computed measure of tapsc.measures"
    assert name not in MARGINS, f"two margin functions for {name}"

    def register(fn: MarginFn) -> MarginFn:
        MARGINS[name] = fn
        return fn

    return register


def margin(name: str, network: nn.Module, x_B: torch.Tensor, y_B: torch.Tensor, spec: ir.Spec,
           eps: float | None = None) -> torch.Tensor:
    """Measure ``name``'s margin per sample, (B,), at ``eps`` (default ``perturbation.eps``)."""
    return MARGINS[name](network, x_B, y_B, spec, spec.perturbation.eps if eps is None else eps)


def robust(name: str, network: nn.Module, x_B: torch.Tensor, y_B: torch.Tensor, spec: ir.Spec,
           eps: float | None = None) -> torch.Tensor:
    """Measure ``name``'s verdict per sample, bool (B,): robust (or correct, for ``natural``) by that
    measure at ``eps`` (default ``perturbation.eps``), by its kind (module docstring)."""
    eps = spec.perturbation.eps if eps is None else eps
    kind = MEASURES[name].kind
    if kind == "clean":
        return metrics.natural_correct(network, x_B, y_B)
    if kind == "sound":
        from tapsc import certify

        return certify.certified(network, x_B, y_B, eps, method=name)
    robust_B = MARGINS[name](network, x_B, y_B, spec, eps) > 0
    return robust_B & metrics.natural_correct(network, x_B, y_B) if kind == "estimate" else robust_B


# ---------------------------------------------------------------- the settings a spec gives


def latent_attack_settings(spec: ir.Spec) -> ir.LatentAttack:
    """The latent attack of the spec's last TAPS/STAPS phase (the TAPS measure uses it)."""
    for phase in reversed(spec.method.phases):
        if isinstance(phase, (ir.TAPSPhase, ir.STAPSPhase)):
            return phase.attack
    return ir.LatentAttack()


def sabr_settings(spec: ir.Spec) -> tuple[float, ir.InputAttack]:
    """lambda and input attack of the spec's last SABR/STAPS phase (the paper's MNIST default otherwise)."""
    for phase in reversed(spec.method.phases):
        if isinstance(phase, ir.SABRPhase):
            return phase.sabr_lambda, phase.attack
        if isinstance(phase, ir.STAPSPhase):
            return phase.sabr_lambda, phase.input_attack
    return DEFAULT_SABR_LAMBDA, ir.InputAttack(steps=8)


# ---------------------------------------------------------------- the margins


@register_margin("natural")
def _natural(network, x_B, y_B, spec, eps):
    return metrics.clean_margin(network, x_B, y_B)


@register_margin("pgd")
def _pgd(network, x_B, y_B, spec, eps):
    return metrics.pgd_margin(network, x_B, y_B, eps, spec.eval.attack)


@register_margin("ibp")
def _ibp(network, x_B, y_B, spec, eps):
    return metrics.ibp_margin(network, x_B, y_B, eps)


@register_margin("sabr")
def _sabr(network, x_B, y_B, spec, eps):
    return metrics.sabr_margin(network, x_B, y_B, eps, *sabr_settings(spec))


@register_margin("taps")
def _taps(network, x_B, y_B, spec, eps):
    return metrics.taps_margin(network, x_B, y_B, eps, latent_attack_settings(spec))


def certify_bound(method: str) -> MarginFn:
    """The sound margin of a `tapsc.certify` bound method (float64, exact-arithmetic lower bounds)."""

    def bound(network, x_B, y_B, spec, eps):
        from tapsc import certify

        with torch.no_grad():
            return certify.margin_lower_bounds(network, x_B, y_B, eps, method)

    return bound


register_margin("crown_ibp")(certify_bound("crown_ibp"))
register_margin("crown")(certify_bound("crown"))
register_margin("alpha_crown")(certify_bound("alpha_crown"))
