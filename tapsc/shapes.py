"""Torch-free shape inference over IR layers.

Shapes exclude the batch dimension: (C, H, W) for feature maps, (D,) for vectors.
Used by the semantic checks (to report a bad layer with its span) and by the
compiler (to size each layer's parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

from tapsc import ir

Shape = tuple[int, ...]


@dataclass
class ShapeError(Exception):
    """A layer cannot take the shape it is given; ``layer`` carries the span."""

    layer: ir.Node
    message: str
    help: str | None = None

    def __str__(self) -> str:
        return self.message


def _pooled(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _size_text(value) -> str:
    kh, kw = ir.pair(value)
    return str(kh) if kh == kw else f"{kh}x{kw}"


def _spatial(layer: ir.Node, shape: Shape, kernel, stride, padding, what: str) -> Shape:
    """Output (C, H', W') of a sliding window; ``kernel``, ``stride``, ``padding``: a number or
    (height, width)."""
    if len(shape) != 3:
        raise ShapeError(layer, f"{what} needs a (C, H, W) feature map, got shape {shape}",
                         "put it before `flatten`, or use `linear` on flat vectors")
    c, h, w = shape
    (kh, kw), (sh, sw), (ph, pw) = ir.pair(kernel), ir.pair(stride), ir.pair(padding)
    oh, ow = _pooled(h, kh, sh, ph), _pooled(w, kw, sw, pw)
    if oh <= 0 or ow <= 0:
        raise ShapeError(layer, f"{what} with kernel {_size_text(kernel)} does not fit a {h}x{w} input "
                         f"(padding {_size_text(padding)})", "use a smaller kernel or more padding")
    return (c, oh, ow)


def layer_output_shape(layer: ir.Node, shape: Shape) -> Shape:
    """Output shape of one layer for an input of ``shape``; raises ShapeError."""
    if isinstance(layer, ir.Conv):
        _, oh, ow = _spatial(layer, shape, layer.kernel, layer.stride, layer.padding, "conv")
        return (layer.out_channels, oh, ow)
    if isinstance(layer, (ir.AvgPool, ir.MaxPool)):
        stride = layer.stride or layer.kernel
        if any(p * 2 > k for p, k in zip(ir.pair(layer.padding), ir.pair(layer.kernel))):
            raise ShapeError(layer, f"{layer.kind} padding {_size_text(layer.padding)} is more than half its "
                             f"kernel {_size_text(layer.kernel)}", "padding may be at most kernel // 2")
        return _spatial(layer, shape, layer.kernel, stride, layer.padding, layer.kind)
    if isinstance(layer, ir.Linear):
        if len(shape) != 1:
            raise ShapeError(layer, f"linear needs a flat vector, got shape {shape}",
                             "insert `flatten` before it")
        return (layer.out_features,)
    if isinstance(layer, ir.Flatten):
        size = 1
        for dim in shape:
            size *= dim
        return (size,)
    if isinstance(layer, ir.BatchNorm) or ir.is_activation(layer):
        return shape
    if isinstance(layer, ir.Residual):
        body_shape = sequence_output_shape(layer.body, shape)
        short_shape = sequence_output_shape(layer.shortcut, shape)
        if body_shape != short_shape:
            raise ShapeError(layer, f"residual body gives shape {body_shape} but its shortcut gives {short_shape}",
                             "give the shortcut a conv that matches the body's channels and stride")
        return body_shape
    raise ShapeError(layer, f"no shape rule for layer kind {type(layer).__name__}")


def sequence_output_shape(layers: tuple[ir.Node, ...], shape: Shape) -> Shape:
    for layer in layers:
        shape = layer_output_shape(layer, shape)
    return shape


def layer_shapes(layers: tuple[ir.Node, ...], shape: Shape) -> list[Shape]:
    """Output shape after each top-level layer (raises at the first bad one)."""
    shapes = []
    for layer in layers:
        shape = layer_output_shape(layer, shape)
        shapes.append(shape)
    return shapes


def count_relus(layers: tuple[ir.Node, ...]) -> int:
    """ReLUs (activations, `ir.is_activation`) in a layer sequence, residual bodies and
    shortcuts included."""
    total = 0
    for layer in layers:
        if ir.is_activation(layer):
            total += 1
        elif isinstance(layer, ir.Residual):
            total += count_relus(layer.body) + count_relus(layer.shortcut)
    return total


def layer_names(layers: tuple[ir.Node, ...], top: bool = True) -> list[tuple[str, bool]]:
    """(name, is top-level) of every named layer, residual bodies and shortcuts included, in order."""
    out = []
    for layer in layers:
        if getattr(layer, "name", None) is not None:
            out.append((layer.name, top))
        if isinstance(layer, ir.Residual):
            out += layer_names(layer.body, False) + layer_names(layer.shortcut, False)
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
