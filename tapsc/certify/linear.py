"""Linear bounds by back-substitution: CROWN-IBP and CROWN (plus plain IBP).

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

Float32 soundness: the concretisation is exact in real arithmetic, but float32
sums round. Every bound this module returns is pushed outward by
``REL_MARGIN * magnitude + ABS_MARGIN``, where magnitude is the sum of absolute
values of the terms that were added (|A| |x| at the input, |A| |bias| on the way).
Intermediate boxes get the same widening before a relaxation reads them, so the
ReLU lines themselves sit a little above the true box's ReLU.

Shape legend: B batch, S bound rows per sample, K classes, N a node's flattened size,
X a node's per-sample shape (``*X``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tapsc.certify import rules
from tapsc.certify.graph import Graph, build_graph
from tapsc.certify.precision import full_float32

REL_MARGIN = 1e-5
ABS_MARGIN = 1e-6
METHODS = ("ibp", "crown_ibp", "crown")
Box = tuple[torch.Tensor, torch.Tensor]


def widen(lo: torch.Tensor, hi: torch.Tensor) -> Box:
    """Push a float32 box outward by the safety margin."""
    pad = REL_MARGIN * torch.maximum(lo.abs(), hi.abs()) + ABS_MARGIN
    return lo - pad, hi + pad


def spec_matrix(labels_B: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C with rows e_y - e_j for every j != y: shape (B, K-1, K)."""
    eye_KK = torch.eye(num_classes, device=labels_B.device)
    j_J = torch.arange(num_classes - 1, device=labels_B.device)
    others_BJ = j_J + (j_J >= labels_B.unsqueeze(1)).long()  # every class but y, in order
    return eye_KK[labels_B].unsqueeze(1) - eye_KK[others_BJ]


