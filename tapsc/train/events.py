"""What the training loop reports, as plain data. The runner emits these; the CLI
(``tapsc.train.display``) renders them with rich or as a plain log; tests collect them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class RunStarted:
    run_dir: Path
    device: str
    epochs: int
    start_epoch: int  # > 0 when resuming
    train_size: int
    selection_size: int
    selection_split: str  # "validation" or "test"
    precision: str  # of the training passes: "bf16 autocast", "TF32 matmuls" or "float32", then
    # ", bf16 attack iterations" where the CPU has native bf16 (Trainer.precision)


@dataclass(frozen=True)
class EpochStarted:
    epoch: int
    epochs: int
    phase: str
    batches: int
    lr: float


@dataclass(frozen=True)
class BatchEnded:
    epoch: int
    batch: int  # 0-based index of the batch just finished
    batches: int
    phase: str
    eps: float
    loss: float
    terms: dict[str, float]
    natural_acc: float  # running over the epoch so far
    robust_acc: float | None  # running TAPS (or the phase's) accuracy, None when not measured
    rate: float  # batches per second over the epoch so far


@dataclass(frozen=True)
class EpochEnded:
    epoch: int
    epochs: int
    metrics: dict[str, Any]  # the row written to metrics.jsonl
    best: bool  # this epoch became the best checkpoint
    seconds: float


@dataclass(frozen=True)
class EvalStarted:
    split: str
    samples: int
    metrics: tuple[str, ...]


@dataclass(frozen=True)
class EvalProgress:
    metric: str
    done: int
    total: int


@dataclass(frozen=True)
class EvalEnded:
    split: str
    results: dict[str, Any]


@dataclass(frozen=True)
class Note:
    """A sentence for the user (a warning when ``warning``)."""

    text: str
    warning: bool = False


@dataclass(frozen=True)
class RunFinished:
    run_dir: Path
    results: dict[str, Any] = field(default_factory=dict)


Event = RunStarted | EpochStarted | BatchEnded | EpochEnded | EvalStarted | EvalProgress | EvalEnded | Note | RunFinished
Emit = Callable[[Event], None]


def ignore(event: Event) -> None:
    """An ``Emit`` that drops every event."""
