"""The scenarios run inside cells on Python 3.6 to 3.13: each real interpreter must compile them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bnmatrix.host import find_interpreter
from tests.conftest import SCENARIOS, require

pytestmark = pytest.mark.e2e  # needs every cell Python (3.6 to 3.13) on this host


@pytest.mark.parametrize("python", [f"3.{minor}" for minor in range(6, 14)])
def test_scenarios_compile_on_every_cell_python(python: str) -> None:
    interpreter, looked = find_interpreter(python)
    require(interpreter is not None, f"no Python {python} here (looked in {', '.join(looked)})")
    assert interpreter is not None
    scripts = sorted(str(p) for p in SCENARIOS.glob("*.py"))
    assert len(scripts) >= 5
    code = "import sys\nfor p in sys.argv[1:]:\n    compile(open(p).read(), p, 'exec')\n"
    done = subprocess.run([str(interpreter.path), "-c", code, *scripts], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_scenario_help_runs_without_tensorflow(tmp_path: Path) -> None:
    interpreter, _ = find_interpreter("3.6")
    require(interpreter is not None, "no Python 3.6 here")
    assert interpreter is not None
    done = subprocess.run([str(interpreter.path), str(SCENARIOS / "layers_bn_session.py"), "--help"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "--steps" in done.stdout
