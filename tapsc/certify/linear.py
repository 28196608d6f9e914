"""Linear bounds by back-substitution: CROWN-IBP, CROWN and alpha-CROWN (plus plain IBP).

A linear lower bound ``A . y_n + bias`` on some node n of the graph is pushed back
layer by layer (`tapsc.certify.rules`) to the input, where it is concretised over the
input box. Certification starts from the spec matrix C (rows e_y - e_j, j != y), so
what is bounded is the margin o_y - o_j itself, not each logit: certified iff every
row's lower bound is > 0.

The relaxed layers (relu, maxpool) need a box on their input: the intermediate
bounds. CROWN-IBP takes them from IBP; CROWN back-substitutes from each pre-ReLU
node too (rows +e_k and -e_k), but only for the neurons IBP leaves unstable: a
stable neuron's relaxation depends only on its sign, which IBP already settled.
The CROWN box is intersected with the IBP one (both sound). Maxpool inputs keep
their IBP box.

Floating-point soundness (`tapsc.certify.rounding`): a certified verdict holds in exact
arithmetic over the stored float32 weights. Bounds are computed in float64 on a float64
copy of the layers (float32 values convert exactly); every rule returns, beside its
result, a bound on the rounding error it made, derived from the magnitudes of what it
summed; boxes are widened by it and the final margin bound lowered by the sum, each
rounded outward.

A sample's bounds never depend on the other samples of its batch: CROWN tightens, per
sample, exactly the neurons that sample's IBP box leaves unstable.

Shape legend: B batch, S bound rows per sample, K classes, N a node's flattened size,
X a node's per-sample shape (``*X``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from tapsc import measures
from tapsc.certify import rounding, rules
from tapsc.certify.graph import Graph, build_graph
from tapsc.certify.rounding import CERTIFY_DTYPE
from tapsc.precision import full_float32

METHODS = measures.names(measures.CERTIFY)  # every bound method, loosest first (tapsc/measures.py)
DEFAULT_METHODS = ("ibp", "crown_ibp", "crown")  # the cascade's default
# alpha-CROWN's optimiser: auto_LiRPA's defaults (optimize_bound_args: Adam, 20 iterations,
# lr_alpha 0.5, ExponentialLR decay 0.98, keep the best bound of every row).
ALPHA_STEPS = 20
ALPHA_LR = 0.5
ALPHA_DECAY = 0.98
Box = tuple[torch.Tensor, torch.Tensor]


def spec_matrix(labels_B: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C with rows e_y - e_j for every j != y: shape (B, K-1, K)."""
    eye_KK = torch.eye(num_classes, device=labels_B.device)
    j_J = torch.arange(num_classes - 1, device=labels_B.device)
    others_BJ = j_J + (j_J >= labels_B.unsqueeze(1)).long()  # every class but y, in order
    return eye_KK[labels_B].unsqueeze(1) - eye_KK[others_BJ]


