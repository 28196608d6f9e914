"""Torch-free shape inference over IR layers.

Shapes exclude the batch dimension: (C, H, W) for feature maps, (D,) for vectors.
Used by the semantic checks (to report a bad layer with its span) and by the
compiler (to size each layer's parameters). Each kind's shape rule is its IR class's
``out_shape`` (`tapsc.language.ir.LayerNode`); this module walks sequences and finds the split.
"""

from __future__ import annotations

from tapsc.language import ir
from tapsc.language.ir import Shape, ShapeError

__all__ = ["Shape", "ShapeError", "count_relus", "layer_names", "layer_shapes", "split_index"]


def layer_shapes(layers: tuple[ir.LayerNode, ...], shape: Shape) -> list[Shape]:
    """Output shape after each top-level layer (raises at the first bad one)."""
    shapes = []
    for layer in layers:
        shape = layer.out_shape(shape)
        shapes.append(shape)
    return shapes


def count_relus(layers: tuple[ir.LayerNode, ...]) -> int:
    """ReLUs (activations, `ir.is_activation`) in a layer sequence, residual bodies and
    shortcuts included."""
    return sum(ir.is_activation(layer) + sum(count_relus(branch) for branch in layer.branches())
               for layer in layers)


def layer_names(layers: tuple[ir.LayerNode, ...], top: bool = True) -> list[tuple[str, bool]]:
    """(name, is top-level) of every named layer, residual bodies and shortcuts included, in order."""
    out = []
    for layer in layers:
        if getattr(layer, "name", None) is not None:
            out.append((layer.name, top))
        for branch in layer.branches():
            out += layer_names(branch, False)
    return out


def split_index(model: ir.Model, split: ir.Node) -> int:
    """Top-level index where the classifier starts.

    For ``relus_in_classifier = n`` the classifier starts right after the ReLU that
    leaves exactly n ReLUs behind it (n = 0: after the last ReLU, so the classifier
    is the final affine part; n = all: index 0). Raises ValueError when no
    top-level boundary leaves exactly n ReLUs in the classifier.
    """
    if isinstance(split, ir.SplitAtName):
        for index, layer in enumerate(model.layers):
            if layer.name == split.name:
                return index
        nested = split.name in {name for name, top in layer_names(model.layers) if not top}
        raise ValueError(f"layer `{split.name}` is inside a residual block: the split cannot fall there" if nested
                         else f"no top-level layer is named `{split.name}`")
    if isinstance(split, ir.SplitAtLayer):
        if split.index > len(model.layers):
            raise ValueError(f"split index {split.index} is past the last layer ({len(model.layers)} layers)")
        return split.index
    assert isinstance(split, ir.SplitByRelus)
    total = count_relus(model.layers)
    if split.count > total:
        raise ValueError(f"relus_in_classifier = {split.count} but the model has only {total} ReLUs")
    if split.count == total:
        return 0
    seen = 0
    for index, layer in enumerate(model.layers):
        seen += count_relus((layer,))
        if seen == total - split.count and ir.is_activation(layer):
            return index + 1
        if seen > total - split.count:
            break
    raise ValueError(f"no top-level layer boundary leaves exactly {split.count} ReLUs in the classifier "
                     "(a split cannot fall inside a residual block)")
