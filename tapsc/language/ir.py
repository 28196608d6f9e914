"""The tapsc IR: a validated, torch-free description of one experiment.

Every node is a frozen pydantic model with ``extra="forbid"``. Unions of node
kinds carry a ``kind`` literal so pydantic names the bad tag and the valid ones.
Each node may carry the ``Span`` of the source text it came from; spans are
excluded from ``model_dump`` so IR comparisons in tests use the dumped JSON.

Epochs are counted from 0. An epoch range ``[start, end)`` includes ``start``
and excludes ``end``; ``end=None`` means "until the last epoch".
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, Sequence, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tapsc import measures
from tapsc.data.catalogue import DATASET_NAMES


class Span(BaseModel):
    """A region of a source file, 1-based lines and columns (end exclusive)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    file: str
    line: int
    column: int
    end_line: int
    end_column: int


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    span: Span | None = Field(default=None, exclude=True, repr=False)
    # where each field's value was written (the spec or a `--set` override); filled by
    # tapsc.language.spec after validation, read through `span_of`
    _field_spans: dict[str, Span] = PrivateAttr(default_factory=dict)

    def span_of(self, field: str) -> Span | None:
        """The span of ``field``'s value where it was written, else the node's own span."""
        return self._field_spans.get(field) or self.span


PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
UnitFloat = Annotated[float, Field(ge=0, le=1)]

# ---------------------------------------------------------------- data

DatasetName = Literal[DATASET_NAMES]  # type: ignore[valid-type]  # tapsc/data/catalogue.py: the one list


class Normalize(Node):
    """Per-channel normalisation applied inside the network (eps stays in pixel units)."""

    mean: tuple[float, ...]
    std: tuple[PositiveFloat, ...]


class RandomCrop(Node):
    """A SIZE x SIZE window at a random place in the image zero-padded by ``padding``."""

    random: ClassVar[bool] = True  # a draw per image: training only (see `EVALUATION_AUGMENTATIONS`)
    kind: Literal["crop"] = "crop"
    size: PositiveInt
    padding: NonNegativeInt = 0


class HorizontalFlip(Node):
    """A left-right mirror of the image with probability 1/2."""

    random: ClassVar[bool] = True
    kind: Literal["hflip"] = "hflip"


class CenterCrop(Node):
    """The central SIZE x SIZE window of the image."""

    random: ClassVar[bool] = False
    kind: Literal["center_crop"] = "center_crop"
    size: PositiveInt


Augmentation = Annotated[Union[RandomCrop, HorizontalFlip, CenterCrop], Field(discriminator="kind")]
AUGMENTATION_CLASSES: tuple[type[Node], ...] = typing.get_args(typing.get_args(Augmentation)[0])
# The kinds that transform every image the same way: the only ones allowed in `augment test`
# (test and validation images), since evaluation, certification and export must see the image itself.
EVALUATION_AUGMENTATIONS: tuple[str, ...] = tuple(
    cls.model_fields["kind"].default for cls in AUGMENTATION_CLASSES if not cls.random)


class Data(Node):
    dataset: DatasetName
    root: str | None = None  # None: the dataset's default location
    normalize: Normalize | None = None
    train_augment: tuple[Augmentation, ...] = ()
    test_augment: tuple[Augmentation, ...] = ()  # test and validation: EVALUATION_AUGMENTATIONS only
    batch: PositiveInt = 128
    train_subset: PositiveInt | None = None  # first n training samples only
    test_subset: PositiveInt | None = None  # first n test samples only
    validation: NonNegativeInt = 0  # samples held out of train for model selection


# ---------------------------------------------------------------- layers


def _window_size(minimum: int):
    """Validator of a 2-d window size: one whole number >= ``minimum`` for both dimensions,
    or a pair (height, width). One error per bad value (a plain union would report one per
    member), typed so that `tapsc.language.lowering` words it like any other."""

    def check(value):
        items = tuple(value) if isinstance(value, (tuple, list)) else None
        if items is None and isinstance(value, int) and not isinstance(value, bool):
            parts = (value,)
        elif items is not None and len(items) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                            for v in items):
            parts = items
        else:
            raise PydanticCustomError("window_type", "a whole number or a pair")
        if min(parts) < minimum:
            raise PydanticCustomError("greater_than_equal", "too small", {"ge": minimum})
        return value if items is None else parts

    return PlainValidator(check, json_schema_input_type=Union[int, tuple[int, int]])


Shape = tuple[int, ...]


