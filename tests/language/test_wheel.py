"""The grammar ships inside the wheel: build it, install it into a folder, parse a spec."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent


@pytest.mark.slow
def test_parse_a_spec_from_the_installed_wheel(tmp_path: Path):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels)], check=True, capture_output=True)
    (wheel,) = wheels.glob("tapsc-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    assert (target / "tapsc" / "grammar" / "taps.lark").is_file()
    assert (target / "tapsc" / "library" / "cnn7.taps").is_file()
    # The target goes first on sys.path so it wins over the development (editable) install.
    code = (f"import sys; sys.path.insert(0, {str(target)!r}); "
            "import tapsc.language.syntax as s, tapsc.language.spec as p; "
            f"spec = p.load_spec({str(ROOT / 'specs' / 'cnn7_cifar_8.taps')!r}); "
            "print(s.__file__); print(len(spec.model.layers))")
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(target)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    module_file, layers = result.stdout.split()
    assert module_file.startswith(str(target)) and layers == "20"
