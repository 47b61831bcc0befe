"""What every backend offers the runner: open a cell's environment, run a scenario in it, clean up; and the
registry of backends: each module of this package registers its kind (how it opens on a host, and how a cell
it ran is reproduced without bnmatrix), so that a new backend is one file.

The runner never asks which backend it holds; a backend signals a cell it cannot serve with
`CellNotRun` and an environment it could not build with `CellSetupError`.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from packaging.requirements import Requirement

from bnmatrix.config import Matrix, Scenario
from bnmatrix.errors import BnMatrixError
from bnmatrix.gpu import CANNOT, Prediction, predict
from bnmatrix.host import Gpu
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
LAUNCH_MARKER = b"BNMATRIX_LAUNCH "  # the launcher's first line: how the scenario was started (bnmatrix_zygote.py)
MARKERS = {RESULT_MARKER: "result", LAUNCH_MARKER: "launch"}
MAX_RESULT_BYTES = 1 << 20  # a result line longer than this is refused, not read
LOG_HEAD_BYTES = 8 << 20  # the log keeps this much of the output's start, then its tail
TAIL_BYTES = 64 << 10


class OutputCapture:
    """Streams a scenario's output into its log, keeping in memory only the result line (the last), the launch line
    (the first) and tails.

    A scenario that prints 200 MB costs a bounded amount of memory and of log: the first
    LOG_HEAD_BYTES, a note of what was left out, and the last TAIL_BYTES.
    """

    def __init__(self, log: BinaryIO):
        self.log = log
        self.logged = 0
        self.omitted = 0
        self.result_line: bytes | None = None
        self.result_too_long = False
        self.launch: str | None = None
        self._tails: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._omitted_tail = bytearray()
        self._line = bytearray()
        self._state = "undecided"  # of stdout's current line: undecided, result, launch, long, other
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
            line = bytes(self._line)
            found = [kind for marker, kind in MARKERS.items() if line.startswith(marker)]
            if found:
                self._state = found[0]
            elif not any(marker.startswith(line) for marker in MARKERS):
                self._state = "other"
        if self._state == "other":
            self._line.clear()
        elif self._state in MARKERS.values() and len(self._line) > MAX_RESULT_BYTES:
            self._state = "long" if self._state == "result" else "other"
            self._line.clear()

    def _end_line(self) -> None:
        if self._state == "result":  # the last result line counts
            self.result_line, self.result_too_long = bytes(self._line[len(RESULT_MARKER):]), False
        elif self._state == "launch" and self.launch is None:  # the first launch line counts: the launcher's
            self.launch = bytes(self._line[len(LAUNCH_MARKER):]).decode("utf-8", "replace")[:2000]
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


ZYGOTE_SCRIPT = "bnmatrix_zygote.py"  # in the built-in scenario folder
ZYGOTE_START_S = 120.0  # the most a cell waits for its zygote's TensorFlow import (then its scenarios queue for it)
NO_ZYGOTE = "-"  # the launcher's socket argument in a cell without a zygote: every scenario a fresh process
ZYGOTE_LOG_BYTES = 1 << 20


def zygote_server(python: str, helper_folder: str, socket: str) -> list[str]:
    """The command that starts a cell's zygote (bnmatrix_zygote.py), serving at `socket`."""
    return [python, f"{helper_folder}/{ZYGOTE_SCRIPT}", "serve", socket]


def launcher(python: str, helper_folder: str, socket: str, script: str, args: list[str]) -> list[str]:
    """The command that runs a scenario through the cell's zygote at `socket` (bnmatrix_zygote.py), or as a fresh
    process where the zygote is not there or cannot fork it."""
    return [python, "-S", f"{helper_folder}/{ZYGOTE_SCRIPT}", "run", socket, script, *args]