@dataclass
class ShapeError(Exception):
    """A layer cannot take the shape it is given; ``layer`` carries the span."""

    layer: Node
    message: str
    help: str | None = None

    def __str__(self) -> str:
        return self.message


# A 2-d window size: one number for both dimensions, or (height, width)
PositivePair = Annotated[Union[int, tuple[int, int]], _window_size(1)]
NonNegativePair = Annotated[Union[int, tuple[int, int]], _window_size(0)]


def pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a window size written as one number or a pair."""
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class LayerNode(Node):
    """A layer kind's IR node: its fields are the layer's settings, and its class holds the kind's
    torch-free facts, which the grammar, the printer, shape inference and the split read:

    - ``positional``: the arguments a call takes by position, in order (the rest are named only);
    - ``aliases``: other names of arguments (`conv(out = 16)`);
    - ``printed_positional``: how many of the positional arguments the printer writes unnamed;
    - ``activation``: counted as a ReLU (``relus_in_classifier``, ``relu_layers``, regularizers);
    - ``out_shape(shape)``: the shape rule (raises `ShapeError`), ``parameter_count(in_shape)``
      and ``branches()`` (the nested layer sequences: a residual's body and shortcut).

    The kind's torch side (forward, interval, magnitude, CROWN rule, ONNX form) is the class
    registered under the same ``kind`` in `tapsc.layers`; tests/compile/test_layer_kinds.py checks
    that every kind has both and that they agree.

    ``name``: written `conv(16, kernel = 3) as stem`, unique in the model, read by `split at stem`.
    Left out of ``model_dump`` when unset, so IR without names dumps as it did before names existed."""

    positional: ClassVar[tuple[str, ...]] = ()
    aliases: ClassVar[dict[str, str]] = {}
    printed_positional: ClassVar[int] = 0
    activation: ClassVar[bool] = False
    name: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unset_name(self, handler):
        data = handler(self)
        if isinstance(data, dict) and data.get("name", "") is None:
            del data["name"]
        return data

    def out_shape(self, shape: Shape) -> Shape:
        """Output shape for an input of ``shape`` (no batch dimension); raises `ShapeError`."""
        raise NotImplementedError(f"layer kind {type(self).__name__} declares no shape rule")

    def parameter_count(self, in_shape: Shape) -> int:
        """Trainable parameters for an input of ``in_shape``: its branches' (none for a leaf);
        kinds with weights override it."""
        return sum(_sequence_parameters(branch, in_shape) for branch in self.branches())

    def branches(self) -> tuple[tuple[LayerNode, ...], ...]:
        """The layer sequences nested in this one (none but a residual's body and shortcut)."""
        return ()


class ElementwiseNode(LayerNode):
    """A kind whose output has its input's shape (activations, batchnorm)."""

    def out_shape(self, shape: Shape) -> Shape:
        return shape


def _size_text(value) -> str:
    kh, kw = pair(value)
    return str(kh) if kh == kw else f"{kh}x{kw}"


def _window_shape(layer: Node, shape: Shape, kernel, stride, padding, what: str) -> Shape:
    """Output (C, H', W') of a sliding window; ``kernel``, ``stride``, ``padding``: a number or
    (height, width)."""
    if len(shape) != 3:
        raise ShapeError(layer, f"{what} needs a (C, H, W) feature map, got shape {shape}",
                         "put it before `flatten`, or use `linear` on flat vectors")
    c, h, w = shape
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(padding)
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ShapeError(layer, f"{what} with kernel {_size_text(kernel)} does not fit a {h}x{w} input "
                         f"(padding {_size_text(padding)})", "use a smaller kernel or more padding")
    return (c, oh, ow)


def sequence_shape(layers: Sequence[LayerNode], shape: Shape) -> Shape:
    """Output shape of a layer sequence; raises `ShapeError` at the first layer that does not fit."""
    for layer in layers:
        shape = layer.out_shape(shape)
    return shape


def _sequence_parameters(layers: Sequence[LayerNode], shape: Shape) -> int:
    total = 0
    for layer in layers:
        total += layer.parameter_count(shape)
        shape = layer.out_shape(shape)
    return total


class Conv(LayerNode):
    positional: ClassVar[tuple[str, ...]] = ("out_channels", "kernel", "stride", "padding")
    aliases: ClassVar[dict[str, str]] = {"out": "out_channels", "channels": "out_channels", "pad": "padding"}
    printed_positional: ClassVar[int] = 1
    kind: Literal["conv"] = "conv"
    out_channels: PositiveInt
    kernel: PositivePair
    stride: PositivePair = 1
    padding: NonNegativePair = 0
    bias: bool = True

    def out_shape(self, shape: Shape) -> Shape:
        _, oh, ow = _window_shape(self, shape, self.kernel, self.stride, self.padding, "conv")
        return (self.out_channels, oh, ow)

    def parameter_count(self, in_shape: Shape) -> int:
        kh, kw = pair(self.kernel)
        return self.out_channels * in_shape[0] * kh * kw + (self.out_channels if self.bias else 0)


class Linear(LayerNode):
    positional: ClassVar[tuple[str, ...]] = ("out_features",)
    aliases: ClassVar[dict[str, str]] = {"out": "out_features", "features": "out_features", "in": "in_features"}
    printed_positional: ClassVar[int] = 1
    kind: Literal["linear"] = "linear"
    out_features: PositiveInt
    bias: bool = True
    in_features: PositiveInt | None = None  # optional, checked against the inferred fan-in

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) != 1:
            raise ShapeError(self, f"linear needs a flat vector, got shape {shape}", "insert `flatten` before it")
        return (self.out_features,)

    def parameter_count(self, in_shape: Shape) -> int:
        return self.out_features * in_shape[0] + (self.out_features if self.bias else 0)


class BatchNorm(ElementwiseNode):
    """BatchNorm over channels (2d after conv, 1d after linear: chosen from the shape)."""

    kind: Literal["batchnorm"] = "batchnorm"
    eps: PositiveFloat = 1e-5
    momentum: UnitFloat = 0.1

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) not in (1, 3):
            raise ShapeError(self, f"batchnorm needs (C, H, W) or (D,) inputs, got shape {shape}",
                             "give the input as (C, H, W), e.g. `input (1, 8, 8)`, or put batchnorm after "
                             "`flatten` / `linear`")
        return shape

    def parameter_count(self, in_shape: Shape) -> int:
        return 2 * in_shape[0]


