"""Named semantic checks over a validated `ir.Spec`.

Each check is a function ``check_*(spec) -> list[Diagnostic]`` registered with
``@check``; `run_checks` runs them all and returns every problem found. The
checks are about relations between nodes (shapes, split, phases, schedule);
single-field constraints live in the pydantic schema (tapsc/language/ir.py).
"""

from __future__ import annotations

from typing import Callable

from tapsc.data.catalogue import CATALOGUE
from tapsc.errors import Diagnostic
from tapsc.language import ir, limits
from tapsc.language.diagnostics import did_you_mean
from tapsc.language.shapes import ShapeError, count_relus, layer_names, split_index

Check = Callable[[ir.Spec], list[Diagnostic]]
CHECKS: dict[str, Check] = {}


def check(fn: Check) -> Check:
    """Register a semantic check under its function name."""
    CHECKS[fn.__name__] = fn
    return fn


def run_checks(spec: ir.Spec) -> list[Diagnostic]:
    """Every diagnostic (errors and warnings) of every registered check, in registration order."""
    problems: list[Diagnostic] = []
    for fn in CHECKS.values():
        problems.extend(fn(spec))
    return problems


def errors_and_warnings(problems: list[Diagnostic]) -> tuple[list[Diagnostic], list[Diagnostic]]:
    """``problems`` split by severity: (errors, warnings)."""
    errors = [p for p in problems if p.severity != "warning"]
    return errors, [p for p in problems if p.severity == "warning"]


def _layer_fan_in(layer: ir.Node, shape: tuple[int, ...]) -> list[Diagnostic]:
    if isinstance(layer, ir.Linear) and layer.in_features is not None and len(shape) == 1 \
            and shape[0] != layer.in_features:
        return [Diagnostic(code="shape-mismatch", message=f"linear expects {layer.in_features} inputs but "
                           f"receives {shape[0]}", span=layer.span,
                           help=f"set `in = {shape[0]}` or drop `in` to infer it")]
    return []


def _walk_shapes(layers, shape, problems: list[Diagnostic]):
    """Infer shapes layer by layer, recording fan-in mismatches; None after the first error."""
    for layer in layers:
        if any(_walk_shapes(branch, shape, problems) is None for branch in layer.branches()):
            return None
        problems.extend(_layer_fan_in(layer, shape))
        try:
            shape = layer.out_shape(shape)
        except ShapeError as error:
            problems.append(Diagnostic(code="shape-mismatch", message=error.message,
                                       span=error.layer.span or layer.span, help=error.help))
            return None
    return shape


def model_output_shape(spec: ir.Spec) -> tuple[int, ...] | None:
    """The network's output shape, or None when a layer does not fit its input."""
    return _walk_shapes(spec.model.layers, spec.model.input_shape, [])


@check
def check_shapes(spec: ir.Spec) -> list[Diagnostic]:
    """Every layer fits the shape it receives (a conv on a flat vector, a wrong fan-in...)."""
    problems: list[Diagnostic] = []
    shape = _walk_shapes(spec.model.layers, spec.model.input_shape, problems)
    if shape is not None and len(shape) != 1:
        problems.append(Diagnostic(code="output-not-flat", message=f"the network ends with shape {shape}, "
                                   "not a vector of logits", span=spec.model.span,
                                   help="end the model with `flatten` and a `linear(classes)`"))
    return problems


@check
def check_output_classes(spec: ir.Spec) -> list[Diagnostic]:
    """The last layer gives one logit per class of the dataset."""
    shape = model_output_shape(spec)
    classes = CATALOGUE[spec.data.dataset].classes
    if shape is None or len(shape) != 1 or shape[0] == classes:
        return []
    last = spec.model.layers[-1] if spec.model.layers else spec.model
    return [Diagnostic(code="wrong-class-count", message=f"the network gives {shape[0]} outputs but "
                       f"`{spec.data.dataset}` has {classes} classes", span=last.span or spec.model.span,
                       help=f"end with `linear({classes})` (for `cnn7`: `cnn7(classes = {classes})`)")]


