"""The training loop: the spec's phases, eps schedule, optimizer, milestones,
clipping and L1, with a checkpoint at every epoch end. It emits events
(``tapsc.train.events``) and knows nothing of how they are shown.

Determinism (what makes ``--resume`` repeat an uninterrupted run exactly on CPU):
every epoch reseeds torch, numpy and random from (seed, epoch), and shuffles with a
``torch.Generator`` seeded the same way. Everything an epoch depends on besides that
-- weights, BatchNorm statistics, optimizer and lr-scheduler state -- is in the
checkpoint, so restarting at the epoch after the last checkpoint replays the rest.

Several processes (``tapsc.train.distributed``; torchrun or ``--nproc-per-node``): data
parallel. Every rank holds the whole network, takes ``data.batch / world_size`` samples
of each global batch from a ``DistributedSampler`` (reseeded per epoch), and the
gradients are averaged over the ranks before clipping and the optimizer step, so the
weights stay identical everywhere. Rank 0 alone measures the selection metrics, writes
checkpoints, metrics and results and emits events; BatchNorm running statistics are
averaged over the ranks at every epoch end, so the checkpoint is the state of every
rank and resuming replays the rest as on one process. Random streams are seeded from
(seed, epoch, rank): rank 0 draws what a single process draws.

Shape legend: B batch, K classes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from tapsc.data.loading import first
from tapsc.errors import Diagnostic, TapscError
from tapsc.language import ir
from tapsc.train import distributed, rundir
from tapsc.train.events import (
    BatchEnded,
    Emit,
    EpochEnded,
    EpochStarted,
    Note,
    RunFinished,
    RunStarted,
    ignore,
)
from tapsc.train.lr_schedule import learning_rate
from tapsc.train.outputs import ensure_writable_folder
from tapsc.train.runtime import resolve_device, restore_rng_states, rng_states, seed_everything

EPOCH_EVAL_CAP = 1000  # samples evaluated per epoch for model selection (keeps epochs cheap)
EPOCH_METRICS = ("natural", "ibp")  # measured every epoch, with the selection metric
PROBE_EVERY = 4  # the running TAPS accuracy looks at every 4th batch (or fewer: PROBES_PER_EPOCH) ...
PROBES_PER_EPOCH = 32  # ... at most about this many per epoch (on an H100, 4th-batch probes of a
# CIFAR-10 epoch took 3.0 of 25.8 s of TAPS and 2.2 of 10.5 s of IBP training) ...
PROBE_SAMPLES = 32  # ... each at the batch's first 32 samples


@dataclass(frozen=True)
class RunOptions:
    """Run-level facts (never training knobs: those live in the spec)."""

    device: str = "auto"
    amp: bool = False
    tf32: bool = True  # TF32 matrix products in the training passes on CUDA (never in certification)
    attack_bf16: bool = True  # the training passes' attacks iterate in bf16 where the device has native bf16
    seed: int | None = None
    data_root: str | None = None
    workers: int | None = None  # DataLoader workers; None: 0 on CPU, 4 on CUDA

    def command_flags(self) -> list[str]:
        """These options as ``tapsc run`` flags, for the processes a launcher or a sweep starts."""
        flags = ["--device", self.device] + (["--amp"] if self.amp else []) + ([] if self.tf32 else ["--no-tf32"])
        flags += [] if self.attack_bf16 else ["--no-attack-bf16"]
        flags += ["--seed", str(self.seed)] if self.seed is not None else []
        return flags + (["--data-root", self.data_root] if self.data_root is not None else [])


def use_tf32(options: RunOptions, device: torch.device) -> bool:
    """Whether the training passes run their CUDA matrix products in TF32 (``--tf32``, the default)."""
    return options.tf32 and device.type == "cuda"


def attack_dtype_for(options: RunOptions, device: torch.device) -> torch.dtype | None:
    """The dtype the training passes' attacks iterate in (``--attack-bf16``, the default): bf16 where
    ``device`` multiplies it natively (``tapsc.precision.fast_attack_dtype``), else None (float32)."""
    from tapsc.precision import fast_attack_dtype

    return fast_attack_dtype(device) if options.attack_bf16 and not options.amp else None


class TrainingDiverged(TapscError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ---------------------------------------------------------------- setup helpers


def apply_options(spec: ir.Spec, options: RunOptions) -> ir.Spec:
    """The spec with ``--seed`` and ``--data-root`` applied (what ir.json records)."""
    if options.seed is not None:
        spec = spec.model_copy(update={"optimizer": spec.optimizer.model_copy(update={"seed": options.seed})})
    if options.data_root is not None:
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"root": options.data_root})})
    return spec


def phase_at(spec: ir.Spec, epoch: int) -> ir.Node:
    """The method phase that covers ``epoch`` (the first one listed, if several do)."""
    for phase in spec.method.phases:
        if phase.start <= epoch and (phase.end is None or epoch < phase.end):
            return phase
    raise TapscError(Diagnostic(code="no-phase", span=spec.method.span,
                                message=f"no method phase covers epoch {epoch}",
                                help="give the last phase no `end`, or cover every epoch"))


def make_optimizer(spec: ir.Spec, network: torch.nn.Module):
    """The optimizer and its lr scheduler (stepped once per epoch), which follows
    `tapsc.train.lr_schedule.learning_rate` exactly."""
    opt = spec.optimizer
    if opt.kind == "adam":
        optimizer = torch.optim.Adam(network.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    elif opt.kind == "adamw":
        optimizer = torch.optim.AdamW(network.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    else:
        optimizer = torch.optim.SGD(network.parameters(), lr=opt.lr, momentum=opt.momentum,
                                    weight_decay=opt.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: learning_rate(opt, epoch) / opt.lr)
    return optimizer, scheduler


def check_batch(spec: ir.Spec, world_size: int) -> None:
    """``data.batch`` is the global batch: it must split evenly over the processes.

    Raises:
        TapscError: it does not.
    """
    batch = spec.data.batch
    if batch % world_size:
        raise TapscError(Diagnostic(
            code="batch-not-divisible", span=spec.data.span,
            message=f"the global batch `data.batch {batch}` does not split evenly over {world_size} processes",
            help=f"make `data.batch` a multiple of {world_size}, e.g. "
                 f"`--set data.batch={max(world_size, batch // world_size * world_size)}`"))


# ---------------------------------------------------------------- the trainer


class Trainer:
    """One run: network, optimizer, data, history; ``fit`` trains to the last epoch."""

    def __init__(self, spec: ir.Spec, run_dir: Path, options: RunOptions, emit: Emit = ignore):
        self.spec, self.run_dir, self.options, self.emit = spec, Path(run_dir), options, emit
        self.context = distributed.current()
        # the TAPS and EXP-IBP losses multiply batch means: over several processes, those of the global batch
        self._global_mean = ((lambda values: distributed.mean_over_ranks(values, self.context))
                             if self.context.active else None)
        self.device = resolve_device(options.device)
        self.seed = spec.optimizer.seed
        self._check_batch()
        self._load_data()
        seed_everything(self.seed, -1)  # the same on every rank: identical initial weights
        from tapsc.compile import compile_network

        self.network = compile_network(spec).to(self.device)
        if spec.distributed.sync_batchnorm and self.context.active:
            distributed.sync_batchnorm(self.network)
        distributed.broadcast_module(self.network, self.context)  # guard against nondeterministic init
        self.optimizer, self.scheduler = make_optimizer(spec, self.network)
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None  # {"epoch", "value"} of best.pt

    def precision(self) -> str:
        """What the training passes compute in (evaluation is always full float32)."""
        if self.options.amp:
            return "bf16 autocast"
        base = "TF32 matmuls" if use_tf32(self.options, self.device) else "float32"
        return base + (", bf16 attack iterations" if attack_dtype_for(self.options, self.device) else "")

    def _check_batch(self) -> None:
        check_batch(self.spec, self.context.world_size)

    def _load_data(self) -> None:
        from tapsc.data import load_dataset, load_validation

        shape = tuple(self.spec.model.input_shape)
        self.train_set = load_dataset(self.spec.data, train=True, shape=shape)
        validation = load_validation(self.spec.data, shape=shape)
        self.selection_split = "validation" if validation is not None else "test"
        selection = validation if validation is not None else load_dataset(self.spec.data, False, shape=shape)
        self.selection_set = first(selection, EPOCH_EVAL_CAP)
        if len(self.train_set) == 0:
            raise TapscError(Diagnostic(code="empty-dataset", message="the training set is empty",
                                        span=self.spec.data.span))

    # ------------------------------------------------------------ checkpoints

    def state(self, epoch: int) -> dict[str, Any]:
        return rundir.training_state(self.network, self.optimizer, self.scheduler, epoch=epoch,
                                     metrics=self.history, best=self.best, seed=self.seed,
                                     world_size=self.context.world_size, rng=rng_states(),
                                     precision=self.precision())

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: the epoch after the one it holds."""
        rundir.restore_training_state(state, self.network, self.optimizer, self.scheduler)
        restore_rng_states(state["rng"])
        self.history = list(state["metrics"])
        self.best = state["best"]
        self.start_epoch = state["epoch"] + 1

    def _checkpoint(self, epoch: int, improved: bool) -> None:
        if not self.context.is_main:  # one writer: rank 0 holds the same state as every rank
            return
        state = self.state(epoch)
        if improved:  # best first: a kill between the two writes redoes this epoch identically
            rundir.save_checkpoint(rundir.checkpoint_path(self.run_dir, "best"), state)
        rundir.save_checkpoint(rundir.checkpoint_path(self.run_dir, "last"), state)
        rundir.write_metrics(self.run_dir, self.history)

    # ------------------------------------------------------------ training

    def fit(self) -> None:
        """Train from ``start_epoch`` to the last epoch, checkpointing every epoch."""
        from tapsc.precision import attack_precision, tf32_matmuls

        epochs = self.spec.optimizer.epochs
        self.emit(RunStarted(self.run_dir, str(self.device), epochs, self.start_epoch, len(self.train_set),
                             len(self.selection_set), self.selection_split, self.precision()))
        if self.selection_split == "test":
            self.emit(Note("model selection uses the test set (data.validation = 0); set "
                           "`data.validation` to hold out a validation split instead", warning=True))
        for epoch in range(self.start_epoch, epochs):
            started = time.perf_counter()
            with tf32_matmuls(use_tf32(self.options, self.device)), \
                    attack_precision(attack_dtype_for(self.options, self.device)):
                row = self.train_epoch(epoch)
            distributed.average_buffers(self.network, self.context)
            improved = False
            if self.context.is_main:  # the other ranks go on to the next epoch's first collective
                row.update(self.select_metrics())
                improved = self._update_best(epoch, row)
            row["seconds"] = round(time.perf_counter() - started, 3)
            self.history.append(row)
            self.scheduler.step()
            self._checkpoint(epoch, improved)
            self.emit(EpochEnded(epoch, epochs, row, improved, row["seconds"]))

    def _loader(self, epoch: int) -> DataLoader:
        workers = self.options.workers
        if workers is None:
            workers = 4 if self.device.type == "cuda" else 0
        pin = self.device.type == "cuda"
        if self.context.active:
            from torch.utils.data.distributed import DistributedSampler

            # every rank draws the same permutation (seed + epoch) and takes its slice; padded
            # to equal lengths, so every rank runs the same number of equally sized batches
            sampler = DistributedSampler(self.train_set, num_replicas=self.context.world_size,
                                         rank=self.context.rank, shuffle=True, seed=self.seed)
            sampler.set_epoch(epoch)
            return DataLoader(self.train_set, batch_size=self.spec.data.batch // self.context.world_size,
                              sampler=sampler, num_workers=workers, pin_memory=pin)
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
        return DataLoader(self.train_set, batch_size=self.spec.data.batch, shuffle=True, generator=generator,
                          num_workers=workers, pin_memory=pin)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch of the phase covering it; returns the epoch's training row."""
        from tapsc.method import eps_at

        seed_everything(self.seed, epoch, self.context.rank)
        phase = phase_at(self.spec, epoch)
        loader = self._loader(epoch)
        batches = len(loader)
        lr = self.optimizer.param_groups[0]["lr"]
        self.emit(EpochStarted(epoch, self.spec.optimizer.epochs, phase.kind, batches, lr))
        pert = self.spec.perturbation
        target = pert.train_eps if pert.train_eps is not None else pert.eps
        sums: dict[str, float] = {}
        tally = {"correct": 0, "seen": 0, "robust": 0, "probed": 0}
        eps = 0.0
        probe_every = max(PROBE_EVERY, batches // PROBES_PER_EPOCH)
        # Where the epoch's time goes. No extra device sync for it: on CUDA the step's queued
        # backward is charged to whatever waits for the device next (the probe or next step).
        parts = dict.fromkeys(("data", "step", "probe", "display"), 0.0)
        started = mark = time.perf_counter()
        self.network.train()
        for batch, (x_B, y_B) in enumerate(loader):
            x_B, y_B = x_B.to(self.device, non_blocking=True), y_B.to(self.device, non_blocking=True)
            mark = _lap(parts, "data", mark)
            eps = float(eps_at(pert.schedule, target, epoch, batch, batches))
            loss, terms = self.step(phase, x_B, y_B, eps, target, epoch, batch)
            tally["correct"] += int(terms.pop("nat_correct"))
            tally["seen"] += int(terms.pop("count"))
            terms.pop("loss", None)
            for name, value in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0.0) + value
            mark = _lap(parts, "step", mark)
            robust = self._probe_robust(phase, x_B, y_B, eps, batch, tally, probe_every)
            mark = _lap(parts, "probe", mark)
            rate = (batch + 1) / max(time.perf_counter() - started, 1e-9)
            self.emit(BatchEnded(epoch, batch, batches, phase.kind, eps, loss, terms,
                                 tally["correct"] / max(tally["seen"], 1), robust, rate))
            mark = _lap(parts, "display", mark)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_seconds = time.perf_counter() - started  # the training passes alone, before any evaluation
        sums, tally = self._over_ranks(sums, tally)
        means = {name: value / batches for name, value in sums.items()}
        row = {"epoch": epoch, "phase": phase.kind, "eps": eps, "lr": lr, "train_loss": means.pop("loss"),
               "train_terms": means, "train_natural": tally["correct"] / max(tally["seen"], 1),
               "train_seconds": round(train_seconds, 3),
               "train_part_seconds": {name: round(value, 3) for name, value in parts.items()}}
        if tally["probed"]:
            row["train_taps"] = tally["robust"] / tally["probed"]
        return row

    def _over_ranks(self, sums: dict[str, float], tally: dict[str, int]):
        """The epoch's loss sums averaged and its counts summed over the ranks (one collective)."""
        if not self.context.active:
            return sums, tally
        packed = {f"sum:{k}": v for k, v in sums.items()} | {f"count:{k}": v for k, v in tally.items()}
        total = distributed.sum_values(packed, self.context, self.device)
        world = self.context.world_size
        return ({k: total[f"sum:{k}"] / world for k in sums}, {k: round(total[f"count:{k}"]) for k in tally})

    def _probe_robust(self, phase, x_B, y_B, eps: float, batch: int, tally: dict[str, int],
                      probe_every: int = PROBE_EVERY) -> float | None:
        """Running TAPS accuracy at the current eps, measured on a few samples of every
        ``probe_every``-th batch (a full measurement would cost as much as the training step)."""
        if not type(phase).robust or eps == 0:
            return None
        if batch % probe_every == 0:
            from tapsc import margins

            x_P, y_P = x_B[:PROBE_SAMPLES], y_B[:PROBE_SAMPLES]
            tally["robust"] += int(margins.robust("taps", self.network, x_P, y_P, self.spec, eps).sum())
            tally["probed"] += len(y_P)
        return tally["robust"] / tally["probed"] if tally["probed"] else None

    def step(self, phase, x_B, y_B, eps: float, target: float, epoch: int, batch: int) -> tuple[float, dict]:
        """One optimisation step; raises TrainingDiverged on a NaN or infinite loss."""
        from tapsc.method import phase_loss

        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.options.amp):
            loss, terms = phase_loss(self.network, phase, x_B, y_B, eps, target, l1=self.spec.optimizer.l1,
                                     global_mean=self._global_mean)
        value = float(loss.detach())
        terms = {name: float(v) for name, v in terms.items()}
        finite = math.isfinite(value) and all(math.isfinite(v) for v in terms.values())
        if not self.context.active:
            if not finite:
                raise self._diverged(epoch, batch, value, terms)
            loss.backward()
        else:
            if finite:
                loss.backward()
            # the flags ride in the gradient all-reduce: a NaN on one rank stops every rank at once
            flags = torch.zeros(self.context.world_size)
            flags[self.context.rank] = 0.0 if finite else 1.0
            bad = distributed.all_reduce_gradients(self.network.parameters(), self.context, flags)
            if not finite or bool(bad.any()):
                ranks = [r for r, flag in enumerate(bad.tolist()) if flag]
                raise self._diverged(epoch, batch, value, terms, ranks if finite else None)
        if self.spec.optimizer.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.spec.optimizer.clip)
        self.optimizer.step()
        return value, terms

    def _diverged(self, epoch: int, batch: int, value: float, terms: dict[str, float],
                  ranks: list[int] | None = None) -> TrainingDiverged:
        bad = [name for name, v in terms.items() if not math.isfinite(v)]
        what = f"loss term `{bad[0]}` = {terms[bad[0]]}" if bad else f"the loss = {value}"
        if ranks:
            what = f"the loss on rank(s) {', '.join(map(str, ranks))}"
        last = rundir.checkpoint_path(self.run_dir, "last")
        kept = (f"the last good checkpoint is {last} (epoch {epoch - 1})" if last.exists()
                else "no epoch had finished, so there is no checkpoint")
        return TrainingDiverged(Diagnostic(
            code="loss-not-finite",
            message=f"training stopped at epoch {epoch}, batch {batch}: {what} is not finite",
            help=f"{kept}; lower `optimizer.lr`, enable `optimizer.clip`, or slow the eps ramp"))

    # ------------------------------------------------------------ selection

    def select_metrics(self) -> dict[str, Any]:
        """Per-epoch metrics on the selection split (bounded sample count)."""
        from tapsc.evaluate import evaluate

        metrics = tuple(dict.fromkeys((*EPOCH_METRICS, self.spec.eval.select)))
        results = evaluate(self.network, self.selection_set, self.spec, metrics, device=self.device)
        return {name: results["metrics"][name] for name in metrics}

    def _update_best(self, epoch: int, row: dict[str, Any]) -> bool:
        # ">=": on a tie the later epoch, trained longer at full eps, wins
        value = row[self.spec.eval.select]
        if self.best is None or value >= self.best["value"]:
            self.best = {"epoch": epoch, "value": value, "metric": self.spec.eval.select}
            return True
        return False


