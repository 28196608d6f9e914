"""The certification cascade: one verdict per test sample, cheapest method first.

Per batch: a wrong natural prediction is ``misclassified`` (not certifiable; the box
centre is itself a counterexample); a PGD counterexample makes it ``falsified``; the
rest go through the bound methods in order (IBP, CROWN-IBP, CROWN by default) and are
``certified`` by the first that proves every margin o_y - o_j > 0; what is left is
``unknown``.

Invariant: no sample is both certified and falsified. Every bound method of the cascade is
also run on every sample with a counterexample (or a wrong prediction); if one ever
certifies such a sample, that is a soundness bug and `SoundnessError` is raised.

Shape legend: B batch, X the per-sample input shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from tapsc.certify.attack import pgd_counterexamples
from tapsc.certify.linear import DEFAULT_METHODS, METHODS, LinearBounds
from tapsc.certify.rounding import perturbation_box
from tapsc.language import ir
from tapsc.precision import full_float32

VERDICTS = ("misclassified", "falsified", "certified", "unknown")
# the source of an in-house verdict (a certified one's is its bound method)
INHOUSE_SOURCE = {"misclassified": "prediction", "falsified": "attack", "unknown": None}


class SoundnessError(AssertionError):
    """A sample was both certified and falsified: a bug in the bounds, never a user mistake."""


@dataclass
class SampleVerdict:
    """The cascade's outcome for one test sample."""

    index: int
    label: int
    prediction: int
    verdict: str  # one of VERDICTS
    method: str | None  # the bound method that certified it
    margin_bound: float | None  # best lower bound on min_j (o_y - o_j) found
    attack_margin: float | None  # worst margin the attack reached (>= 0: counterexample)
    time: float  # seconds spent on this sample
    # who decided the verdict: the bound method, "attack", "prediction", or a merged
    # verifier's tool name (`tapsc.certify.merge`); None while unknown
    source: str | None = None

    def row(self) -> dict:
        return asdict(self)


@dataclass
class Cascade:
    """Settings of one certification run.

    Args:
        network: the network in eval mode (inputs in [0, 1] pixel units).
        eps: l_inf radius in pixel units.
        attack: the PGD settings (the spec's ``eval.attack``).
        methods: bound methods, tried in this order.
    """

    network: nn.Module
    eps: float
    attack: ir.InputAttack
    methods: Sequence[str] = DEFAULT_METHODS
    chunk_elements: int = 1 << 25

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        assert not unknown, f"unknown methods {unknown}"
        self.bounds = LinearBounds(self.network.layers if hasattr(self.network, "layers") else self.network,
                                   self.chunk_elements)

    @full_float32()
    def run(self, x_BX: torch.Tensor, labels_B: torch.Tensor, indices: Sequence[int]) -> list[SampleVerdict]:
        """Verdicts for one batch."""
        B = x_BX.shape[0]
        spent = torch.zeros(B)
        started = time.perf_counter()
        with torch.no_grad():
            prediction_B = self.network(x_BX).argmax(1)
        correct_B = (prediction_B == labels_B).cpu()
        found_B, _, attack_B = pgd_counterexamples(self.network, x_BX, labels_B, self.eps, self.attack)
        found_B = found_B.cpu() | ~correct_B
        spent += (time.perf_counter() - started) / B
        best = torch.full((B,), float("-inf"), dtype=torch.float64)
        method_of: list[str | None] = [None] * B
        open_B = ~found_B
        for method in self.methods:
            rows = open_B.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            lower_R, seconds = self._margin_bounds(x_BX[rows], labels_B[rows], method)
            spent[rows] += seconds / rows.numel()
            best[rows] = torch.maximum(best[rows], lower_R)
            for row in rows[lower_R > 0].tolist():
                method_of[row] = method
            open_B[rows[lower_R > 0]] = False
        self._check_invariant(x_BX, labels_B, found_B, indices)
        return [self._verdict(i, indices[i], labels_B, prediction_B, correct_B, found_B, method_of,
                              best, attack_B, spent) for i in range(B)]

    def _margin_bounds(self, x_RX, labels_R, method):
        started = time.perf_counter()
        lo, hi = perturbation_box(x_RX, self.eps, self.bounds.dtype)
        lower_RS = self.bounds.margin_lower_bounds(lo, hi, labels_R, method)
        return lower_RS.min(1).values.cpu(), time.perf_counter() - started

    def _check_invariant(self, x_BX, labels_B, found_B, indices):
        rows = found_B.nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        for method in self.methods:
            lower_R, _ = self._margin_bounds(x_BX[rows], labels_B[rows], method)
            if (lower_R > 0).any():
                bad = [indices[r] for r in rows[lower_R > 0].tolist()]
                raise SoundnessError(f"SOUNDNESS BUG: samples {bad} are certified by {method} but have a "
                                     "counterexample (or are misclassified)")

    @staticmethod
    def _verdict(i, index, labels_B, prediction_B, correct_B, found_B, method_of, best, attack_B, spent):
        if not correct_B[i]:
            verdict = "misclassified"
        elif found_B[i]:
            verdict = "falsified"
        else:
            verdict = "certified" if method_of[i] else "unknown"
        bound = best[i].item()
        return SampleVerdict(index=int(index), label=int(labels_B[i]), prediction=int(prediction_B[i]),
                             verdict=verdict, method=method_of[i],
                             margin_bound=None if bound == float("-inf") else bound,
                             attack_margin=float(attack_B[i]), time=float(spent[i]),
                             source=INHOUSE_SOURCE.get(verdict, method_of[i]))