@check
def check_split(spec: ir.Spec) -> list[Diagnostic]:
    """The split leaves the requested ReLUs in the classifier at a top-level boundary."""
    split = spec.split
    if isinstance(split, ir.SplitAtName):
        names = layer_names(spec.model.layers)
        top = [name for name, is_top in names if is_top]
        if split.name not in {name for name, _ in names}:
            return [Diagnostic(code="unknown-layer-name", message=f"no layer is named `{split.name}`",
                               span=split.span_of("name"),
                               help=did_you_mean(split.name, top) if top else
                               "name a layer with `as`, e.g. `conv(16, kernel = 3) as stem`")]
        if split.name not in top:
            return [Diagnostic(code="split-inside-residual", message=f"layer `{split.name}` is inside a residual "
                               "block: the split cannot fall there", span=split.span_of("name"),
                               help="name the `residual` itself (`residual as NAME { ... }`) or a top-level layer")]
    try:
        index = split_index(spec.model, split)
    except ValueError as error:
        total = count_relus(spec.model.layers)
        return [Diagnostic(code="split-out-of-range", message=str(error), span=split.span,
                           help=f"relus_in_classifier must be between 0 and {total} (the model has {total} ReLUs)")]
    latent = [phase for phase in spec.method.phases if isinstance(getattr(phase, "attack", None), ir.LatentAttack)]
    layers = len(spec.model.layers)
    if latent and index >= layers:
        where = f"at_layer = {split.index}" if isinstance(split, ir.SplitAtLayer) else \
            f"at {split.name}" if isinstance(split, ir.SplitAtName) else f"relus_in_classifier = {split.count}"
        return [Diagnostic(code="empty-classifier", message=f"`split {where}` leaves the classifier empty (the model "
                           f"has {layers} layers, numbered 0 to {layers - 1}), but the `{latent[0].kind}` phase "
                           "attacks the classifier's input",
                           span=split.span_of({"at_layer": "index", "at_name": "name"}.get(split.kind, "count"))
                           or spec.model.span,
                           help=f"split before the last layer: `at_layer` at most {layers - 1}, or "
                                "`relus_in_classifier = 1`")]
    return []


@check
def check_layer_names(spec: ir.Spec) -> list[Diagnostic]:
    """Each `as NAME` names one layer."""
    first: dict[str, ir.Node] = {}
    out = []

    def visit(layers):
        for layer in layers:
            if layer.name is not None:
                if layer.name in first:
                    earlier = first[layer.name].span_of("name")
                    out.append(Diagnostic(
                        code="duplicate-layer-name", message=f"two layers are named `{layer.name}`",
                        span=layer.span_of("name"),
                        help=f"give each layer its own name (the first is at line {earlier.line})" if earlier
                        else "give each layer its own name"))
                else:
                    first[layer.name] = layer
            if isinstance(layer, ir.Residual):
                visit(layer.body)
                visit(layer.shortcut)

    visit(spec.model.layers)
    return out


@check
def check_normalize(spec: ir.Spec) -> list[Diagnostic]:
    """mean and std give one value for every channel, or one value per input channel (what
    the Normalize layer and the ONNX export accept)."""
    norm = spec.data.normalize
    if norm is None:
        return []
    channels = spec.model.input_shape[0] if len(spec.model.input_shape) == 3 else 1
    if len(norm.mean) == len(norm.std) and len(norm.mean) in (1, channels):
        return []
    return [Diagnostic(code="normalize-channels", message=f"normalize gives {len(norm.mean)} means and "
                       f"{len(norm.std)} stds for {channels} channel(s)", span=norm.span,
                       help=f"give one mean and one std, or {channels} of each (one per channel)")]


