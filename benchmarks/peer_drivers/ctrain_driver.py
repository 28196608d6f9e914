"""CTRAIN's side of the peer comparison (PyPI ``ctrain``, run with its own environment's python).

CNN7 is CTRAIN's ``CNN7_Shi`` for CIFAR-10 (3x32x32, width 64), wrapped by its
``TAPSModelWrapper`` (auto_LiRPA ``BoundedModule``s; block sizes (16, 4): Linear-BN1d-ReLU-
Linear, one ReLU, in the classifier) and initialised by its ``ibp_init_shi``; its optimizer
(Adam, lr 5e-4). Each step is the body of CTRAIN's own training loops at the target eps
(``train/certified/shi_ibp.py`` and ``taps.py``): the clean forward through the bounded model,
then the method's loss (``get_ibp_loss``, ``get_taps_loss``), backward, clipping at 10, Adam.
Data are normalised as CTRAIN's loaders do, and eps divided by the std per channel.
TAPS uses the paper's attack schedule (lr 0.2 = max(0.2, 2 / steps), x0.1 at 0.7 * steps)
instead of CTRAIN's 8-step default, so the work matches tapsc's and the authors'.

With ``--workload-file`` (the trained workload, protocol.py): ``CNN7_Shi`` for the file's input
shape, width and classes, the trained tensors copied in before ``TAPSModelWrapper`` wraps it
(no Shi init), the file's images, labels and eps, normalised by the file's mean and std (none:
raw pixels, eps as is). The logits are checked through what CTRAIN trains: the wrapper's
bounded model and its two bounded blocks (auto_LiRPA's ``BoundedModule`` shares the
parameters but keeps its own copies of the BatchNorm statistics, taken at wrapping; tracing
also moves the wrapped model's own running statistics, which no step reads, so its difference
is reported but not checked). Every step starts from the trained tensors of all of them.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import (
    CIFAR10_MEAN,
    CIFAR10_SHAPE,
    CIFAR10_STD,
    arguments,
    claim_stdout,
    full_step,
    load_tensors,
    logit_difference,
    method_names,
    read_workload,
    serve,
    snapshot,
    workload_info,
)

BLOCK_SIZES = (16, 4)  # CNN7_Shi has 20 modules; the last 4 hold one ReLU


def main() -> None:
    replies = claim_stdout()
    from importlib.metadata import version

    import CTRAIN.bound.taps as ctrain_taps
    import numpy as np
    import torch
    from auto_LiRPA import PerturbationLpNorm
    from CTRAIN.model_definitions.models_shi import CNN7_Shi
    from CTRAIN.model_wrappers import TAPSModelWrapper
    from CTRAIN.train.certified.initialisation import ibp_init_shi
    from CTRAIN.train.certified.losses import get_ibp_loss, get_taps_loss

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from measure import random_batch

    args = arguments(__doc__.split("\n")[0])
    device = torch.device("cpu")
    # CTRAIN's attack defaults its device to 'cuda' and its caller does not pass one
    ctrain_taps._get_pivotal_points_one_batch.__defaults__ = ("cpu",)
    workload = read_workload(args.workload_file) if args.workload_file else None
    if workload is None:
        shape, classes, eps_value = CIFAR10_SHAPE, 10, args.eps
        x, y = random_batch(args.batch, CIFAR10_SHAPE)
        model = CNN7_Shi(in_shape=CIFAR10_SHAPE, width=args.width, n_classes=10)
        normalize = (CIFAR10_MEAN, CIFAR10_STD)
    else:
        shape, classes, eps_value = tuple(workload["input_shape"]), workload["classes"], float(workload["eps"])
        x, y = workload["x"], workload["y"]
        model = CNN7_Shi(in_shape=shape, width=workload["width"], linear_size=workload["linear_size"],
                         n_classes=classes)
        load_tensors(model, workload, "CTRAIN's CNN7_Shi")  # before the wrapper converts it
        normalize = workload["normalize"]
    wrapper = TAPSModelWrapper(model, input_shape=shape, eps=eps_value, num_epochs=1, block_sizes=BLOCK_SIZES,
                               device=device)
    if workload is None:
        ibp_init_shi(wrapper.original_model, wrapper.bounded_model)
    wrapper.train()
    bounded, original = wrapper.bounded_model, wrapper.original_model
    if normalize is None:  # raw [0, 1] pixels
        data, data_min, data_max, eps = x, 0.0, 1.0, torch.as_tensor(eps_value)
    else:
        mean, std = (torch.tensor(v).reshape(-1, 1, 1) for v in normalize)
        data, data_min, data_max = (x - mean) / std, (0 - mean) / std, (1 - mean) / std
        eps = torch.as_tensor(eps_value / std)
    ptb = PerturbationLpNorm(eps=eps, norm=np.inf, x_L=torch.clamp(data - eps, data_min, data_max),
                             x_U=torch.clamp(data + eps, data_min, data_max))
    info = {"name": "CTRAIN", "version": version("ctrain"), "torch": torch.__version__}
    reset = None
    if workload is not None:
        info.update(workload_info(workload, check_logits(wrapper, data, workload)))
        reset = snapshot(original, bounded, *bounded.bounded_blocks)
    criterion = torch.nn.CrossEntropyLoss(reduction="none")

    def natural():
        return criterion(bounded(data), y).mean()

    def ibp():
        bounded(data)
        return get_ibp_loss(hardened_model=bounded, ptb=ptb, data=data, target=y, n_classes=classes, criterion=criterion,
                            return_bounds=False, return_stats=True)[0]

    def taps(steps: int):
        def loss():
            bounded(data)
            return get_taps_loss(original_model=original, hardened_model=bounded, bounded_blocks=bounded.bounded_blocks,
                                 criterion=criterion, data=data, target=y, n_classes=classes, ptb=ptb, device=device,
                                 pgd_steps=steps, pgd_restarts=1, pgd_step_size=max(0.2, 2 / steps),
                                 pgd_decay_factor=0.1, pgd_decay_checkpoints=(math.ceil(0.7 * steps),) if steps >= 20
                                 else (), gradient_link_thresh=0.5, gradient_link_tolerance=1e-5,
                                 gradient_expansion_alpha=5, propagation="IBP", return_stats=True)[0]
        return loss

    losses = {"natural": natural, "ibp": ibp}
    steps = {}
    for name in method_names(args.methods, args.steps):
        loss_fn = taps(int(name.removeprefix("taps_steps"))) if name.startswith("taps_steps") else losses[name]
        steps[name] = full_step(original.parameters(), wrapper.optimizer, loss_fn)
    serve(replies, steps, info, reset)


def check_logits(wrapper, data, workload) -> dict[str, float]:
    """The eval-mode logits on the workload's (normalised) images of the bounded model and of its
    two bounded blocks in a row, checked against the reference, and the wrapped model's (not
    checked: no step reads its running statistics); the modes are put back after."""
    import torch

    bounded, blocks = wrapper.bounded_model, wrapper.bounded_model.bounded_blocks
    modules = [wrapper.original_model, bounded, *blocks]
    modes = [module.training for module in modules]
    for module in modules:
        module.eval()
    with torch.no_grad():
        differences = {
            "bounded_model": logit_difference(bounded(data), workload, "CTRAIN's bounded model"),
            "bounded_blocks": logit_difference(blocks[1](blocks[0](data)), workload, "CTRAIN's bounded blocks"),
            "original_model (not checked)": float((wrapper.original_model(data) - workload["reference_logits"])
                                                  .abs().max()),
        }
    for module, mode in zip(modules, modes):
        module.train(mode)
    return differences


if __name__ == "__main__":
    main()