def _lap(parts: dict[str, float], name: str, since: float) -> float:
    """Add the seconds since ``since`` to ``parts[name]``; return now."""
    now = time.perf_counter()
    parts[name] += now - since
    return now


# ---------------------------------------------------------------- entry points


def final_evaluation(trainer: Trainer, train_seconds: float) -> dict[str, Any]:
    """Evaluate the best checkpoint on the test set; write results.json."""
    from tapsc.data import load_dataset
    from tapsc.evaluate import evaluate

    spec = trainer.spec
    best = rundir.checkpoint_path(trainer.run_dir, "best")
    which = "best" if best.is_file() else "last"
    trainer.network.load_state_dict(rundir.read_checkpoint(rundir.checkpoint_path(trainer.run_dir, which))["model"])
    test_set = first(load_dataset(spec.data, train=False, shape=tuple(spec.model.input_shape)), spec.eval.samples)
    results = evaluate(trainer.network, test_set, spec, spec.eval.metrics, device=trainer.device,
                       emit=trainer.emit, split="test")
    results.update({
        "checkpoint": which,
        "best": trainer.best,
        "selected_on": trainer.selection_split,
        "train_seconds": round(train_seconds, 3),
        "epochs": spec.optimizer.epochs,
    })
    if trainer.selection_split == "test":
        results["note"] = "the checkpoint was selected on the test set (data.validation = 0): a leak"
    rundir.write_json(trainer.run_dir / rundir.RESULTS, results)
    return results


