"""The run directory: one folder per run, everything needed to resume, evaluate and
certify it.

    <run>/spec.taps              the spec as given (its text, before overrides)
    <run>/ir.json                the canonical IR the run uses (overrides and seed applied)
    <run>/env.json               versions, device, git commit, command line
    <run>/metrics.jsonl          one JSON object per finished epoch
    <run>/checkpoints/last.pt    written atomically at every epoch end
    <run>/checkpoints/best.pt    the best epoch by ``eval.select``
    <run>/results.json           the final evaluation

Checkpoint files are written to a temporary file in the same folder, fsynced, then
renamed over the old one, so a kill at any moment leaves either the old or the new
checkpoint, never half of one. The model state is a plain ``network.state_dict()``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from tapsc.errors import Diagnostic, TapscError
from tapsc.language import ir
from tapsc.train.events import Emit, Note
from tapsc.train.outputs import ensure_writable_folder

SPEC = "spec.taps"
IR = "ir.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
CHECKPOINTS = "checkpoints"


def checkpoint_path(run_dir: Path, which: str = "last") -> Path:
    """``<run>/checkpoints/<which>.pt``; ``which`` is "last" or "best"."""
    return Path(run_dir) / CHECKPOINTS / f"{which}.pt"


def resolve_checkpoint(run_dir: Path, which: str = "best") -> Path:
    """The checkpoint file ``load_run`` reads: "best" falls back to "last" before a best one exists."""
    path = checkpoint_path(run_dir, which)
    return checkpoint_path(run_dir, "last") if which == "best" and not path.is_file() else path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, lambda handle: handle.write(text.encode()))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temporary file, fsync, rename)."""
    atomic_write_bytes(path, lambda handle: torch.save(state, handle))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``.

    Raises:
        TapscError: the file is missing or is not a tapsc checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise TapscError(Diagnostic(code="missing-checkpoint", message=f"no checkpoint at {path}",
                                    help="the run may have stopped before its first epoch ended"))
    try:
        # Checkpoints hold RNG states and metric dicts beside tensors: not weights-only.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise TapscError(Diagnostic(code="bad-checkpoint", message=f"cannot read checkpoint {path}: {error}",
                                    help="restore it from a copy, or use the other checkpoint")) from None
    if not isinstance(state, dict) or "model" not in state:
        raise TapscError(Diagnostic(code="bad-checkpoint", message=f"{path} is not a tapsc checkpoint"))
    return state


def create(run_dir: Path, spec: ir.Spec, spec_text: str) -> Path:
    """Make a fresh run directory holding the spec text and its canonical IR.

    Raises:
        TapscError: the folder cannot be written, or already holds a run.
    """
    run_dir = Path(run_dir)
    if (run_dir / IR).exists():
        raise TapscError(Diagnostic(code="run-exists", message=f"{run_dir} already holds a run",
                                    help=f"resume it with `tapsc run --resume {run_dir}`, "
                                         "or choose another `--out`"))
    try:
        (run_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / SPEC, spec_text)
        atomic_write_text(run_dir / IR, spec.model_dump_json(indent=2) + "\n")
    except OSError as error:
        raise TapscError(Diagnostic(code="unwritable-output", message=f"cannot write the run directory "
                                    f"{run_dir}: {error.strerror or error}",
                                    help="choose a writable folder with `--out`")) from None
    return run_dir


# Settings an older tapsc wrote into ir.json and that no longer exist, each with the value that
# meant "nothing set": a run directory keeps loading after the setting goes, as long as it had
# that value (a non-default value is a real difference, and the IR check reports it).
REMOVED_SETTINGS = {("data", "test_batch"): None}  # never read by any stage; `eval.batch` is the one


def upgrade_ir(document: dict) -> dict:
    """``document`` (a parsed ir.json) without the REMOVED_SETTINGS that hold their no-op value."""
    for (section, key), inert in REMOVED_SETTINGS.items():
        part = document.get(section)
        if isinstance(part, dict) and key in part and part[key] == inert:
            document = {**document, section: {k: v for k, v in part.items() if k != key}}
    return document


def read_spec(run_dir: Path) -> ir.Spec:
    """The canonical IR of a run.

    Raises:
        TapscError: the folder is not a run directory.
    """
    path = Path(run_dir) / IR
    if not path.is_file():
        raise TapscError(Diagnostic(code="not-a-run", message=f"{run_dir} is not a tapsc run directory "
                                    f"(no {IR})", help="pass the folder `tapsc run` created"))
    try:
        document = json.loads(path.read_text())
        return ir.Spec.model_validate(upgrade_ir(document) if isinstance(document, dict) else document)
    except ValueError as error:
        raise TapscError(Diagnostic(code="bad-run", message=f"{path} is not a valid IR: "
                                    f"{str(error).splitlines()[0]}")) from None