class ZygoteOutput:
    """Follows a cell's zygote: its output (the TensorFlow import's warnings, and why it cannot fork, if so) goes to
    the end of the cell's setup log, and `wait` waits until it has imported TensorFlow."""

    def __init__(self, setup_log: Path, chunks: Iterator[bytes]):
        self.listening = threading.Event()
        self.imported = threading.Event()  # it said how it will start the scenarios: forks, or fresh processes
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._follow, args=(setup_log, chunks), daemon=True,
                                       name="bnmatrix-zygote-output")
        self.thread.start()

    def _follow(self, setup_log: Path, chunks: Iterator[bytes]) -> None:
        seen = b""
        try:
            with open(setup_log, "ab") as log:
                log.write(b"\n--- the cell's zygote (bnmatrix_zygote.py serve) ---\n")
                written = 0
                for chunk in chunks:
                    log.write(chunk[:max(0, ZYGOTE_LOG_BYTES - written)])
                    log.flush()
                    written += len(chunk)
                    seen = (seen + chunk)[-4096:]
                    if b"bnmatrix-zygote: listening" in seen:
                        self.listening.set()
                    if b"bnmatrix-zygote: forking" in seen or b"bnmatrix-zygote: fresh processes" in seen:
                        self.imported.set()
        except Exception:  # noqa: BLE001  the stream of a container being removed; the log is best effort
            pass
        finally:
            self.ended.set()

    def wait(self, timeout_s: float = ZYGOTE_START_S) -> bool:
        """Whether the zygote listens, waiting until it has imported TensorFlow, ended or `timeout_s` passed: the
        run's scenario slots serve other cells meanwhile, where a scenario of this cell would wait for the import."""
        deadline = time.monotonic() + timeout_s
        while not self.imported.is_set() and not self.ended.is_set() and time.monotonic() < deadline:
            self.imported.wait(0.05)
        return self.listening.is_set()


@dataclass(frozen=True)
class ScenarioRun:
    """What one scenario process left behind: its result line (if any), the ends of its output, its end."""

    result_line: bytes | None
    result_too_long: bool
    stderr_tail: str
    returncode: int | None
    timed_out: bool
    duration_s: float
    launch: str | None = None  # how it was started: "zygote" or "fresh: <why>" (None: the launcher never said)

    @classmethod
    def from_capture(cls, capture: OutputCapture, returncode: int | None, timed_out: bool,
                     duration_s: float) -> ScenarioRun:
        return cls(capture.result_line, capture.result_too_long, capture.tail("stderr", 40), returncode, timed_out,
                   round(duration_s, 3), capture.launch)


class CellSession(Protocol):
    environment: dict[str, Any]

    def run(self, scenario: Scenario, args: list[str], timeout_s: float, log: Path) -> ScenarioRun:
        """Run `scenario`'s script with `args`, streaming its output to `log`."""
        ...


class Backend(Protocol):
    name: str
    uses_images: bool  # whether a cell's base image matters (plan shows it)

    def serves(self, cell: Cell) -> str | None:
        """Why this host cannot run `cell` with this backend (no such Python, no GPU), or None when it can."""
        ...

    def serves_python(self, python: str) -> bool:
        """Whether a cell on Python `python` (X.Y) can run here: a release bisect probes has no matrix cell."""
        ...

    def cell_gpus(self, cell: Cell) -> list[Gpu]:
        """The GPUs a GPU cell would run on here (none for a CPU cell, or where there are none)."""
        ...

    def open(self, cell: Cell, setup_log: Path, report_step: StepReporter) -> AbstractContextManager[CellSession]:
        """Prepare the cell's environment (reusing a cached one) and yield a session to run scenarios."""
        ...

    def close(self) -> None:
        """Stop whatever still runs (Ctrl-C) and release what the backend holds; safe to call twice."""
        ...


def cell_environment(cell: Cell) -> dict[str, str]:
    """What every backend puts in a scenario's environment for the cell (besides where the helper is): NumPy's BLAS on
    one thread (the scenarios' arrays are tiny, and without its thread pool importing TensorFlow leaves one thread,
    so the cell's zygote may fork), the cell's own variables, and for a CPU cell no visible GPU, which no variable
    of the cell overrides (a CPU cell measures the CPU kernels even on a GPU host)."""
    return {"OPENBLAS_NUM_THREADS": "1", **cell.env, **({"CUDA_VISIBLE_DEVICES": ""} if cell.device == "cpu" else {})}


PINNED_CUTOFF = "2100-01-01T00:00:00Z"  # uv's cutoff for a package the cell pins from below: none, in effect
# What builds a package that has only a source release (absl-py 0.2.0, of TF 1.7's day): uv asks for setuptools>=40.8.0
# to build a setup.py, newer than 2018's; the tools that build a package decide nothing of how it runs.
BUILD_TOOLS = ("setuptools", "wheel")