def _train_and_evaluate(trainer: Trainer) -> dict[str, Any]:
    """Train, then (rank 0 alone) evaluate; other ranks return an empty dict."""
    started = time.perf_counter()
    if trainer.start_epoch < trainer.spec.optimizer.epochs:  # a finished run resumed: evaluation only
        trainer.fit()
    if not trainer.context.is_main:
        return {}
    previous = sum(row.get("seconds", 0.0) for row in trainer.history[:trainer.start_epoch])
    results = final_evaluation(trainer, time.perf_counter() - started + previous)
    trainer.emit(RunFinished(trainer.run_dir, results))
    return results


def start_run(spec: ir.Spec, spec_text: str, run_dir: Path, options: RunOptions = RunOptions(),
              emit: Emit = ignore) -> dict[str, Any]:
    """Train ``spec`` in a new run directory, then evaluate it.

    Args:
        spec: the checked spec (overrides already applied).
        spec_text: the spec file's text, stored as given.
        run_dir: the folder to create (it must not hold a run already).
        options: device, seed, data root, mixed precision.
        emit: receives the run's events.

    Returns:
        The final results (what results.json holds).

    Raises:
        TapscError: bad device, missing data, unwritable folder, a diverged loss.
    """
    spec = apply_options(spec, options)
    device = resolve_device(options.device)
    if distributed.current().is_main:
        ensure_writable_folder(run_dir, what="the run directory")  # before the data is loaded
    trainer = Trainer(spec, run_dir, options, emit)  # loads data: fail before making the folder

    def create() -> None:
        rundir.create(run_dir, spec, spec_text)
        rundir.write_json(Path(run_dir) / rundir.ENV, environment(device, trainer.context))

    distributed.main_first(create, trainer.context)
    return _train_and_evaluate(trainer)


