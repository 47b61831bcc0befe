"""What every backend offers the runner: open a cell's environment, run a scenario in it, clean up.

The runner never asks which backend it holds; a backend signals a cell it cannot serve with
`CellNotRun` and an environment it could not build with `CellSetupError`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bnmatrix.config import Matrix
from bnmatrix.errors import BnMatrixError
from bnmatrix.plan import Cell

StepReporter = Callable[[str], None]


class CellNotRun(Exception):
    """The host cannot serve this cell (no such Python, no GPU): recorded as `not-run` with the reason."""


class CellSetupError(Exception):
    """The cell's environment could not be built (an install or build failed); carries the log."""

    def __init__(self, reason: str, log: str):
        super().__init__(reason)
        self.log = log


@dataclass(frozen=True)
class ScenarioRun:
    """What one scenario process left behind."""

    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    duration_s: float


class CellSession(Protocol):
    environment: dict[str, Any]

    def run(self, script: Path, args: list[str], timeout_s: float) -> ScenarioRun: ...


class Backend(Protocol):
    name: str

    def open(self, cell: Cell, setup_log: Path, report_step: StepReporter) -> AbstractContextManager[CellSession]:
        """Prepare the cell's environment (reusing a cached one) and yield a session to run scenarios."""
        ...

    def close(self) -> None:
        """Stop whatever still runs (Ctrl-C) and release what the backend holds; safe to call twice."""
        ...


def select_backend(name: str, matrix: Matrix, run_id: str, cache_dir: Path) -> tuple[Backend, str]:
    """The backend for --backend NAME and one line saying which and why.

    auto takes Docker when a daemon answers (DOCKER_HOST honoured), the venv backend otherwise.
    """
    from bnmatrix.backends.docker import DockerBackend, connect
    from bnmatrix.backends.venv import VenvBackend

    if name in ("auto", "docker"):
        client, about = connect()
        if client is not None:
            backend = DockerBackend(client, matrix.container, run_id, matrix.scenario_dir)
            return backend, f"docker backend: {about} answered ({'chosen' if name == 'docker' else 'auto'})"
        if name == "docker":
            raise BnMatrixError(f"--backend docker: no Docker daemon answered ({about}); start one, set "
                                "DOCKER_HOST, or use --backend venv")
        why = f"venv backend (auto: no Docker daemon answered: {about})"
    else:
        why = "venv backend (chosen)"
    return VenvBackend(cache_dir), f"{why}; one virtualenv per cell in {cache_dir}"