def resolution_flags(cell: Cell) -> list[str]:
    """uv's options that resolve a cell's dependencies as of its release (plan.Cell.exclude_newer): the cutoff, and
    none for what the cell pins from below (tf_keras~=2.21.0 came out 12 days after TF 2.21.0: its pin chooses it)
    nor for the tools that build a source release."""
    if not cell.exclude_newer:
        return []
    flags = ["--exclude-newer", cell.exclude_newer]
    for tool in BUILD_TOOLS:
        flags += ["--exclude-newer-package", f"{tool}={PINNED_CUTOFF}"]
    for text in cell.requirements:
        requirement = Requirement(text)
        if any(spec.operator in ("==", "===", "~=", ">=", ">") for spec in requirement.specifier):
            flags += ["--exclude-newer-package", f"{requirement.name}={PINNED_CUTOFF}"]
    return flags


CUDA_CACHE_MAXSIZE = 4 << 30  # bytes: CUDA's JIT cache (its default, 256 MiB, holds a TF's compiled PTX only in part)


def cuda_cache_key(gpus: Sequence[Gpu], cell: Cell) -> str:
    """Where a GPU cell's CUDA JIT cache is kept, per GPU, driver and TF release ("NVIDIA-H100-...-driver-550.54.15/
    tf-2.15.1"): what PTX compiled for one GPU and driver is of no use to another."""
    gpu = gpus[0] if gpus else None
    key = re.sub(r"[^A-Za-z0-9.]+", "-", f"{gpu.name}-driver-{gpu.driver or 'unknown'}" if gpu else "unknown-gpu")
    return f"{key.strip('-')}/tf-{cell.tf}"


def asked_by_name(cell: Cell, select: Sequence[str]) -> bool:
    """Whether a --select glob that matches the cell names its TF version (tf-1.15.5-gpu, 'tf-1.15.5-*')."""
    return any(fnmatch.fnmatchcase(cell.id, pattern) and cell.tf in pattern for pattern in select)


def gpu_prediction(cell: Cell, gpus: Sequence[Gpu]) -> Prediction | None:
    """Whether the first GPU can run a GPU cell's release (gpu.predict); None for a CPU cell or without a GPU."""
    return predict(cell.tf, gpus[0]) if cell.device == "gpu" and gpus else None


def gpu_environment(cell: Cell, gpus: Sequence[Gpu]) -> dict[str, Any]:
    """What a GPU cell's result records of its GPUs: each as nvidia-smi describes it, and bnmatrix's prediction."""
    prediction = gpu_prediction(cell, gpus)
    return {"gpus": [gpu.describe() for gpu in gpus],
            **({"gpu_prediction": prediction.describe()} if prediction is not None else {})}


def gpu_refusal(cell: Cell, gpus: Sequence[Gpu], select: Sequence[str]) -> str | None:
    """Why a GPU cell is not started: predicted unable to run on this GPU and not asked for by name."""
    prediction = gpu_prediction(cell, gpus)
    if prediction is None or prediction.outcome != CANNOT or asked_by_name(cell, select):
        return None
    return f"{prediction.reason}: not started (--select {cell.id} runs it anyway)"


@dataclass(frozen=True, kw_only=True)
class Setup:
    """What a command asks of the backend it opens."""

    matrix: Matrix
    run_id: str
    cache_dir: Path  # where environments are kept (the venv backend's virtualenvs)
    rebuild: bool = False  # build every cell's environment again
    images: Sequence[str] = ()  # the base images of the cells to run
    fresh: bool = False  # every scenario a fresh process: no zygote (bnmatrix run --fresh-processes)
    sweep: bool = True  # remove what dead runs left (a run does; `plan` only looks)
    select: Sequence[str] = ()  # the --select globs: a GPU cell predicted not to run starts only if named in one