class LinearBounds:
    """IBP, CROWN-IBP, CROWN and alpha-CROWN over one ordered module list (eval mode).

    Args:
        layers: the network's module list (residual blocks are expanded), in eval mode.
            A copy in ``dtype`` is taken: later changes to the weights are not seen.
        chunk_elements: cap on the elements of one coefficient tensor while CROWN
            bounds intermediate neurons (memory for conv layers).
        dtype: what the bounds are computed in (float64; float32 is sound too, with
            error bounds 2^29 times larger, and refused with ValueError for a layer whose
            input plus output exceed about 160,000 elements, see `rounding.error_factor`).
    """

    def __init__(self, layers: Sequence[nn.Module], chunk_elements: int = 1 << 25,
                 dtype: torch.dtype = CERTIFY_DTYPE):
        self.dtype = dtype
        self.layers = [_detached_copy(layer).to(dtype).eval() for layer in layers]
        self.graph: Graph = build_graph(self.layers)
        self.chunk_elements = chunk_elements
        readers = self.graph.consumers()
        self._relu_inputs = {n.index for n in self.graph.nodes
                             if any(self._is_relu_reader(r) for r in readers[n.index])}

    def _is_relu_reader(self, index: int) -> bool:
        node = self.graph.nodes[index]
        return node.op == "layer" and rules.is_relaxed(node.layer) and not _is_maxpool(node.layer)

    # ------------------------------------------------------------ intermediate boxes

    def node_boxes(self, lo: torch.Tensor, hi: torch.Tensor, method: str) -> list[Box]:
        """A sound box on every node (in exact arithmetic, rounding errors added), IBP-propagated;
        CROWN-tightened pre-ReLU if asked. ``lo``, ``hi`` are converted to ``self.dtype``."""
        boxes: list[Box] = [(lo.to(self.dtype), hi.to(self.dtype))]
        for node in self.graph.nodes[1:]:
            if node.op == "add":
                (alo, ahi), (blo, bhi) = (boxes[i] for i in node.inputs)
                box = (alo + blo, ahi + bhi)
                error = rounding.sum_error(rounding.magnitude_of(alo, ahi) + rounding.magnitude_of(blo, bhi), 2)
            else:
                source = boxes[node.inputs[0]]
                box = rules.interval(node.layer, *source)
                size = rules.magnitude(node.layer, rounding.magnitude_of(*source))
                error = rounding.sum_error(size, source[0][0].numel() + box[0][0].numel())
            box = rounding.widen(*box, error)
            if method == "crown" and node.index in self._relu_inputs:
                box = self._crown_box(node.index, box, boxes)
            boxes.append(box)
        return boxes

    def _crown_box(self, index: int, ibp: Box, boxes: list[Box]) -> Box:
        """CROWN bounds for the neurons unstable under IBP, intersected with the IBP box. Only
        the neurons unstable in a sample's own box change for that sample, so the result does
        not depend on the batch (a neuron unstable in another sample is bounded for all rows,
        but kept only where it is unstable)."""
        lo_BX, hi_BX = ibp
        B, shape = lo_BX.shape[0], lo_BX.shape[1:]
        unstable_BN = ((lo_BX < 0) & (hi_BX > 0)).flatten(1)
        unstable_N = unstable_BN.any(0).nonzero().squeeze(1)
        if unstable_N.numel() == 0:
            return ibp
        lo_BN, hi_BN = lo_BX.flatten(1).clone(), hi_BX.flatten(1).clone()
        widest = max([lo_BN.shape[1]] + [box[0][0].numel() for box in boxes])
        chunk = max(1, self.chunk_elements // (2 * B * widest))
        for part in unstable_N.split(chunk):
            rows_SN = torch.zeros(len(part), lo_BN.shape[1], device=lo_BX.device, dtype=lo_BX.dtype)
            rows_SN.scatter_(1, part.unsqueeze(1), 1.0)
            A_BSX = torch.cat([rows_SN, -rows_SN]).reshape(1, 2 * len(part), *shape).expand(B, -1, *shape)
            bound_BS = self.lower_bound(index, A_BSX.contiguous(), boxes)
            own_BP = unstable_BN[:, part]
            lo_BN[:, part] = torch.where(own_BP, torch.maximum(lo_BN[:, part], bound_BS[:, :len(part)]),
                                         lo_BN[:, part])
            hi_BN[:, part] = torch.where(own_BP, torch.minimum(hi_BN[:, part], -bound_BS[:, len(part):]),
                                         hi_BN[:, part])
        return lo_BN.reshape(lo_BX.shape), hi_BN.reshape(hi_BX.shape)

    # ------------------------------------------------------------ back-substitution

    def lower_bound(self, start: int, A_BSX: torch.Tensor, boxes: list[Box], stop: int = 0,
                    alphas: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Sound lower bound of ``A . node[start]``: shape (B, S). Back-substitutes down to node
        ``stop`` and concretises over its box (the input box for ``stop = 0``); ``stop`` must be
        a node every path from the input to ``start`` passes through. ``alphas`` maps a ReLU
        node's index to the lower slopes of its unstable neurons (B, S, *X), for alpha-CROWN.

        Sound in exact arithmetic: each rule's rounding error, the errors of adding
        coefficients where branches meet and of accumulating the bias, and the concretisation's
        error are summed and subtracted, and the result is rounded down.
        """
        B, S = A_BSX.shape[:2]
        A_BSX = A_BSX.to(self.dtype)
        pending = {start: A_BSX}
        bias_BS = A_BSX.new_zeros(B, S)
        error_BS = A_BSX.new_zeros(B, S)
        u = rounding.unit_roundoff(self.dtype)
        steps = 0
        for node in reversed(self.graph.nodes[stop + 1:start + 1]):
            A = pending.pop(node.index, None)
            if A is None:
                continue
            steps += 1
            if node.op == "add":
                for source in node.inputs:
                    error_BS = error_BS + _accumulate(pending, source, A, boxes[source])
                continue
            source = node.inputs[0]
            rule = rules.backward_rule(node.layer)
            if alphas and node.index in alphas:
                A_in, bias, error = rule(node.layer, A, *boxes[source], alphas[node.index])
            else:
                A_in, bias, error = rule(node.layer, A, *boxes[source])
            bias_BS = bias_BS + bias
            error_BS = error_BS + error + 2 * u * bias_BS.abs()
            error_BS = error_BS + _accumulate(pending, source, A_in, boxes[source])
        lo_BX, hi_BX = boxes[stop]
        A0 = pending.get(stop, torch.zeros_like(lo_BX).unsqueeze(1).expand(B, S, *lo_BX.shape[1:]))
        lo_1X, hi_1X = lo_BX.unsqueeze(1), hi_BX.unsqueeze(1)
        value_BS = _rows(A0.clamp(min=0) * lo_1X + A0.clamp(max=0) * hi_1X) + bias_BS
        size_BS = _rows(A0.abs() * rounding.magnitude_of(lo_1X, hi_1X)) + bias_BS.abs()
        error_BS = error_BS + rounding.sum_error(size_BS, lo_BX[0].numel() + 1)
        # the error terms were summed in floating point too: a relative allowance for that
        error_BS = error_BS * (1 + rounding.error_factor(steps + 2, self.dtype))
        return rounding.round_down(value_BS - error_BS)

    # ------------------------------------------------------------ the margin

    @full_float32()
    def margin_lower_bounds(self, lo: torch.Tensor, hi: torch.Tensor, labels: torch.Tensor,
                            method: str) -> torch.Tensor:
        """Lower bounds of o_y - o_j (j != y) over the box [lo, hi]: shape (B, K-1).

        Args:
            lo, hi: the input box (the network's input units, [0, 1] pixels); see
                `tapsc.certify.rounding.perturbation_box` for one rounded outward.
            labels: true classes, shape (B,).
            method: ``"ibp"``, ``"crown_ibp"``, ``"crown"`` or ``"alpha_crown"`` (CROWN's
                intermediate boxes, then the margin's ReLU lower slopes optimised per sample
                and bound row, see `alpha_crown_bound`).

        Returns bounds in ``self.dtype`` that hold in exact arithmetic over the stored weights.
        """
        assert method in METHODS, method
        with torch.no_grad():
            boxes = self.node_boxes(lo, hi, "crown" if method in ("crown", "alpha_crown") else "ibp")
            out_lo_BK, out_hi_BK = boxes[self.graph.output]
            C_BSK = spec_matrix(labels, out_lo_BK.shape[1]).to(self.dtype)
            if method == "ibp":
                return self._ibp_margin(out_lo_BK, out_hi_BK, C_BSK, boxes)
            if method == "alpha_crown":
                return self.alpha_crown_bound(self.graph.output, C_BSK, boxes)
            return self.lower_bound(self.graph.output, C_BSK, boxes)

    def alpha_crown_bound(self, start: int, A_BSX: torch.Tensor, boxes: list[Box], steps: int = ALPHA_STEPS,
                          lr: float = ALPHA_LR) -> torch.Tensor:
        """alpha-CROWN (Xu et al., ICLR 2021, "Fast and Complete", section 3.1): the lower slope
        of every unstable ReLU neuron, one per bound row, is a free parameter in [0, 1]; each
        choice gives a sound bound, so the slopes are optimised by gradient ascent on the
        bound (Adam), starting from CROWN's adaptive slopes, and each row keeps the best bound
        any iterate gave. Every iterate's bound goes through the same rounding-sound
        back-substitution, so the result is sound whatever the optimiser does, and never
        below CROWN's (the first iterate is CROWN). Rows stop mattering once positive: the
        optimisation ends early when every row of every sample is.

        Returns (B, S) lower bounds of ``A . node[start]``.
        """
        relus = [n.index for n in self.graph.nodes[1:start + 1]
                 if n.op == "layer" and rules.backward_rule(n.layer) in rules.ALPHA_RULES]
        B, S = A_BSX.shape[:2]
        alphas = {}
        for index in relus:
            lo_BX, hi_BX = boxes[self.graph.nodes[index].inputs[0]]
            initial = (hi_BX >= -lo_BX).to(self.dtype).unsqueeze(1).expand(B, S, *lo_BX.shape[1:])
            alphas[index] = initial.clone().requires_grad_(True)
        best_BS = self.lower_bound(start, A_BSX, boxes, alphas={k: a.detach() for k, a in alphas.items()})
        if not alphas:
            return best_BS
        optimizer = torch.optim.Adam(list(alphas.values()), lr=lr)
        schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, ALPHA_DECAY)
        for _ in range(steps):
            if bool((best_BS > 0).all()):
                break
            with torch.enable_grad():
                bound_BS = self.lower_bound(start, A_BSX, boxes, alphas=alphas)
                loss = -bound_BS.sum()
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                best_BS = torch.maximum(best_BS, bound_BS.detach())
                for alpha in alphas.values():
                    alpha.clamp_(0, 1)
        with torch.no_grad():  # the last step's slopes
            final_BS = self.lower_bound(start, A_BSX, boxes, alphas={k: a.detach() for k, a in alphas.items()})
        return torch.maximum(best_BS, final_BS)

    def _ibp_margin(self, lo_BK, hi_BK, C_BSK, boxes: list[Box]) -> torch.Tensor:
        """IBP's margin bound. When the network ends in an affine layer, C is multiplied into
        it first (the margin rows of the last layer, as training's IBP loss does): o_y - o_j
        is bounded as one affine function of the last box instead of as lo_y - hi_j, which
        cancels the shared part of the two logits."""
        last = self.graph.nodes[self.graph.output]
        if last.op == "layer" and not rules.is_relaxed(last.layer) and last.index > 0:
            return self.lower_bound(last.index, C_BSK, boxes, stop=last.inputs[0])
        value_BS = (C_BSK.clamp(min=0) * lo_BK.unsqueeze(1) + C_BSK.clamp(max=0) * hi_BK.unsqueeze(1)).sum(-1)
        size_BS = (C_BSK.abs() * rounding.magnitude_of(lo_BK, hi_BK).unsqueeze(1)).sum(-1)
        return rounding.round_down(value_BS - rounding.sum_error(size_BS, lo_BK.shape[1]))


def _detached_copy(layer: nn.Module) -> nn.Module:
    """A deep copy of ``layer`` without the graph tensors a training forward may have left on
    it (e.g. BatchNorm's batch statistics, which eval mode does not read): those cannot be
    deep-copied, and the copy is for eval-mode bounds only. The original is not touched."""
    memo: dict[int, object] = {}
    for module in layer.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = None
    return copy.deepcopy(layer, memo)


def _is_maxpool(layer: nn.Module) -> bool:
    return rules.backward_rule(layer) is rules.maxpool_backward


def _accumulate(pending: dict[int, torch.Tensor], index: int, A: torch.Tensor, box: Box) -> torch.Tensor:
    """Add ``A`` to the coefficients waiting at node ``index``; returns the bound (B, S) on the
    rounding error of that sum applied to any x in the node's box (0 when nothing was added)."""
    if index not in pending:
        pending[index] = A
        return A.new_zeros(A.shape[:2])
    size = _rows((pending[index].abs() + A.abs()) * rounding.magnitude_of(*box).unsqueeze(1))
    pending[index] = pending[index] + A
    return rounding.sum_error(size, 2)


def _rows(t_BSX: torch.Tensor) -> torch.Tensor:
    return t_BSX.flatten(2).sum(-1)
