"""A network's module list seen as a small DAG, the shape back-substitution walks.

A residual block is not one opaque op for linear bounds: its body and shortcut each
need their own back-substitution, and the ReLUs inside the body need their own
pre-activation bounds. So the ordered module list is flattened into nodes in
topological order: node 0 is the input, each leaf layer is one node reading one
earlier node, and a residual block becomes its body's chain, its shortcut's chain
(possibly empty), and an ``add`` node reading both ends.

A container says so itself: its ``branches()`` returns the two layer sequences whose
outputs it sums (tapsc's residual layer, `tapsc.layers.base.BoundLayer.branches`); any
other module is a leaf.

Shape legend: B batch; the rest of a shape is the node's per-sample shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class Node:
    """One op of the flattened graph: a leaf layer, an ``add`` of two nodes, or the input."""

    index: int
    op: str  # "input", "layer" or "add"
    inputs: tuple[int, ...] = ()
    layer: nn.Module | None = None


@dataclass
class Graph:
    """Nodes in topological order; the last one is the network output."""

    nodes: list[Node] = field(default_factory=list)

    @property
    def output(self) -> int:
        return len(self.nodes) - 1

    def add(self, op: str, inputs: tuple[int, ...] = (), layer: nn.Module | None = None) -> int:
        self.nodes.append(Node(len(self.nodes), op, inputs, layer))
        return len(self.nodes) - 1

    def consumers(self) -> dict[int, list[int]]:
        """For every node, the nodes that read it."""
        readers: dict[int, list[int]] = {node.index: [] for node in self.nodes}
        for node in self.nodes:
            for source in node.inputs:
                readers[source].append(node.index)
        return readers

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Concrete values of every node (used for shapes and as a self-check)."""
        values: list[torch.Tensor] = []
        for node in self.nodes:
            if node.op == "input":
                values.append(x)
            elif node.op == "add":
                values.append(values[node.inputs[0]] + values[node.inputs[1]])
            else:
                values.append(node.layer(values[node.inputs[0]]))
        return values


def _expand(graph: Graph, layers: Sequence[nn.Module], source: int) -> int:
    for layer in layers:
        branches = layer.branches() if hasattr(layer, "branches") else ()
        if not branches:
            source = graph.add("layer", (source,), layer)
            continue
        body, shortcut = branches
        body_end = _expand(graph, body, source)
        shortcut_end = _expand(graph, shortcut, source)
        source = graph.add("add", (body_end, shortcut_end))
    return source


def build_graph(layers: Sequence[nn.Module]) -> Graph:
    """Flatten an ordered module list (containers expanded) into a `Graph`."""
    graph = Graph()
    graph.add("input")
    _expand(graph, layers, 0)
    return graph