@dataclass(frozen=True, kw_only=True)
class Reproduction:
    """What the command that reproduces one scenario of a stored cell is made of (all from the stored record)."""

    cell: Cell  # the cell, as stored
    environment: dict[str, Any]  # what the backend recorded of the cell's environment
    scenario: str
    run: str  # the run that measured the result
    folder: str  # the folder of the run that holds it, as results-root/run-folder
    code: dict[str, Any] | None  # the cell's record of the code the run kept (CellResult.code), if any
    again: str  # the bnmatrix command that runs it again

    def comment(self, text: str) -> str:
        """A shell comment line of `text` (names from the file system and the data): a control character (a newline
        would end the comment and start a command) is shown as '?'."""
        return "# " + re.sub(r"[\x00-\x1f\x7f]", "?", text)

    def paths(self) -> tuple[str, str, str]:
        """(where to run the command, the scenario's script and the folder of the helper module, relative to there):
        the run's own copy of the code it ran, or a bnmatrix checkout for a run that kept none."""
        folder = (self.code or {}).get("scenarios", {}).get(self.scenario)
        if folder is None or self.code is None:
            return ("from a bnmatrix checkout (this run kept no copy of its scenario code)",
                    f"scenarios/{self.scenario}.py", "scenarios")
        return (f"from {self.folder}, the folder of run {self.run}, which keeps the code it ran in code/",
                f"code/{folder}/{self.scenario}.py", f"code/{self.code['helper']}")

    @property
    def args(self) -> list[str]:
        return ["--steps", str(self.cell.steps), "--device", self.cell.device, "--tf-version", self.cell.tf]

    @property
    def variables(self) -> dict[str, str]:
        """The cell's own environment variables (only well-formed ones: the record may come from anywhere)."""
        return well_formed(self.cell.env)


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def well_formed(variables: dict[str, Any]) -> dict[str, str]:
    """The environment variables of a stored record that a shell can set: a name of letters, digits and underscores,
    a string value."""
    return {k: v for k, v in variables.items() if isinstance(k, str) and isinstance(v, str) and ENV_NAME.fullmatch(k)}


@dataclass(frozen=True, kw_only=True)
class BackendKind:
    """A backend as the registry knows it; each backend module registers one (register()), and nothing else in
    bnmatrix names a backend."""

    name: str
    summary: str  # one line for --help
    auto_order: int  # --backend auto tries the kinds in this order; the first that opens is taken
    # (the backend, the line saying what it is), or (None, why it cannot open on this host); `chosen`: named
    # with --backend rather than tried by auto (auto may decline what a named backend would try)
    open: Callable[[Setup, bool], tuple[Backend | None, str]]
    # a shell command that runs one stored scenario as the cell ran it, without bnmatrix
    reproduce: Callable[[Reproduction], str]
    # the requirements it installs for a cell (the cell's own, unless the backend must add to them)
    installs: Callable[[Cell], tuple[str, ...]] = lambda cell: cell.requirements


_KINDS: dict[str, BackendKind] = {}


def register(kind: BackendKind) -> BackendKind:
    _KINDS[kind.name] = kind
    return kind


def backend_kinds() -> dict[str, BackendKind]:
    """Every backend, in auto's order: each module of this package registers its own when imported."""
    for module in pkgutil.iter_modules(__path__):  # imported once; a module imported before registered already
        importlib.import_module(f"{__name__}.{module.name}")
    return dict(sorted(_KINDS.items(), key=lambda item: (item[1].auto_order, item[0])))


def select_backend(name: str, setup: Setup) -> tuple[Backend, str]:
    """The backend for --backend NAME (a registered kind, or auto) and one line saying which and why.

    auto takes the first kind that opens on this host (Docker when a daemon answers and can obtain the cells'
    base images; the venv backend otherwise), and says why it passed the ones before it.
    """
    kinds = backend_kinds()
    if name != "auto":
        if name not in kinds:
            raise BnMatrixError(f"--backend {name}: unknown; expected auto or one of {', '.join(kinds)}")
        backend, about = kinds[name].open(setup, True)
        if backend is None:
            raise BnMatrixError(f"--backend {name}: {about}")
        return backend, f"{name} backend (chosen): {about}"
    declined: list[str] = []
    for kind in kinds.values():
        backend, about = kind.open(setup, False)
        if backend is not None:
            return backend, f"{kind.name} backend (auto{': ' if declined else ''}{'; '.join(declined)}): {about}"
        declined.append(about)
    raise BnMatrixError(f"--backend auto: no backend opens on this host: {'; '.join(declined)}")