def read_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The epochs recorded in metrics.jsonl, and what was dropped (None when nothing was).

    A last line cut short (a kill or a full disk while the file was written by an older
    tapsc or copied) is dropped; a bad line before the last is a ``bad-metrics`` error.

    Raises:
        TapscError: ``bad-metrics`` for a broken line that is not the last.
    """
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return [], None
    lines = [(number, line) for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
             if line.strip()]
    rows: list[dict[str, Any]] = []
    for position, (number, line) in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            if position == len(lines) - 1:
                return rows, f"line {number} of {path} was cut short ({len(line)} characters) and is ignored"
            raise TapscError(Diagnostic(code="bad-metrics", message=f"{path}:{number} is not a JSON object",
                                        help="the file is one JSON object per line, as `tapsc run` writes it"))
        rows.append(row)
    return rows, None


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl from the checkpoint's history (one line per epoch)."""
    atomic_write_text(Path(run_dir) / METRICS, "".join(json.dumps(row) + "\n" for row in history))


def write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device and git commit, for env.json."""
    import torchvision

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "argv": sys.argv,
        "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def load_run(run_dir: Path, which: str = "best", device: str | torch.device = "cpu"):
    """The spec and trained network of a run, in eval mode.

    Args:
        run_dir: a folder made by ``tapsc run``.
        which: "best" (by ``eval.select``) or "last"; "best" falls back to "last"
            when no best checkpoint was written yet.
        device: where to put the network.

    Returns:
        ``(spec, network)``.

    Raises:
        TapscError: not a run directory, or no readable checkpoint.
    """
    from tapsc.compile import compile_network

    spec = read_spec(run_dir)
    state = read_checkpoint(resolve_checkpoint(run_dir, which))
    network = compile_network(spec)
    network.load_state_dict(state["model"])
    return spec, network.to(device).eval()


# ---------------------------------------------------------------- the training state


CHECKPOINT_FORMAT = 1


def training_state(network: torch.nn.Module, optimizer, scheduler, *, epoch: int, metrics: list[dict[str, Any]],
                   best: dict[str, Any] | None, seed: int, world_size: int, rng: dict[str, Any],
                   precision: str | None = None) -> dict[str, Any]:
    """Everything a run needs to continue after epoch ``epoch`` exactly: what a checkpoint holds
    (``precision``: what the training passes computed in, as the run's header says)."""
    return {"format": CHECKPOINT_FORMAT, "model": network.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": rng, "metrics": metrics, "best": best,
            "seed": seed, "world_size": world_size, "precision": precision}


def restore_training_state(state: dict[str, Any], network: torch.nn.Module, optimizer, scheduler) -> None:
    """Load a checkpoint's weights, optimizer and scheduler state (the caller restores the rest)."""
    network.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])


def resume_state(run_dir: Path, spec: ir.Spec, emit: Emit) -> tuple[dict[str, Any] | None, bool]:
    """Rank 0, before any data is loaded: (the last checkpoint or None, whether every epoch
    is trained). Drops half-written checkpoint files and repairs metrics.jsonl.

    Raises:
        TapscError: the folder is not writable, or epochs are recorded but their checkpoint is gone.
    """
    run_dir = Path(run_dir)
    ensure_writable_folder(run_dir, flag=None, what="the run directory")
    folder = run_dir / CHECKPOINTS
    for stale in folder.glob(".*.tmp"):  # a write the kill cut short
        stale.unlink(missing_ok=True)
    recorded, dropped = read_metrics(run_dir)
    last = checkpoint_path(run_dir, "last")
    if not last.is_file():
        if recorded:
            what = "folder" if not folder.is_dir() else "last.pt"
            raise TapscError(Diagnostic(
                code="missing-checkpoint",
                message=f"{run_dir} records {len(recorded)} finished epoch(s) in {METRICS}, but its "
                        f"checkpoint {what} is gone ({last})",
                help=f"restore {CHECKPOINTS}/ from a copy, or start again with `tapsc run {run_dir}/"
                     f"{SPEC} --out NEW_DIR` (the spec as given; add the `--set`s of ir.json)"))
        folder.mkdir(exist_ok=True)
        if dropped is not None:
            write_metrics(run_dir, [])
            emit(Note(f"{dropped}", warning=True))
        return None, False
    state = read_checkpoint(last)
    if dropped is not None or len(recorded) != len(state["metrics"]):
        write_metrics(run_dir, list(state["metrics"]))
        detail = dropped or f"{METRICS} held {len(recorded)} epoch(s), the checkpoint {len(state['metrics'])}"
        emit(Note(f"repaired {METRICS} from the checkpoint: {detail}", warning=True))
    return state, state["epoch"] + 1 >= spec.optimizer.epochs
