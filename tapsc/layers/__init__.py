"""Layer kinds: one small module per family, each kind registered in ``LAYERS``.

Importing this package registers every kind.
"""

from tapsc.layers import affine, batchnorm, elementwise, residual  # noqa: F401  (registers the kinds)
from tapsc.layers.affine import Conv, Linear
from tapsc.layers.base import LAYERS, BoundLayer, build_layers, register_layer, run_forward, run_interval
from tapsc.layers.batchnorm import BatchNorm
from tapsc.layers.elementwise import AvgPool, Flatten, Identity, LeakyReLU, MaxPool, Normalize, ReLU
from tapsc.layers.residual import Residual

__all__ = [
    "LAYERS", "BoundLayer", "build_layers", "register_layer", "run_forward", "run_interval",
    "Conv", "Linear", "BatchNorm", "AvgPool", "Flatten", "Identity", "LeakyReLU", "MaxPool", "Normalize", "ReLU",
    "Residual",
]
