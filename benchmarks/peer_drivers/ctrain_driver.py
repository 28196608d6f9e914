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
    method_names,
    serve,
)

BLOCK_SIZES = (16, 4)  # CNN7_Shi has 20 modules; the last 4 hold one ReLU


def main() -> None:
    replies = claim_stdout()
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
    model = CNN7_Shi(in_shape=CIFAR10_SHAPE, width=args.width, n_classes=10)
    wrapper = TAPSModelWrapper(model, input_shape=CIFAR10_SHAPE, eps=args.eps, num_epochs=1, block_sizes=BLOCK_SIZES,
                               device=device)
    ibp_init_shi(wrapper.original_model, wrapper.bounded_model)
    wrapper.train()
    bounded, original = wrapper.bounded_model, wrapper.original_model
    x, y = random_batch(args.batch, CIFAR10_SHAPE)
    mean, std = (torch.tensor(v).reshape(-1, 1, 1) for v in (CIFAR10_MEAN, CIFAR10_STD))
    data, data_min, data_max = (x - mean) / std, (0 - mean) / std, (1 - mean) / std
    eps = torch.as_tensor(args.eps / std)
    ptb = PerturbationLpNorm(eps=eps, norm=np.inf, x_L=torch.clamp(data - eps, data_min, data_max),
                             x_U=torch.clamp(data + eps, data_min, data_max))
    criterion = torch.nn.CrossEntropyLoss(reduction="none")

    def natural():
        return criterion(bounded(data), y).mean()

    def ibp():
        bounded(data)
        return get_ibp_loss(hardened_model=bounded, ptb=ptb, data=data, target=y, n_classes=10, criterion=criterion,
                            return_bounds=False, return_stats=True)[0]

    def taps(steps: int):
        def loss():
            bounded(data)
            return get_taps_loss(original_model=original, hardened_model=bounded, bounded_blocks=bounded.bounded_blocks,
                                 criterion=criterion, data=data, target=y, n_classes=10, ptb=ptb, device=device,
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
    from importlib.metadata import version

    serve(replies, steps, {"name": "CTRAIN", "version": version("ctrain"), "torch": torch.__version__})


if __name__ == "__main__":
    main()
