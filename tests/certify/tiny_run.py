"""A run directory holding a small digits network trained in a few seconds (plain CE), shared
by the certify/export/merge CLI tests."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from tapsc.compile import compile_network
from tapsc.data import load_dataset
from tapsc.language.spec import load_spec_text
from tapsc.train import rundir

SPEC = """\
data digits { batch 64; test_subset 40 }
model { input (1, 8, 8); conv(4, kernel = 3, padding = 1); batchnorm; relu; maxpool(kernel = 2)
        flatten; linear(24); relu; linear(10) }
perturbation linf { eps 0.02 }
method { phase natural }
optimizer adam { lr 1e-2; epochs 1 }
eval { attack pgd(steps = 8, restarts = 1, margin); batch 16 }
export { samples 30; timeout 2000 }
"""


MLP_SPEC = SPEC.replace("""conv(4, kernel = 3, padding = 1); batchnorm; relu; maxpool(kernel = 2)
        flatten; linear(24); relu; linear(10)""", "flatten; linear(12); relu; linear(10)")


MERGE_EPS = 0.05  # the radius test_merge_checked and test_verify certify the tiny run at


def make_run(folder: Path, text: str = SPEC) -> Path:
    """``folder`` made a run directory with a best checkpoint (150 Adam steps of cross-entropy)."""
    spec = load_spec_text(text)
    torch.manual_seed(0)
    network = compile_network(spec)
    train = load_dataset(spec.data, train=True, shape=(1, 8, 8))
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.tensor([train[i][1] for i in range(len(train))])
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    for _ in range(150):
        rows = torch.randint(0, len(y), (64,))
        loss = F.cross_entropy(network(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rundir.create(folder, spec, text)
    rundir.save_checkpoint(rundir.checkpoint_path(folder, "best"), {"model": network.state_dict()})
    return folder


def at_merge_eps(text: str) -> str:
    """A tiny spec whose perturbation.eps is `MERGE_EPS` (certify.json holds the spec's eps)."""
    assert "eps 0.02 }" in text
    return text.replace("eps 0.02 }", f"eps {MERGE_EPS} }}")


def make_tool(folder: Path, plan: dict[int, str], prepare: str, run: str) -> Path:
    """A fake VNN-COMP tool folder: the scripts ``prepare`` and ``run`` (their text), and
    ``plan/prop_<index>`` holding what the tool answers for that sample's property."""
    (folder / "plan").mkdir(parents=True)
    for name, text in (("prepare_instance.sh", prepare), ("run_instance.sh", run)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    for index, text in plan.items():
        (folder / "plan" / f"prop_{index}").write_text(text)
    return folder


def witness(values, outputs=()) -> str:
    """A VNN-COMP ``sat`` answer with the witness X (and, optionally, Y) values."""
    xs = " ".join(f"(X_{i} {float(v)!r})" for i, v in enumerate(values))
    ys = " ".join(f"(Y_{j} {float(v)!r})" for j, v in enumerate(outputs))
    return f"sat\n({xs} {ys})\n"


def attack_witness(run: Path, index: int, eps: float = MERGE_EPS) -> str:
    """tapsc's own counterexample for sample ``index``: a strong PGD point of the box, as a
    VNN-COMP ``sat`` answer."""
    from tapsc.certify.attack import pgd_counterexamples
    from tapsc.language import ir

    spec, network = rundir.load_run(run, "best")
    x, label = load_dataset(spec.data, train=False, shape=(1, 8, 8))[index]
    torch.manual_seed(0)
    found, point, _ = pgd_counterexamples(network, torch.as_tensor(x)[None].float(), torch.tensor([label]), eps,
                                          ir.InputAttack(steps=50, restarts=3, loss="margin"))
    assert bool(found[0])
    with torch.no_grad():
        outputs = network(point)[0]
    return witness(point[0].reshape(-1).tolist(), outputs.tolist())
