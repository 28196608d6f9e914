"""The authors' side of the peer comparison (eth-sri/TAPS, run from its folder with its environment's python).

CNN7 is their ``cnn_7layer_bn`` for CIFAR-10 (normalisation as the network's first layer,
``init="fast"``: Shi's), converted by ``Sequential.from_concrete_network(..., disconnect=True)``
and wrapped by ``BoxModelWrapper`` with block sizes [17, 4] (Linear-BN1d-ReLU-Linear, one ReLU,
in the classifier), as ``mix_train.py`` does. Its arguments are ``args_factory.get_args()`` with
``scripts/train_cifar``'s TAPS 8/255 values. Each step is the body of ``mix_train.train_loop``
at the target eps (no Shi regulariser there): ``common_step`` (the clean forward, then IBP or
TAPS; natural: the clean loss alone), ``reset_bounds``, backward, clipping at 10, Adam on
every parameter but the normalisation's.

With ``--workload-file`` (the trained workload, protocol.py): ``cnn_7layer_bn`` for the file's
input shape, width and classes, its ``Normalization`` the file's mean and std (mean 0, std 1
when the spec has none: raw pixels), the trained tensors copied into the concrete network
(no Shi init) before ``from_concrete_network`` copies it into the abstract one, whose
eval-mode logits are checked (it is what is trained), and the file's images, labels and eps
(in pixel space, as the authors' code takes it). ``get_args`` gets ``--dataset mnist`` for a
one-channel shape (nothing in a step reads it). Every step starts from the trained tensors.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import (
    CIFAR10_SHAPE,
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


def authors_args(authors_dir: Path, eps: float, batch: int, dataset: str = "cifar10"):
    """``args_factory.get_args()`` on scripts/train_cifar's TAPS command line (CIFAR-10 8/255)."""
    from args_factory import get_args

    argv = sys.argv
    sys.argv = ["mix_train.py", "--dataset", dataset, "--fast-reg", "--init", "fast", "--net", "cnn_7layer_bn",
                "--cert-weight", "1", "--lr", "0.0005", "--L2-reg", "0", "--train-eps", str(eps), "--train-steps", "20",
                "--test-steps", "20", "--train-batch", str(batch), "--test-batch", str(batch), "--pgd-weight-start", "1",
                "--pgd-weight-end", "1", "--grad-clip", "10", "--soft-thre", "0.5", "--min-eps-pgd", "0",
                "--reg-lambda", "0.5", "--alpha-box", "5", "--block-sizes", "17", "4"]
    try:
        return get_args()
    finally:
        sys.argv = argv


def main() -> None:
    replies = claim_stdout()
    args = arguments(__doc__.split("\n")[0],
                     lambda p: p.add_argument("--authors-dir", type=Path, required=True, help="eth-sri/TAPS checkout"))
    authors_dir = args.authors_dir.resolve()
    sys.path.insert(0, str(authors_dir))
    os.chdir(authors_dir)
    import AIDomains.abstract_layers as abs_layers
    import torch
    from PARC_networks import Normalization, cnn_7layer_bn, ibp_fast_init
    from torch_model_wrapper import BoxModelWrapper

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from measure import random_batch

    device = "cpu"
    workload = read_workload(args.workload_file) if args.workload_file else None
    if workload is None:
        shape, eps, x, y = CIFAR10_SHAPE, args.eps, *random_batch(args.batch, CIFAR10_SHAPE)
        targs = authors_args(authors_dir, eps, args.batch)
        # get_network("cnn_7layer_bn", "cifar10", device, init="fast"), with the width as an argument
        normalize = Normalization(CIFAR10_SHAPE, [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])
        net = cnn_7layer_bn(normalize, 3, 32, width=args.width, num_class=10).to(device)
        ibp_fast_init(net)
    else:
        shape, eps, x, y = tuple(workload["input_shape"]), float(workload["eps"]), workload["x"], workload["y"]
        targs = authors_args(authors_dir, eps, int(x.shape[0]), "mnist" if shape[0] == 1 else "cifar10")
        mean, std = workload["normalize"] or ([0.0] * shape[0], [1.0] * shape[0])
        net = cnn_7layer_bn(Normalization(shape, list(mean), list(std)), shape[0], shape[1], width=workload["width"],
                            linear_size=workload["linear_size"], num_class=workload["classes"]).to(device)
        load_tensors(net[1:], workload, "the authors' cnn_7layer_bn")  # net[0]: the Normalization
    net = abs_layers.Sequential.from_concrete_network(net, shape, disconnect=True)
    wrapper = BoxModelWrapper(net, torch.nn.CrossEntropyLoss(), shape, device, targs, targs.block_sizes,
                              min_eps_pgd=targs.min_eps_pgd)
    wrapper.detach_ibp, wrapper.current_pgd_weight, wrapper.store_box_bounds = False, targs.pgd_weight_start, True
    parameters = set(wrapper.net.parameters()) - set(wrapper.net[0].parameters())  # as mix_train: no normalisation
    optimizer = torch.optim.Adam(parameters, lr=targs.lr)
    info = {"name": "authors (eth-sri/TAPS)", "version": "6b5c5d9", "torch": torch.__version__}
    reset = None
    if workload is not None:
        wrapper.net.eval()
        with torch.no_grad():
            difference = logit_difference(wrapper.net(x), workload, "the authors' abstract network")
        info.update(workload_info(workload, {"abstract network": difference}))
        reset = snapshot(wrapper.net)
    wrapper.net.train()

    def natural():
        wrapper._set_BN(wrapper.all_BNs, update_stat=True)
        return wrapper.Get_Performance(x, y)[0]

    def certified(steps: int | None):
        def loss():
            (value, _, _), _ = wrapper.common_step(x, y, eps, steps or targs.train_steps, steps is None)
            wrapper.net.reset_bounds()
            return value
        return loss

    steps = {}
    for name in method_names(args.methods, args.steps):
        if name == "natural":
            loss_fn = natural
        else:
            loss_fn = certified(None if name == "ibp" else int(name.removeprefix("taps_steps")))
        steps[name] = full_step(wrapper.net.parameters(), optimizer, loss_fn)
    serve(replies, steps, info, reset)


if __name__ == "__main__":
    main()