def certify_dataset(cascade: Cascade, dataset, indices: Sequence[int], batch: int, device: str | torch.device = "cpu",
                    progress: Callable[[int], None] | None = None, seed: int | None = None,
                    shard: tuple[int, int] = (0, 1)) -> list[SampleVerdict]:
    """Run the cascade over ``dataset[i]`` for every i in ``indices``, ``batch`` at a time.

    Args:
        seed: when given, the attack's random starts of batch k are seeded from
            (seed, k), so a batch's verdicts do not depend on which process runs it.
        shard: ``(rank, world_size)``: this process runs batches rank, rank + world_size, ...
            of the batches of ``indices``; ``merge_shards`` puts the ranks' verdicts back
            in order. The union over ranks equals a single process's verdicts exactly
            (same batches, same seeds).
    """
    rank, world = shard
    verdicts: list[SampleVerdict] = []
    for number, chunk in enumerate(_chunks(list(indices), batch)):
        if number % world != rank:
            continue
        if seed is not None:
            torch.manual_seed((seed * 1_000_003 + number) % (2**63))
        pairs = [dataset[i] for i in chunk]
        x_BX = torch.stack([torch.as_tensor(p[0], dtype=torch.float32) for p in pairs]).to(device)
        labels_B = torch.tensor([int(p[1]) for p in pairs], device=device)
        verdicts.extend(cascade.run(x_BX, labels_B, chunk))
        if progress is not None:
            progress(len(chunk))
    return verdicts


def merge_shards(shards: Sequence[Sequence[SampleVerdict]], indices: Sequence[int]) -> list[SampleVerdict]:
    """The verdicts of every shard in the order of ``indices`` (one per index)."""
    by_index = {v.index: v for shard in shards for v in shard}
    missing = [i for i in indices if i not in by_index]
    assert not missing, f"no verdict for samples {missing[:10]}"
    return [by_index[i] for i in indices]


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def select_indices(total: int, first: int | None = None, span: tuple[int, int] | None = None,
                   random: int | None = None, seed: int = 0) -> list[int]:
    """Which test samples to certify: the first N, a range [start, stop), or a seeded random subset.

    With none given, every sample. ``first`` applies after ``span`` (the first N of the range).
    """
    indices = list(range(total))
    if span is not None:
        indices = indices[span[0]:span[1]]
    if random is not None:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(indices), generator=generator)[:random].sort().values
        indices = [indices[i] for i in order.tolist()]
    if first is not None:
        indices = indices[:first]
    return indices
