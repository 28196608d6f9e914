"""Complete verifiers that ``tapsc verify`` drives, one registry entry per kind.

``--verifier`` is ``neuralsat`` (default), ``marabou`` or ``vnncomp:PATH``; `resolve`
turns it into a `Driver`: the commands per instance (``tapsc.certify.instances`` runs
them), the tool's name (the ``source`` of the verdicts it decides), version and settings
(recorded in certify.json), and what the export must do for it (``pool_as_conv``).

- ``vnncomp:PATH``: any folder following the VNN-COMP tool interface,
  ``prepare_instance.sh v1 CATEGORY ONNX VNNLIB`` then ``run_instance.sh v1 CATEGORY ONNX
  VNNLIB RESULT TIMEOUT``;
- ``marabou``: maraboupy in tapsc's own environment, through the small runner
  ``python -m tapsc.certify.marabou_runner`` (same timeout and kill machinery);
- ``neuralsat``: NeuralSAT in its own virtual environment (it installs a top-level
  package named ``src`` and pins onnx); `setup_neuralsat` creates one.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tapsc.certify.instances import Commands, Job
from tapsc.errors import Diagnostic, TapscError

CATEGORY = "tapsc"  # the VNN-COMP benchmark category passed to a tool's scripts
NEURALSAT_PACKAGES = ("torch==2.14.1", "torchvision==0.29.1", "neuralsat")
MARABOU_PACKAGE = "maraboupy==2.0.0"
# Marabou 2.0.0 answered unsat on a quickstart sample whose PGD counterexample onnxruntime
# replays (sample 63, eps 0.1): by default a few falsified samples go along as canaries
MARABOU_CANARIES = 2


def default_neuralsat_env() -> Path:
    return Path.home() / ".cache" / "tapsc" / "neuralsat"


@dataclass
class Driver(Commands):
    """A verifier ready to run: commands, and what certify.json records about it."""

    kind: str
    name: str
    version: str
    settings: dict = field(default_factory=dict)
    pool_as_conv: bool = False
    canaries: int = 0  # falsified samples handed over by default, to catch a wrong unsat
    cwd: Path | None = None
    prepare_argv: Callable[[Job], list[str] | None] = lambda job: None
    run_argv: Callable[[Job, Path, float], list[str]] = lambda job, result, timeout: []

    def prepare(self, job: Job) -> list[str] | None:
        return self.prepare_argv(job)

    def run(self, job: Job, result_file: Path, timeout: float) -> list[str]:
        return self.run_argv(job, result_file, timeout)

    def record(self) -> dict:
        return {"verifier": self.kind, "tool": self.name, "version": self.version, **self.settings}


# ---------------------------------------------------------------- vnncomp:PATH


def vnncomp_tool(folder: str, env: Path | None) -> Driver:
    """A folder with prepare_instance.sh and run_instance.sh (the VNN-COMP tool interface)."""
    path = Path(folder).expanduser()
    scripts = {name: path / name for name in ("prepare_instance.sh", "run_instance.sh")}
    missing = [name for name, script in scripts.items() if not script.is_file()]
    if not path.is_dir() or missing:
        raise TapscError(Diagnostic(code="bad-verifier", message=f"{path} is not a VNN-COMP tool folder"
                                    + (f": no {', '.join(missing)}" if path.is_dir() else " (no such folder)"),
                                    help="give `--verifier vnncomp:DIR` with DIR holding prepare_instance.sh and "
                                         "run_instance.sh (VNN-COMP's tool interface)"))
    not_executable = [name for name, script in scripts.items() if not os.access(script, os.X_OK)]
    if not_executable:
        raise TapscError(Diagnostic(code="bad-verifier", message=f"{', '.join(not_executable)} in {path} "
                                    "is not executable", help=f"chmod +x {path}/*.sh"))
    prepare, run = str(scripts["prepare_instance.sh"].resolve()), str(scripts["run_instance.sh"].resolve())
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in path.resolve().name) or "verifier"
    version = _git_version(path)
    return Driver("vnncomp", name, version, {"folder": str(path.resolve()), "category": CATEGORY},
                  prepare_argv=lambda job: [prepare, "v1", CATEGORY, str(job.onnx), str(job.vnnlib)],
                  run_argv=lambda job, result, timeout: [run, "v1", CATEGORY, str(job.onnx), str(job.vnnlib),
                                                         str(result), _seconds(timeout)])


def _git_version(path: Path) -> str:
    """The tool folder's git commit when it is a checkout, else ``unknown``."""
    try:
        done = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"git {done.stdout.strip()}" if done.returncode == 0 else "unknown"


def _seconds(timeout: float) -> str:
    return str(int(timeout)) if float(timeout).is_integer() else f"{timeout:g}"


# ---------------------------------------------------------------- marabou