@check
def check_crops(spec: ir.Spec) -> list[Diagnostic]:
    """Crops are no larger than the (padded) images they cut from."""
    _, height, width = CATALOGUE[spec.data.dataset].shape
    problems = []
    for item in (*spec.data.train_augment, *spec.data.test_augment):
        padding = getattr(item, "padding", 0)
        size = getattr(item, "size", None)
        if size is not None and size > min(height, width) + 2 * padding:
            problems.append(Diagnostic(code="crop-too-large", message=f"crop {size} is larger than the "
                                       f"{height}x{width} images of `{spec.data.dataset}`", span=item.span,
                                       help=f"use a size of at most {min(height, width) + 2 * padding}"))
    return problems


def random_test_augmentation(item: ir.Node) -> Diagnostic:
    """The error for a random augmentation (``item.random``) among the test transforms."""
    allowed = ", ".join(f"`{kind}`" for kind in ir.EVALUATION_AUGMENTATIONS)
    return Diagnostic(
        code="random-test-augmentation",
        message=f"`{item.kind}` is random and cannot transform test images: evaluation, "
                "certification and export must see the same image in every run",
        span=item.span,
        help=f"`augment test` allows only deterministic augmentations ({allowed}); "
             f"move `{item.kind}` to `augment train {{ ... }}`")


@check
def check_test_augmentation(spec: ir.Spec) -> list[Diagnostic]:
    """Test and validation images are transformed deterministically (no random crop or flip)."""
    return [random_test_augmentation(item) for item in spec.data.test_augment if item.random]


def _image_size(data: ir.Data, augment: tuple[ir.Node, ...]) -> tuple[int, int]:
    """(H, W) of the images after ``augment`` (the last crop decides; no crop: the dataset's)."""
    _, height, width = CATALOGUE[data.dataset].shape
    for item in augment:
        size = getattr(item, "size", None)
        if size is not None:
            height = width = size
    return height, width


@check
def check_input_channels(spec: ir.Spec) -> list[Diagnostic]:
    """The model's input shape is the shape of the dataset's images (after any crop)."""
    data, shape = spec.data, spec.model.input_shape
    span = spec.model.span_of("input_shape") or spec.model.span
    if check_crops(spec):  # a crop larger than the image: that is the mistake to report
        return []
    channels = CATALOGUE[data.dataset].shape[0]
    for side, augment in (("training", data.train_augment), ("test", data.test_augment)):
        height, width = _image_size(data, augment)
        expected = (channels, height, width)
        size = channels * height * width
        if len(shape) == 3 and shape[0] != channels:
            return [Diagnostic(code="input-channels", message=f"input has {shape[0]} channel(s) but "
                               f"`{data.dataset}` images have {channels}", span=span,
                               help=f"write `input {expected}`, or drop `input` to take the dataset's shape")]
        if shape != expected if len(shape) == 3 else _product(shape) != size:
            crop = " after cropping" if (height, width) != CATALOGUE[data.dataset].shape[1:] else ""
            return [Diagnostic(code="input-shape", message=f"input shape {shape} does not match the {side} images "
                               f"of `{data.dataset}`{crop}: {expected} ({size:,} values)", span=span,
                               help=f"write `input {expected}` (or `input ({size},)` for a flat input), or drop "
                                    "`input` to take the dataset's shape")]
    return []