def environment(device: torch.device, context: distributed.Context) -> dict[str, Any]:
    """What env.json records: rundir.environment plus the process layout."""
    env = rundir.environment(device)
    if context.active:
        env["distributed"] = {"world_size": context.world_size, "backend": context.backend,
                              "local_world_size": _int_env("LOCAL_WORLD_SIZE"), "nodes": _int_env("GROUP_WORLD_SIZE")}
    return env


def _int_env(name: str) -> int | None:
    import os

    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def resume_run(run_dir: Path, options: RunOptions = RunOptions(), emit: Emit = ignore) -> dict[str, Any]:
    """Continue a stopped run from its last checkpoint (or from scratch if no epoch finished).

    ``options.seed`` must be None (the run's seed is in its ir.json); ``options.data_root``
    may point at the data on this machine. Everything about the folder is checked before
    the data is loaded: a run whose epochs are recorded but whose ``checkpoints/last.pt`` is
    gone is an error; a finished run with results.json is reported finished and left as it
    is; metrics.jsonl is rewritten from the checkpoint (a last line cut short is repaired).

    Raises:
        TapscError: ``seed-on-resume``, ``missing-checkpoint``, an unwritable folder, and
            whatever a run raises.
    """
    if options.seed is not None:
        raise TapscError(Diagnostic(code="seed-on-resume", message="`--seed` cannot change a run being resumed",
                                    help="drop `--seed`; the run keeps the seed in its ir.json"))
    context = distributed.current()
    # rank 0 reads the run and sends it: ranks on other machines need not see its folder
    spec = distributed.main_first(lambda: apply_options(rundir.read_spec(run_dir), options), context)
    state, finished = distributed.main_first(lambda: rundir.resume_state(run_dir, spec, emit), context)
    epochs = spec.optimizer.epochs
    results_path = Path(run_dir) / rundir.RESULTS
    if finished and context.is_main and results_path.is_file():
        emit(Note(f"{run_dir} is finished: all {epochs} epochs are trained and evaluated ({rundir.RESULTS}); "
                  "nothing to resume"))
        import json

        return json.loads(results_path.read_text())
    if finished:
        emit(Note(f"{run_dir} trained all {epochs} epochs but has no {rundir.RESULTS}: evaluating it"))
    trainer = Trainer(spec, run_dir, options, emit)
    if state is not None:
        _note_world_size(state, trainer)
        _note_precision(state, trainer)
        trainer.restore(state)
    if finished:
        pass
    elif trainer.start_epoch:
        emit(Note(f"resuming {run_dir} at epoch {trainer.start_epoch}"))
    else:
        emit(Note(f"{run_dir} has no checkpoint yet: starting it from epoch 0"))
    return _train_and_evaluate(trainer)


def _note_precision(state: dict[str, Any], trainer: Trainer) -> None:
    """Warn when the run resumes in another precision than it was checkpointed in (another flag,
    or another machine: the bf16 attack follows the CPU)."""
    before, now = state.get("precision"), trainer.precision()
    if before is not None and before != now:
        trainer.emit(Note(f"the run was trained in {before} and resumes in {now}: it will not repeat an "
                          "uninterrupted run exactly; resume with the flags it started with (`--amp`, "
                          "`--no-tf32`, `--no-attack-bf16`) on the same kind of machine to repeat it",
                          warning=True))


def _note_world_size(state: dict[str, Any], trainer: Trainer) -> None:
    if state.get("world_size", 1) != trainer.context.world_size:
        trainer.emit(Note(f"the run was checkpointed with {state.get('world_size', 1)} process(es) and resumes with "
                          f"{trainer.context.world_size}: the data order changes, so it will not repeat an "
                          "uninterrupted run exactly", warning=True))
