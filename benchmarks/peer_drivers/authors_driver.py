"""The authors' side of the peer comparison (eth-sri/TAPS, run from its folder with its environment's python).

CNN7 is their ``cnn_7layer_bn`` for CIFAR-10 (normalisation as the network's first layer,
``init="fast"``: Shi's), converted by ``Sequential.from_concrete_network(..., disconnect=True)``
and wrapped by ``BoxModelWrapper`` with block sizes [17, 4] (Linear-BN1d-ReLU-Linear, one ReLU,
in the classifier), as ``mix_train.py`` does. Its arguments are ``args_factory.get_args()`` with
``scripts/train_cifar``'s TAPS 8/255 values. Each step is the body of ``mix_train.train_loop``
at the target eps (no Shi regulariser there): ``common_step`` (the clean forward, then IBP or
TAPS; natural: the clean loss alone), ``reset_bounds``, backward, clipping at 10, Adam on
every parameter but the normalisation's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import CIFAR10_SHAPE, arguments, claim_stdout, full_step, method_names, serve


def authors_args(authors_dir: Path, eps: float, batch: int):
    """``args_factory.get_args()`` on scripts/train_cifar's TAPS command line (CIFAR-10 8/255)."""
    from args_factory import get_args

    argv = sys.argv
    sys.argv = ["mix_train.py", "--dataset", "cifar10", "--fast-reg", "--init", "fast", "--net", "cnn_7layer_bn",
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

    targs = authors_args(authors_dir, args.eps, args.batch)
    device = "cpu"
    # get_network("cnn_7layer_bn", "cifar10", device, init="fast"), with the width as an argument
    normalize = Normalization(CIFAR10_SHAPE, [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])
    net = cnn_7layer_bn(normalize, 3, 32, width=args.width, num_class=10).to(device)
    ibp_fast_init(net)
    net = abs_layers.Sequential.from_concrete_network(net, CIFAR10_SHAPE, disconnect=True)
    wrapper = BoxModelWrapper(net, torch.nn.CrossEntropyLoss(), CIFAR10_SHAPE, device, targs, targs.block_sizes,
                              min_eps_pgd=targs.min_eps_pgd)
    wrapper.detach_ibp, wrapper.current_pgd_weight, wrapper.store_box_bounds = False, targs.pgd_weight_start, True
    parameters = set(wrapper.net.parameters()) - set(wrapper.net[0].parameters())  # as mix_train: no normalisation
    optimizer = torch.optim.Adam(parameters, lr=targs.lr)
    x, y = random_batch(args.batch, CIFAR10_SHAPE)
    wrapper.net.train()

    def natural():
        wrapper._set_BN(wrapper.all_BNs, update_stat=True)
        return wrapper.Get_Performance(x, y)[0]

    def certified(steps: int | None):
        def loss():
            (value, _, _), _ = wrapper.common_step(x, y, args.eps, steps or targs.train_steps, steps is None)
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
    serve(replies, steps, {"name": "authors (eth-sri/TAPS)", "version": "6b5c5d9", "torch": torch.__version__})


if __name__ == "__main__":
    main()
