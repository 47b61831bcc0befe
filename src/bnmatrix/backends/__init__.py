"""What every backend offers the runner: open a cell's environment, run a scenario in it, clean up.

The runner never asks which backend it holds; a backend signals a cell it cannot serve with
`CellNotRun` and an environment it could not build with `CellSetupError`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from bnmatrix.config import Matrix, Scenario, base_image_script
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


RESULT_MARKER = b"BNMATRIX_RESULT "
MAX_RESULT_BYTES = 1 << 20  # a result line longer than this is refused, not read
LOG_HEAD_BYTES = 8 << 20  # the log keeps this much of the output's start, then its tail
TAIL_BYTES = 64 << 10


class OutputCapture:
    """Streams a scenario's output into its log, keeping in memory only the result line and tails.

    A scenario that prints 200 MB costs a bounded amount of memory and of log: the first
    LOG_HEAD_BYTES, a note of what was left out, and the last TAIL_BYTES.
    """

    def __init__(self, log: BinaryIO):
        self.log = log
        self.logged = 0
        self.omitted = 0
        self.result_line: bytes | None = None
        self.result_too_long = False
        self._tails: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._omitted_tail = bytearray()
        self._line = bytearray()
        self._state = "undecided"  # of stdout's current line: undecided, result, long, other
        self._lock = threading.Lock()

    def feed(self, chunk: bytes, stream: str) -> None:
        with self._lock:
            room = max(0, LOG_HEAD_BYTES - self.logged)
            self.log.write(chunk[:room])
            self.logged += min(room, len(chunk))
            if len(chunk) > room:
                self.omitted += len(chunk) - room
                self._omitted_tail = _bounded(self._omitted_tail + chunk[room:], TAIL_BYTES)
            self._tails[stream] = _bounded(self._tails[stream] + chunk, TAIL_BYTES)
            if stream == "stdout":
                self._scan(chunk)

    def _scan(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            self._take(chunk[start:] if end < 0 else chunk[start:end])
            if end < 0:
                return
            self._end_line()
            start = end + 1

    def _take(self, piece: bytes) -> None:
        if self._state in ("other", "long") or not piece:
            return
        self._line += piece
        if self._state == "undecided":
            if len(self._line) >= len(RESULT_MARKER):
                self._state = "result" if self._line.startswith(RESULT_MARKER) else "other"
            elif not RESULT_MARKER.startswith(bytes(self._line)):
                self._state = "other"
        if self._state == "other":
            self._line.clear()
        elif self._state == "result" and len(self._line) > MAX_RESULT_BYTES:
            self._state = "long"
            self._line.clear()

    def _end_line(self) -> None:
        if self._state == "result":  # the last result line counts
            self.result_line, self.result_too_long = bytes(self._line[len(RESULT_MARKER):]), False
        elif self._state == "long":
            self.result_line, self.result_too_long = None, True
        self._line.clear()
        self._state = "undecided"

    def finish(self) -> None:
        """The output ended: take an unterminated last line, and close the log with its tail."""
        with self._lock:
            self._end_line()
            if self.omitted:
                self.log.write(f"\n[bnmatrix: {self.omitted} bytes of output left out here; the last "
                               f"{len(self._omitted_tail)} follow]\n".encode())
                self.log.write(bytes(self._omitted_tail))
            self.log.flush()

    def tail(self, stream: str, lines: int) -> str:
        text = bytes(self._tails[stream]).decode("utf-8", "replace")
        return "\n".join(text.rstrip().splitlines()[-lines:])


def _bounded(buffer: bytearray, size: int) -> bytearray:
    return buffer if len(buffer) <= size else buffer[-size:]


@dataclass(frozen=True)
class ScenarioRun:
    """What one scenario process left behind: its result line (if any), the ends of its output, its end."""

    result_line: bytes | None
    result_too_long: bool
    stderr_tail: str
    returncode: int | None
    timed_out: bool
    duration_s: float

    @classmethod
    def from_capture(cls, capture: OutputCapture, returncode: int | None, timed_out: bool,
                     duration_s: float) -> ScenarioRun:
        return cls(capture.result_line, capture.result_too_long, capture.tail("stderr", 40), returncode, timed_out,
                   round(duration_s, 3))


class CellSession(Protocol):
    environment: dict[str, Any]

    def run(self, scenario: Scenario, args: list[str], timeout_s: float, log: Path) -> ScenarioRun:
        """Run `scenario`'s script with `args`, streaming its output to `log`."""
        ...


class Backend(Protocol):
    name: str

    def serves(self, cell: Cell) -> str | None:
        """Why this host cannot run `cell` with this backend (no such Python, no GPU), or None when it can."""
        ...

    def open(self, cell: Cell, setup_log: Path, report_step: StepReporter) -> AbstractContextManager[CellSession]:
        """Prepare the cell's environment (reusing a cached one) and yield a session to run scenarios."""
        ...

    def close(self) -> None:
        """Stop whatever still runs (Ctrl-C) and release what the backend holds; safe to call twice."""
        ...


def select_backend(name: str, matrix: Matrix, run_id: str, cache_dir: Path, rebuild: bool = False,
                   images: Sequence[str] = (), sweep: bool = True) -> tuple[Backend, str]:
    """The backend for --backend NAME and one line saying which and why.

    auto takes Docker when a daemon answers (DOCKER_HOST honoured) and can obtain the cells' base `images`
    (on this host, or from a registry it reaches); the venv backend otherwise. `sweep`: remove what dead runs
    left on the daemon (a run does; `plan` only looks).
    """
    from bnmatrix.backends.venv import VenvBackend

    if name in ("auto", "docker"):
        from bnmatrix.backends.docker import DockerBackend, connect, unobtainable  # docker-py takes 0.1 s to import

        client, about = connect(matrix.timeout_s)
        missing, reason = unobtainable(client, images) if client is not None and name == "auto" else ([], "")
        if client is not None and not missing:
            backend = DockerBackend(client, matrix.container, run_id, matrix.scenario_dirs, rebuild=rebuild,
                                    scenario_timeout_s=matrix.timeout_s, sweep=sweep)
            return backend, f"docker backend: {about} answered ({'chosen' if name == 'docker' else 'auto'})"
        if name == "docker":
            raise BnMatrixError(f"--backend docker: no Docker daemon answered ({about}); start one, set "
                                "DOCKER_HOST, or use --backend venv")
        if client is not None:
            client.close()
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            why = (f"venv backend (auto: {about} answered, but it has no {shown} and cannot pull: {reason}; "
                   f"build local bases with {base_image_script()}, or map images with --image-map, to use Docker)")
        else:
            why = f"venv backend (auto: no Docker daemon answered: {about})"
    else:
        why = "venv backend (chosen)"
    return VenvBackend(cache_dir, run_id, rebuild), f"{why}; one virtualenv per cell in {cache_dir}"