class ReLU(ElementwiseNode):
    activation: ClassVar[bool] = True
    kind: Literal["relu"] = "relu"


class LeakyReLU(ElementwiseNode):
    """y = x for x >= 0, slope * x below; 0 <= slope < 1 keeps it monotone and convex."""

    positional: ClassVar[tuple[str, ...]] = ("slope",)
    activation: ClassVar[bool] = True
    kind: Literal["leaky_relu"] = "leaky_relu"
    slope: Annotated[float, Field(ge=0, lt=1)] = 0.01


class Flatten(LayerNode):
    kind: Literal["flatten"] = "flatten"

    def out_shape(self, shape: Shape) -> Shape:
        size = 1
        for dim in shape:
            size *= dim
        return (size,)


class _Pool(LayerNode):
    """What both pools share (each declares its fields, so they dump in the order they always had)."""

    positional: ClassVar[tuple[str, ...]] = ("kernel", "stride", "padding")
    aliases: ClassVar[dict[str, str]] = {"pad": "padding"}

    def out_shape(self, shape: Shape) -> Shape:
        if any(p * 2 > k for p, k in zip(pair(self.padding), pair(self.kernel))):
            raise ShapeError(self, f"{self.kind} padding {_size_text(self.padding)} is more than half its "
                             f"kernel {_size_text(self.kernel)}", "padding may be at most kernel // 2")
        return _window_shape(self, shape, self.kernel, self.stride or self.kernel, self.padding, self.kind)


class AvgPool(_Pool):
    kind: Literal["avgpool"] = "avgpool"
    kernel: PositivePair
    stride: PositivePair | None = None  # None: same as kernel
    padding: NonNegativePair = 0


class MaxPool(_Pool):
    kind: Literal["maxpool"] = "maxpool"
    kernel: PositivePair
    stride: PositivePair | None = None  # None: same as kernel
    padding: NonNegativePair = 0


class Residual(LayerNode):
    """y = body(x) + shortcut(x); an empty shortcut is the identity."""

    kind: Literal["residual"] = "residual"
    body: tuple["Layer", ...]
    shortcut: tuple["Layer", ...] = ()

    def out_shape(self, shape: Shape) -> Shape:
        body_shape, short_shape = sequence_shape(self.body, shape), sequence_shape(self.shortcut, shape)
        if body_shape != short_shape:
            raise ShapeError(self, f"residual body gives shape {body_shape} but its shortcut gives {short_shape}",
                             "give the shortcut a conv that matches the body's channels and stride")
        return body_shape

    def branches(self) -> tuple[tuple[LayerNode, ...], ...]:
        return (self.body, self.shortcut)