class LinearBounds:
    """IBP, CROWN-IBP and CROWN over one ordered module list (eval mode).

    Args:
        layers: the network's module list (residual blocks are expanded).
        chunk_elements: cap on the elements of one coefficient tensor while CROWN
            bounds intermediate neurons (memory for conv layers).
    """

    def __init__(self, layers: Sequence[nn.Module], chunk_elements: int = 1 << 25):
        rules.register_tapsc_layers()
        self.graph: Graph = build_graph(layers)
        self.chunk_elements = chunk_elements
        readers = self.graph.consumers()
        self._relu_inputs = {n.index for n in self.graph.nodes
                             if any(self._is_relu_reader(r) for r in readers[n.index])}

    def _is_relu_reader(self, index: int) -> bool:
        node = self.graph.nodes[index]
        return node.op == "layer" and rules.is_relaxed(node.layer) and not _is_maxpool(node.layer)

    # ------------------------------------------------------------ intermediate boxes

    def node_boxes(self, lo: torch.Tensor, hi: torch.Tensor, method: str) -> list[Box]:
        """A sound box on every node, IBP-propagated; CROWN-tightened pre-ReLU if asked."""
        boxes: list[Box] = [(lo, hi)]
        for node in self.graph.nodes[1:]:
            if node.op == "add":
                (alo, ahi), (blo, bhi) = (boxes[i] for i in node.inputs)
                box = (alo + blo, ahi + bhi)
            else:
                box = rules.interval(node.layer, *boxes[node.inputs[0]])
            box = widen(*box)
            if method == "crown" and node.index in self._relu_inputs:
                box = self._crown_box(node.index, box, boxes)
            boxes.append(box)
        return boxes

    def _crown_box(self, index: int, ibp: Box, boxes: list[Box]) -> Box:
        lo_BX, hi_BX = ibp
        B, shape = lo_BX.shape[0], lo_BX.shape[1:]
        unstable_N = ((lo_BX < 0) & (hi_BX > 0)).flatten(1).any(0).nonzero().squeeze(1)
        if unstable_N.numel() == 0:
            return ibp
        lo_BN, hi_BN = lo_BX.flatten(1).clone(), hi_BX.flatten(1).clone()
        widest = max([lo_BN.shape[1]] + [box[0][0].numel() for box in boxes])
        chunk = max(1, self.chunk_elements // (2 * B * widest))
        for part in unstable_N.split(chunk):
            rows_SN = torch.zeros(len(part), lo_BN.shape[1], device=lo_BX.device)
            rows_SN.scatter_(1, part.unsqueeze(1), 1.0)
            A_BSX = torch.cat([rows_SN, -rows_SN]).reshape(1, 2 * len(part), *shape).expand(B, -1, *shape)
            bound_BS = self.lower_bound(index, A_BSX.contiguous(), boxes)
            lo_BN[:, part] = torch.maximum(lo_BN[:, part], bound_BS[:, :len(part)])
            hi_BN[:, part] = torch.minimum(hi_BN[:, part], -bound_BS[:, len(part):])
        return lo_BN.reshape(lo_BX.shape), hi_BN.reshape(hi_BX.shape)

    # ------------------------------------------------------------ back-substitution

    def lower_bound(self, start: int, A_BSX: torch.Tensor, boxes: list[Box], stop: int = 0) -> torch.Tensor:
        """Sound lower bound of ``A . node[start]``: shape (B, S). Back-substitutes down to node
        ``stop`` and concretises over its box (the input box for ``stop = 0``); ``stop`` must be
        a node every path from the input to ``start`` passes through."""
        B, S = A_BSX.shape[:2]
        pending = {start: A_BSX}
        bias_BS = A_BSX.new_zeros(B, S)
        magnitude_BS = A_BSX.new_zeros(B, S)
        for node in reversed(self.graph.nodes[stop + 1:start + 1]):
            A = pending.pop(node.index, None)
            if A is None:
                continue
            if node.op == "add":
                for source in node.inputs:
                    _accumulate(pending, source, A)
                continue
            source = node.inputs[0]
            A_in, bias, magnitude = rules.backward_rule(node.layer)(node.layer, A, *boxes[source])
            bias_BS, magnitude_BS = bias_BS + bias, magnitude_BS + magnitude
            _accumulate(pending, source, A_in)
        lo_BX, hi_BX = boxes[stop]
        A0 = pending.get(stop, torch.zeros_like(lo_BX).unsqueeze(1).expand(B, S, *lo_BX.shape[1:]))
        lo_1X, hi_1X = lo_BX.unsqueeze(1), hi_BX.unsqueeze(1)
        value_BS = _rows(A0.clamp(min=0) * lo_1X + A0.clamp(max=0) * hi_1X) + bias_BS
        magnitude_BS = magnitude_BS + _rows(A0.abs() * torch.maximum(lo_1X.abs(), hi_1X.abs()))
        return value_BS - (REL_MARGIN * magnitude_BS + ABS_MARGIN)

    # ------------------------------------------------------------ the margin

    @full_float32()
    def margin_lower_bounds(self, lo: torch.Tensor, hi: torch.Tensor, labels: torch.Tensor,
                            method: str) -> torch.Tensor:
        """Lower bounds of o_y - o_j (j != y) over the box [lo, hi]: shape (B, K-1).

        Args:
            lo, hi: the input box (the network's input units, [0, 1] pixels).
            labels: true classes, shape (B,).
            method: ``"ibp"``, ``"crown_ibp"`` or ``"crown"``.
        """
        assert method in METHODS, method
        with torch.no_grad():
            boxes = self.node_boxes(lo, hi, "crown" if method == "crown" else "ibp")
            out_lo_BK, out_hi_BK = boxes[self.graph.output]
            C_BSK = spec_matrix(labels, out_lo_BK.shape[1]).to(lo.dtype)
            if method == "ibp":
                return self._ibp_margin(out_lo_BK, out_hi_BK, C_BSK, boxes)
            return self.lower_bound(self.graph.output, C_BSK, boxes)

    def _ibp_margin(self, lo_BK, hi_BK, C_BSK, boxes: list[Box]) -> torch.Tensor:
        """IBP's margin bound. When the network ends in an affine layer, C is multiplied into
        it first (the margin rows of the last layer, as training's IBP loss does): o_y - o_j
        is bounded as one affine function of the last box instead of as lo_y - hi_j, which
        cancels the shared part of the two logits."""
        last = self.graph.nodes[self.graph.output]
        if last.op == "layer" and not rules.is_relaxed(last.layer) and last.index > 0:
            return self.lower_bound(last.index, C_BSK, boxes, stop=last.inputs[0])
        value_BS = (C_BSK.clamp(min=0) * lo_BK.unsqueeze(1) + C_BSK.clamp(max=0) * hi_BK.unsqueeze(1)).sum(-1)
        return widen(value_BS, value_BS)[0]


def _is_maxpool(layer: nn.Module) -> bool:
    return rules.backward_rule(layer) is rules.maxpool_backward


def _accumulate(pending: dict[int, torch.Tensor], index: int, A: torch.Tensor) -> None:
    pending[index] = pending[index] + A if index in pending else A


def _rows(t_BSX: torch.Tensor) -> torch.Tensor:
    return t_BSX.flatten(2).sum(-1)