def marabou(argument: str, env: Path | None) -> Driver:
    """Marabou through maraboupy in this environment; AveragePool goes out as Conv."""
    try:
        version = importlib.metadata.version("maraboupy")
    except importlib.metadata.PackageNotFoundError:
        raise TapscError(Diagnostic(code="verifier-not-set-up", message="maraboupy is not installed in "
                                    f"tapsc's environment ({sys.prefix})",
                                    help=f"pip install {MARABOU_PACKAGE}")) from None
    python = sys.executable
    return Driver("marabou", "marabou", version, {"python": python, "runner": "tapsc.certify.marabou_runner"},
                  pool_as_conv=True, canaries=MARABOU_CANARIES,
                  run_argv=lambda job, result, timeout: [python, "-m", "tapsc.certify.marabou_runner", str(job.onnx),
                                                         str(job.vnnlib), str(result), _seconds(timeout)])


# ---------------------------------------------------------------- neuralsat


def neuralsat(argument: str, env: Path | None) -> Driver:
    """NeuralSAT's main.py in its own venv (``env``, default ~/.cache/tapsc/neuralsat)."""
    venv = Path(env).expanduser() if env is not None else default_neuralsat_env()
    python, main = venv / "bin" / "python", _neuralsat_main(venv)
    if not python.is_file() or main is None:
        flag = "" if env is None else f" --verifier-env {venv}"
        raise TapscError(Diagnostic(
            code="verifier-not-set-up",
            message=f"NeuralSAT is not set up at {venv}" + ("" if python.is_file() else " (no virtual environment)"),
            help=f"run `tapsc verify --setup neuralsat{flag}` (creates that venv with `pip install "
                 f"{' '.join(NEURALSAT_PACKAGES)}`, about 70 s, needs the package index), or point "
                 "`--verifier-env PATH` at an existing venv where neuralsat is installed"))
    version = _dist_version(main.parent.parent, "neuralsat")
    return Driver("neuralsat", "neuralsat", version, {"env": str(venv), "device": "cpu"}, cwd=main.parent,
                  run_argv=lambda job, result, timeout: [str(python), str(main), "--net", str(job.onnx), "--spec",
                                                         str(job.vnnlib), "--device", "cpu", "--timeout",
                                                         _seconds(timeout), "--result_file", str(result),
                                                         "--export_cex"])


def _neuralsat_main(venv: Path) -> Path | None:
    found = sorted(venv.glob("lib/python*/site-packages/src/main.py"))
    return found[-1] if found else None


def _dist_version(site_packages: Path, name: str) -> str:
    found = sorted(site_packages.glob(f"{name}-*.dist-info"))
    return found[-1].name.removeprefix(f"{name}-").removesuffix(".dist-info") if found else "unknown"


def setup_neuralsat(env: Path | None, say: Callable[[str], None]) -> Path:
    """Create the NeuralSAT venv at ``env`` (default ~/.cache/tapsc/neuralsat); returns its path.

    Raises:
        TapscError: the venv or the pip install fails (the last lines of pip's output).
    """
    venv = Path(env).expanduser() if env is not None else default_neuralsat_env()
    steps = [([sys.executable, "-m", "venv", str(venv)], f"creating {venv}"),
             ([str(venv / "bin" / "python"), "-m", "pip", "install", *NEURALSAT_PACKAGES],
              f"pip install {' '.join(NEURALSAT_PACKAGES)} (about 70 s)")]
    for argv, what in steps:
        say(what)
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
            raise TapscError(Diagnostic(code="verifier-setup-failed", message=f"{what} failed: {tail}",
                                        help="check that the package index is reachable, or create the venv "
                                             "by hand and pass `--verifier-env PATH`"))
    if _neuralsat_main(venv) is None:
        raise TapscError(Diagnostic(code="verifier-setup-failed", message=f"no src/main.py in {venv} after pip",
                                    help="the neuralsat package changed its layout; report it"))
    return venv


# ---------------------------------------------------------------- the registry


DRIVERS: dict[str, Callable[[str, Path | None], Driver]] = {
    "neuralsat": neuralsat,
    "marabou": marabou,
    "vnncomp": vnncomp_tool,
}
SETUPS = {"neuralsat": setup_neuralsat}


def resolve(text: str, env: Path | None = None) -> Driver:
    """The driver for ``--verifier TEXT`` (``neuralsat``, ``marabou``, ``vnncomp:PATH``).

    Raises:
        TapscError: an unknown kind, or a verifier that is not installed or not a tool folder.
    """
    kind, _, argument = text.partition(":")
    if kind not in DRIVERS or (kind == "vnncomp") != bool(argument):
        raise TapscError(Diagnostic(code="unknown-verifier", message=f"`--verifier {text}` names no verifier",
                                    help="use neuralsat, marabou, or vnncomp:DIR (a folder with VNN-COMP's "
                                         "prepare_instance.sh and run_instance.sh)"))
    return DRIVERS[kind](argument, env)