Layer = Annotated[
    Union[Conv, Linear, BatchNorm, ReLU, LeakyReLU, Flatten, AvgPool, MaxPool, Residual],
    Field(discriminator="kind"),
]
# kind -> IR class, derived from the union (the one list of layer kinds)
LAYER_NODES: dict[str, type[LayerNode]] = {
    cls.model_fields["kind"].default: cls for cls in typing.get_args(typing.get_args(Layer)[0])}
LAYER_KINDS = tuple(LAYER_NODES)


def is_activation(layer: Node | str) -> bool:
    """Whether a layer (or kind) is an activation: its class says so (``activation``)."""
    cls = LAYER_NODES.get(layer) if isinstance(layer, str) else type(layer)
    return bool(getattr(cls, "activation", False))
Residual.model_rebuild()


class Model(Node):
    """The network after every named block and ``repeat`` is expanded."""

    input_shape: tuple[PositiveInt, ...]  # (C, H, W) for images, (D,) for vectors
    layers: tuple[Layer, ...]


class SplitByRelus(Node):
    """The classifier holds the last ``count`` ReLUs and everything after them."""

    kind: Literal["relus_in_classifier"] = "relus_in_classifier"
    count: NonNegativeInt


class SplitAtLayer(Node):
    """The classifier starts at top-level layer ``index`` (written as a `split` marker)."""

    kind: Literal["at_layer"] = "at_layer"
    index: NonNegativeInt


class SplitAtName(Node):
    """The classifier starts at the top-level layer named ``name`` (`split at stem`)."""

    kind: Literal["at_name"] = "at_name"
    name: str


Split = Annotated[Union[SplitByRelus, SplitAtLayer, SplitAtName], Field(discriminator="kind")]
SPLIT_KINDS: tuple[str, ...] = tuple(cls.model_fields["kind"].default
                                     for cls in typing.get_args(typing.get_args(Split)[0]))

# ---------------------------------------------------------------- perturbation


class EpsSchedule(Node):
    """eps is 0 before ``start_epoch``, ramps to the target until ``end_epoch``, then stays."""

    shape: Literal["smooth", "linear", "constant"] = "smooth"
    start_epoch: NonNegativeInt = 0
    end_epoch: NonNegativeInt = 0


class Perturbation(Node):
    norm: Literal["linf"] = "linf"
    eps: NonNegativeFloat  # the test (certification) radius, in [0, 1] pixel units
    train_eps: NonNegativeFloat | None = None  # None: same as eps
    schedule: EpsSchedule = EpsSchedule()


# ---------------------------------------------------------------- method


class InputAttack(Node):
    """PGD in input space; ``step_size`` is a fraction of eps (None: 2.5 / steps)."""

    steps: PositiveInt = 10
    restarts: PositiveInt = 1
    step_size: PositiveFloat | None = None
    loss: Literal["ce", "margin"] = "ce"


class LatentAttack(Node):
    """PGD inside the latent box; ``step_size`` is a fraction of the box width
    (None: max(0.2, 2 / steps)); ``estimation_batch`` caps the rows attacked at once."""

    steps: PositiveInt = 20
    restarts: PositiveInt = 1
    step_size: PositiveFloat | None = None
    estimator: Literal["multi", "single"] = "multi"
    estimation_batch: PositiveInt | None = None


class _Connector(Node):
    """A gradient connector (Mao et al. 2023, Sec. 3.3): how the latent adversarial point
    z_hat passes gradient to the latent box bounds. Its fields are the connector's parameters
    (the spec's `connector KIND(name = value)`); its ramp, the per-dimension derivative, is
    registered by kind in tapsc/method/connectors.py. A parameter a kind fixes is a ClassVar
    (`linear` is rectified_linear with c = 1): writing it is the `connector-c` error."""


class RectifiedLinearConnector(_Connector):
    """d z / d z_lo = max(0, 1 - (z_hat - z_lo) / (c (z_hi - z_lo))) (the paper's Eq. 4 with
    its rectification; d z / d z_hi mirrored); c = 0 is binary, c = 1 linear."""

    kind: Literal["rectified_linear"] = "rectified_linear"
    c: UnitFloat = 0.5


class LinearConnector(_Connector):
    """rectified_linear with c = 1: the derivative falls linearly across the whole box."""

    kind: Literal["linear"] = "linear"
    c: ClassVar[float] = 1.0


