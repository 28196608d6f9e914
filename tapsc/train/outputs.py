"""Output paths checked before any work: a command that will write into a folder makes
sure it can, before it loads data, models or checkpoints, so an unwritable `--out`
costs a second, not a training run or a certification. Torch-free.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tapsc.errors import Diagnostic, TapscError


def _unwritable(path: Path, reason: str, flag: str | None, what: str = "to") -> TapscError:
    where = f"choose a writable folder with `{flag}`" if flag else "check the folder's permissions"
    return TapscError(Diagnostic(code="unwritable-output", message=f"cannot write {what} {path}: {reason}",
                                 help=where))


def ensure_writable_folder(folder: Path, flag: str | None = "--out", what: str = "to") -> Path:
    """Check that ``folder`` exists or can be made, and that a file can be written in it.

    Folders this check creates are removed again (the command makes them when it writes),
    so a refused command leaves nothing behind. ``flag`` names the option that chose the
    folder, for the help line; ``what`` names the folder in the message ("the run directory").

    Raises:
        TapscError: ``unwritable-output``, saying why (a file in the way, permissions,
            a read-only file system).
    """
    folder = Path(folder)
    existing, missing = folder, []
    while not existing.exists() and not existing.is_symlink():
        missing.append(existing)
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        reason = "it is a file, not a folder" if existing == folder else f"{existing} is a file, not a folder"
        raise _unwritable(folder, reason, flag, what)
    created: list[Path] = []
    try:
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".tapsc-write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise _unwritable(folder, error.strerror or str(error), flag, what) from None
    finally:
        for path in reversed(created):
            try:
                path.rmdir()
            except OSError:
                pass
    return folder


def ensure_writable_file(path: Path, flag: str | None = "--out") -> Path:
    """Check that the file ``path`` can be written: not a folder, and its folder writable.

    Raises:
        TapscError: ``unwritable-output``.
    """
    path = Path(path)
    if path.is_dir():
        raise _unwritable(path, "it is a folder; give a file name", flag)
    ensure_writable_folder(path.parent, flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise _unwritable(path, "the file is read-only", flag)
    return path