def _product(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


@check
def check_phases(spec: ir.Spec) -> list[Diagnostic]:
    """Phases tile [0, epochs) with no gap and no overlap; the last runs to the end."""
    phases, epochs = spec.method.phases, spec.optimizer.epochs
    if not phases:
        return [Diagnostic(code="no-phases", message="the method has no phases", span=spec.method.span,
                           help="add one, e.g. `phase taps`")]
    problems = []
    expected = 0
    for phase in phases:
        end = phase.end if phase.end is not None else epochs
        if phase.start != expected:
            what = "overlaps the previous phase" if phase.start < expected else "leaves a gap after the previous one"
            problems.append(Diagnostic(code="phase-overlap" if phase.start < expected else "phase-gap",
                                       message=f"the `{phase.kind}` phase starts at epoch {phase.start} and {what}",
                                       span=phase.span, help=f"start it at epoch {expected}"))
        if end <= phase.start:
            problems.append(Diagnostic(code="empty-phase", message=f"the `{phase.kind}` phase ends at epoch {end}, "
                                       f"not after its start {phase.start}", span=phase.span))
        if end > epochs:
            problems.append(Diagnostic(code="phase-after-end", message=f"the `{phase.kind}` phase ends at epoch "
                                       f"{end} but training has {epochs} epochs", span=phase.span,
                                       help=f"end it by epoch {epochs} or raise `epochs`"))
        expected = end
    if phases[-1].end is not None and phases[-1].end < epochs:
        problems.append(Diagnostic(code="phase-gap", message=f"the phases end at epoch {phases[-1].end} but training "
                                   f"has {epochs} epochs", span=phases[-1].span,
                                   help="drop the last phase's `until` so it runs to the end"))
    return problems


@check
def check_schedule(spec: ir.Spec) -> list[Diagnostic]:
    """The eps ramp starts before it ends and ends by the last epoch."""
    schedule, epochs = spec.perturbation.schedule, spec.optimizer.epochs
    span = schedule.span or spec.perturbation.span
    if schedule.end_epoch < schedule.start_epoch:
        return [Diagnostic(code="schedule-backwards", message=f"the eps schedule ends at epoch {schedule.end_epoch} "
                           f"before it starts at {schedule.start_epoch}", span=span)]
    if schedule.end_epoch > epochs:
        return [Diagnostic(code="schedule-after-end", message=f"the eps schedule ends at epoch {schedule.end_epoch} "
                           f"but training has {epochs} epochs", span=span,
                           help=f"end the ramp by epoch {epochs} or raise `epochs`")]
    return []


@check
def check_milestones(spec: ir.Spec) -> list[Diagnostic]:
    """Learning-rate milestones are increasing and inside training."""
    opt = spec.optimizer
    if list(opt.milestones) != sorted(set(opt.milestones)):
        return [Diagnostic(code="milestones-order", message=f"milestones {opt.milestones} are not increasing",
                           span=opt.span, help="list them in increasing order without repeats")]
    late = [m for m in opt.milestones if m >= opt.epochs]
    if late:
        return [Diagnostic(code="milestone-after-end", message=f"milestone {late[0]} is not before the last epoch "
                           f"({opt.epochs} epochs)", span=opt.span)]
    return []


@check
def check_lr_schedule(spec: ir.Spec) -> list[Diagnostic]:
    """Warm-up ends before training does; milestones belong to the step schedule only; momentum
    to sgd only."""
    opt = spec.optimizer
    if opt.warmup >= opt.epochs:
        return [Diagnostic(code="warmup-too-long", message=f"`warmup {opt.warmup} epochs` is not shorter than "
                           f"training ({opt.epochs} epochs)", span=opt.span_of("warmup"),
                           help=f"warm up for fewer than {opt.epochs} epochs")]
    if opt.kind != "sgd" and "momentum" in opt._field_spans:
        return [Diagnostic(code="momentum-not-sgd", message=f"`momentum` does nothing with `{opt.kind}` "
                           "(only `sgd` uses it; Adam's moment decay rates are fixed)",
                           span=opt.span_of("momentum"), help="drop `momentum`, or use `optimizer sgd`")]
    if opt.schedule == "cosine" and opt.milestones:
        return [Diagnostic(code="milestones-with-cosine", message="`decay ... at (...)` milestones do nothing "
                           "with `schedule cosine`", span=opt.span_of("milestones"),
                           help="drop the `decay` line, or use `schedule step`")]
    return []


@check
def check_eval(spec: ir.Spec) -> list[Diagnostic]:
    """The metric that selects the checkpoint is one that is evaluated."""
    if spec.eval.select not in spec.eval.metrics:
        return [Diagnostic(code="select-not-evaluated", message=f"checkpoints are selected by `{spec.eval.select}` "
                           "but it is not in `metrics`", span=spec.eval.span,
                           help=f"add `{spec.eval.select}` to `metrics` or select by one of {list(spec.eval.metrics)}")]
    return []


@check
def check_perturbation(spec: ir.Spec) -> list[Diagnostic]:
    """Certified methods need a positive radius."""
    certified = [p.kind for p in spec.method.phases if type(p).robust]
    if certified and spec.perturbation.eps == 0 and (spec.perturbation.train_eps or 0) == 0:
        return [Diagnostic(code="zero-eps", message=f"eps is 0 but the method trains with `{certified[0]}`",
                           span=spec.perturbation.span, help="set a positive `eps`, e.g. `eps 8/255`")]
    return []


@check
def check_eps_range(spec: ir.Spec) -> list[Diagnostic]:
    """eps is inside the data's value range: a box as wide as the range holds every image."""
    info = CATALOGUE[spec.data.dataset]
    low, high = info.value_range
    width = info.range_width
    pert = spec.perturbation
    problems = []
    for name, node, field in (("eps", pert, "eps"), ("train_eps", pert, "train_eps"),
                              ("export eps", spec.export, "eps")):
        value, span = getattr(node, field), node.span_of(field) or pert.span
        if value is None:
            continue
        if value >= width:
            problems.append(Diagnostic(
                code="eps-outside-range", span=span,
                message=f"{name} {value:g} is at least the whole pixel range [{low:g}, {high:g}] of "
                        f"`{spec.data.dataset}`: every box holds every image, so no network is robust",
                help=f"eps is in pixel units of [{low:g}, {high:g}]; write e.g. `eps 8/255` or `eps 0.1`"))
        elif value > width / 2:
            problems.append(Diagnostic(
                code="eps-large", severity="warning", span=span,
                message=f"{name} {value:g} is more than half the pixel range [{low:g}, {high:g}] of "
                        f"`{spec.data.dataset}`: most boxes reach nearly every image",
                help="eps is in pixel units (not normalised ones); typical values are 0.1-0.4 (MNIST) and "
                     "2/255-8/255 (CIFAR-10)"))
    return problems


@check
def check_relu_after_logits(spec: ir.Spec) -> list[Diagnostic]:
    """The logits are the last affine layer's output: a ReLU after it clips every negative logit."""
    layers = [layer for layer in spec.model.layers if not isinstance(layer, ir.Flatten)]
    if layers and isinstance(layers[-1], ir.ReLU) and any(isinstance(x, (ir.Linear, ir.Conv)) for x in layers):
        return [Diagnostic(code="relu-after-logits", severity="warning", span=layers[-1].span or spec.model.span,
                           message="the model ends with a ReLU: every negative logit becomes 0, so classes tie "
                                   "and margins cannot go below 0",
                           help="end the model with `linear(classes)`; drop this `relu`")]
    return []


@check
def check_parameter_count(spec: ir.Spec) -> list[Diagnostic]:
    """The network fits in memory: the parameter count is below `limits.PARAMETER_COUNT`."""
    total, largest, shape = 0, (0, spec.model), spec.model.input_shape
    for layer in spec.model.layers:
        try:
            count = layer.parameter_count(shape)
            shape = layer.out_shape(shape)
        except (ShapeError, IndexError):  # reported by check_shapes
            return []
        total += count
        largest = max(largest, (count, layer), key=lambda pair: pair[0])
    if total > limits.PARAMETER_COUNT.value:
        count, layer = largest
        return [limits.PARAMETER_COUNT.diagnostic(f"the network has {total:,} parameters", layer.span or
                                                  spec.model.span, label=f"{count:,} of them here")]
    return []