class BinaryConnector(_Connector):
    """rectified_linear with c = 0: gradient only where z_hat sits on a bound."""

    kind: Literal["binary"] = "binary"
    c: ClassVar[float] = 0.0


Connector = Annotated[Union[RectifiedLinearConnector, LinearConnector, BinaryConnector], Field(discriminator="kind")]
CONNECTOR_CLASSES: dict[str, type[_Connector]] = {
    cls.model_fields["kind"].default: cls for cls in typing.get_args(typing.get_args(Connector)[0])}


class _Phase(Node):
    """A training phase over epochs [start, end). ``robust``: the phase trains against an eps
    ball, so it needs a positive eps (read by the checks, never listed again). ``trains_for``:
    the eval metric the phase trains for, which picks the default ``eval.select``
    (``default_select``); certified-training phases: ``taps``, the cheap certifiability estimate."""

    robust: ClassVar[bool] = True
    trains_for: ClassVar[str] = "taps"
    start: NonNegativeInt = 0
    end: PositiveInt | None = None


class NaturalPhase(_Phase):
    robust: ClassVar[bool] = False
    trains_for: ClassVar[str] = "natural"
    kind: Literal["natural"] = "natural"


class PGDPhase(_Phase):
    trains_for: ClassVar[str] = "pgd"
    kind: Literal["pgd"] = "pgd"
    attack: InputAttack = InputAttack()


class IBPPhase(_Phase):
    kind: Literal["ibp"] = "ibp"
    shi_regularizer: NonNegativeFloat = 0.0  # lambda_reg of Shi et al.; 0 disables


class SABRPhase(_Phase):
    kind: Literal["sabr"] = "sabr"
    sabr_lambda: Annotated[float, Field(gt=0, le=1)] = 0.4
    attack: InputAttack = InputAttack()
    shi_regularizer: NonNegativeFloat = 0.0


class TAPSPhase(_Phase):
    kind: Literal["taps"] = "taps"
    connector: Connector = RectifiedLinearConnector()
    attack: LatentAttack = LatentAttack()
    weight: NonNegativeFloat = 5.0  # w = a / (1 - a) in App. A


class STAPSPhase(_Phase):
    kind: Literal["staps"] = "staps"
    connector: Connector = RectifiedLinearConnector()
    attack: LatentAttack = LatentAttack()
    weight: NonNegativeFloat = 5.0
    sabr_lambda: Annotated[float, Field(gt=0, le=1)] = 0.4
    input_attack: InputAttack = InputAttack()


# The expressive losses of De Palma et al., "Expressive Losses for Verified Robustness via
# Convex Combinations", ICLR 2024 (Sec. 3-4). Each mixes the CE loss of the adversarial point
# x_adv (PGD of ``attack`` on the eps box, as the pgd phase) with the IBP loss, by ``alpha``:
# alpha = 0 is adversarial training, alpha = 1 is IBP. The paper tunes alpha per setting
# (small: 1e-3 to 1e-2 at small eps, up to 0.5 at CIFAR-10 8/255); the default here is the
# middle of the range, 0.5, since the authors' code has no single default (specs/ give the
# per-setting values).


class _ExpressivePhase(_Phase):
    """The settings the three expressive losses share: the mix ``alpha`` and the input attack."""

    alpha: UnitFloat = 0.5
    attack: InputAttack = InputAttack()


class MTLIBPPhase(_ExpressivePhase):
    """MTL-IBP: L = alpha L_IBP + (1 - alpha) L_adv (De Palma et al. 2024, Sec. 4, "MTL-IBP")."""

    kind: Literal["mtl_ibp"] = "mtl_ibp"


class CCIBPPhase(_ExpressivePhase):
    """CC-IBP: CE of z = (1 - alpha) z_adv + alpha z_IBP, z the upper bounds of o_i - o_y
    (De Palma et al. 2024, Sec. 4, "CC-IBP")."""

    kind: Literal["cc_ibp"] = "cc_ibp"


class ExpIBPPhase(_ExpressivePhase):
    """Exp-IBP: L = L_adv^(1 - alpha) L_IBP^alpha (De Palma et al. 2024, Sec. 4, "Exp-IBP")."""

    kind: Literal["exp_ibp"] = "exp_ibp"


