"""Two Gloo ranks, each with half of a batch, end a step with the gradient one process
computes on the whole batch: the manual all-reduce covers every traversal of the
network (clean forward, IBP, the latent attack), the TAPS product is taken of the global
batch means, and synchronised BatchNorm uses the global batch's
statistics with gradients flowing across ranks. Checked for 1-d (linear) and 2-d (conv)
BatchNorm."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from dist_helpers import DIST_SPEC

from tapsc.language.spec import load_spec_text
from tapsc.train import distributed

EPS = 0.05
CONV_SPEC = DIST_SPEC.replace(
    "model { input (1, 8, 8); flatten; linear(32); batchnorm; relu; linear(32); relu; linear(10) }",
    "model { input (1, 8, 8); conv(4, kernel = 3, padding = 1); batchnorm; relu; flatten; linear(32); relu; "
    "linear(10) }")
# TAPS with no ReLU in the classifier: the latent attack ends on the box corner whatever its
# random start, so one process and two ranks see the same estimates and only the product
# L_TAPS x L_IBP (of the GLOBAL batch means, w = 5 here) decides whether the gradients agree.
TAPS_SPEC = DIST_SPEC.replace("split relus_in_classifier = 1", "split relus_in_classifier = 0").replace(
    "phase taps { attack pgd(steps = 3, multi) }", "phase taps { attack pgd(steps = 3, multi); weight 5 }")
SPECS = {"linear": DIST_SPEC, "conv": CONV_SPEC, "taps": TAPS_SPEC}
EPOCHS = {"linear": 1, "conv": 1, "taps": 2}  # IBP (at eps = eps_target the Shi weight is 0), TAPS


def _loss(spec_text, network, x, y, epoch=1, global_mean=None):
    from tapsc.method import phase_loss
    from tapsc.train.run import phase_at

    phase = phase_at(load_spec_text(spec_text), epoch)
    loss, _ = phase_loss(network, phase, x, y, EPS, EPS, global_mean=global_mean)
    return loss


def _network_and_batch(spec_text):
    from tapsc.compile import compile_network

    torch.manual_seed(0)
    network = compile_network(load_spec_text(spec_text)).train()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    return network, x, y


def _state(network) -> dict:
    grads = {n: p.grad for n, p in network.named_parameters()}
    return {"grads": grads, "buffers": dict(network.named_buffers())}


def _rank(rank: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    context = distributed.Context(rank=rank, world_size=2, backend="gloo")
    distributed._current = context  # what init_from_env sets in a worker
    states = {}
    for name, text in SPECS.items():
        network, x, y = _network_and_batch(text)
        assert distributed.sync_batchnorm(network) == 1
        half = slice(8 * rank, 8 * rank + 8)
        # the trainer's reduction: the TAPS loss multiplies means of the global batch
        _loss(text, network, x[half], y[half], EPOCHS[name],
              global_mean=lambda values: distributed.mean_over_ranks(values, context)).backward()
        distributed.all_reduce_gradients(network.parameters(), context)
        distributed.average_buffers(network, context)
        states[name] = _state(network)
    if rank == 0:
        torch.save(states, f"{folder}/rank0.pt")
    dist.destroy_process_group()


@pytest.fixture
def one_thread():
    """One thread, as in each rank; restored after (later tests in this process compare
    runs across processes bit for bit, which needs the default thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_ranks_with_sync_batchnorm_match_one_process(tmp_path, one_thread):
    mp.spawn(_rank, args=(distributed.free_port(), str(tmp_path)), nprocs=2, join=True)
    shared = torch.load(tmp_path / "rank0.pt", weights_only=False)
    for kind, text in SPECS.items():
        network, x, y = _network_and_batch(text)
        _loss(text, network, x, y, EPOCHS[kind]).backward()
        one = _state(network)
        # float32 sums in another order: tolerance relative to the network's gradient scale
        # (a bias before BatchNorm has a true gradient of 0 and only rounding noise)
        scale = max(grad.abs().max().item() for grad in one["grads"].values())
        for name, grad in one["grads"].items():
            assert torch.allclose(shared[kind]["grads"][name], grad, rtol=1e-4, atol=1e-5 * scale), (kind, name)
        # running statistics: the global batch's, as one process computes them
        for name in one["buffers"]:
            assert torch.allclose(shared[kind]["buffers"][name].float(), one["buffers"][name].float(),
                                  rtol=1e-4, atol=1e-6), (kind, name)