class CROWNIBPPhase(_Phase):
    """CROWN-IBP (Zhang et al., ICLR 2020, Sec. 3): kappa CE(clean logits) + (1 - kappa) CE of
    beta z_CROWN-IBP + (1 - beta) z_IBP. beta and kappa are linear in eps: ``*_start`` at
    eps = 0, ``*_end`` at the target eps (the authors' default beta 1 -> 0, tied to the eps
    ramp; kappa, the weight of the natural loss, is 0 unless set: their MNIST configs use
    1 -> 0.5)."""

    kind: Literal["crown_ibp"] = "crown_ibp"
    beta_start: UnitFloat = 1.0
    beta_end: UnitFloat = 0.0
    kappa_start: UnitFloat = 0.0
    kappa_end: UnitFloat = 0.0


Phase = Annotated[
    Union[NaturalPhase, PGDPhase, IBPPhase, SABRPhase, TAPSPhase, STAPSPhase,
          MTLIBPPhase, CCIBPPhase, ExpIBPPhase, CROWNIBPPhase],
    Field(discriminator="kind"),
]
PHASE_CLASSES: tuple[type[_Phase], ...] = typing.get_args(typing.get_args(Phase)[0])
PHASE_KINDS: tuple[str, ...] = tuple(cls.model_fields["kind"].default for cls in PHASE_CLASSES)
ROBUST_PHASE_KINDS: tuple[str, ...] = tuple(
    cls.model_fields["kind"].default for cls in PHASE_CLASSES if cls.robust)


class Method(Node):
    phases: tuple[Phase, ...]
    initialization: Literal["default", "shi"] = "default"


# ---------------------------------------------------------------- optimisation


class Optimizer(Node):
    """lr per epoch: `tapsc.train.lr_schedule.learning_rate` (warm-up, then the step or cosine schedule)."""

    kind: Literal["adam", "adamw", "sgd"] = "adam"  # adamw: decoupled weight decay (Loshchilov & Hutter)
    lr: PositiveFloat = 5e-4
    schedule: Literal["step", "cosine"] = "step"  # step: x decay_factor at milestones; cosine: to 0 at the end
    warmup: NonNegativeInt = 0  # epochs of linear warm-up before the schedule
    momentum: UnitFloat = 0.9  # sgd only
    weight_decay: NonNegativeFloat = 0.0
    milestones: tuple[NonNegativeInt, ...] = ()  # epochs at which lr *= decay_factor
    decay_factor: PositiveFloat = 0.2
    clip: PositiveFloat | None = 10.0  # gradient norm clipping; None disables
    l1: NonNegativeFloat = 0.0
    epochs: PositiveInt
    seed: int = 0


# ---------------------------------------------------------------- evaluation and export

METRICS = measures.names(measures.EVAL)  # from tapsc/measures.py, the one table of measures
Metric = Literal[METRICS]  # type: ignore[valid-type]


class Eval(Node):
    metrics: tuple[Metric, ...] = ("natural", "pgd", "ibp", "taps")
    samples: PositiveInt | None = None  # None: the whole test set
    batch: PositiveInt = 128
    attack: InputAttack = InputAttack(steps=50, restarts=2, loss="margin")
    select: Metric = "taps"  # selects the best checkpoint; unset: default_select(method.phases)


def default_select(phases: Sequence[_Phase]) -> str:
    """``eval.select`` when the spec does not set it: the most robust metric its phases train
    for, in ``METRICS`` order (natural < pgd < taps): ``natural`` for natural-only specs,
    ``pgd`` for natural/PGD ones, else ``taps``."""
    return max((type(p).trains_for for p in phases), key=METRICS.index, default="taps")


class Export(Node):
    opset: Annotated[int, Field(ge=13, le=17)] = 13
    samples: PositiveInt = 100  # VNN-LIB properties (correctly classified test samples)
    eps: NonNegativeFloat | None = None  # None: perturbation.eps
    timeout: PositiveFloat = 300.0  # seconds per instance


class Distributed(Node):
    """Settings that matter only when several processes train one run."""

    sync_batchnorm: bool = False  # BatchNorm statistics over the global batch, not each rank's share


class Spec(Node):
    data: Data
    model: Model
    split: Split = SplitByRelus(count=0)
    perturbation: Perturbation
    method: Method
    optimizer: Optimizer
    eval: Eval = Eval()
    export: Export = Export()
    distributed: Distributed = Distributed()

    @model_validator(mode="after")
    def _default_select(self) -> "Spec":
        """An unset ``eval.select`` follows the phases (``default_select``); ir.json stores it."""
        if "select" not in self.eval.model_fields_set:
            chosen = default_select(self.method.phases)
            if chosen != self.eval.select:
                object.__setattr__(self, "eval", self.eval.model_copy(update={"select": chosen}))
        return self
