"""The embedded default: one virtualenv per cell, on a Python interpreter found on this host."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import uv
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from bnmatrix.backends import (
    CUDA_CACHE_MAXSIZE,
    NO_ZYGOTE,
    Backend,
    BackendKind,
    CellNotRun,
    CellSetupError,
    OutputCapture,
    Reproduction,
    ScenarioRun,
    Setup,
    StepReporter,
    ZygoteOutput,
    cell_environment,
    cuda_cache_key,
    gpu_environment,
    gpu_refusal,
    launcher,
    register,
    resolution_flags,
    well_formed,
    zygote_server,
)
from bnmatrix.config import SCENARIOS_FOLDER, Scenario, base_image_script, data_path
from bnmatrix.errors import BnMatrixError, Cancelled
from bnmatrix.host import DRAIN_GRACE_S, Gpu, Interpreter, ProcessGroups, find_interpreter, host_gpus
from bnmatrix.plan import Cell
from bnmatrix.store.files import write_json

READY_MARKER = "bnmatrix-ready.json"
# uv and pip settings about transport (certificates, proxies, timeouts) are the host's business and kept;
# every other UV_* and PIP_* setting and their config files are dropped, so a cell installs from its index only.
PIP_TRANSPORT_SETTINGS = ("PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT",
                          "PIP_RETRIES")
UV_TRANSPORT_SETTINGS = ("UV_NATIVE_TLS", "UV_HTTP_TIMEOUT", "UV_INSECURE_HOST", "UV_CONCURRENT_DOWNLOADS")
INSTALL_TIMEOUT_S = 3600
PROBE_TIMEOUT_S = 30  # the package listing
LOCK_POLL_S = 0.5
READY_KEYS = {"python", "python_version", "requirements", "index_url", "packages"}


def default_cache_dir() -> Path:
    configured = os.environ.get("BNMATRIX_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "bnmatrix"


def check_cache_dir(cache_dir: Path) -> None:
    """Refuse, before anything is written, a cache folder bnmatrix could not build environments in (a file, a
    folder without write permission): every cell would be an error. Nothing is created here."""
    existing = cache_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        problem = f"{existing} is no folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        return
    raise BnMatrixError(f"cache folder {cache_dir} (BNMATRIX_CACHE, default ~/.cache/bnmatrix): {problem}; expected "
                        "a folder bnmatrix may create files in (set BNMATRIX_CACHE to one)")


def python_hint(python: str) -> str:
    """How to get a cell's Python: where uv can install it, pyenv can, and so can the container backend."""
    own = "pyenv install " + python
    if tuple(int(p) for p in python.split(".")) >= (3, 8):
        own = f"uv python install {python}, or {own}"
    return (f"install it ({own}), or use the container backend: bnmatrix run --backend docker (where no registry "
            f"answers, {base_image_script()} {python} builds its base image)")


_UV_LOCK = threading.Lock()


@functools.cache
def uv_binary() -> str:
    """The uv executable installed with bnmatrix (the `uv` package). Found under a lock: it reads sysconfig,
    whose first reading is not thread-safe on Python 3.11 (two cells starting together got EXE = None)."""
    with _UV_LOCK:
        return str(uv.find_uv_bin())


AND_CUDA_FROM = Version("2.14")  # TF's first Linux wheels with the `and-cuda` extra


def installs(cell: Cell) -> tuple[str, ...]:
    """What this backend installs for a cell: its requirements; for a GPU cell, its TensorFlow with the `and-cuda`
    extra, which brings CUDA and cuDNN as wheels (the host needs only the NVIDIA driver), pinned as the cell pins it
    (an unpinned `tensorflow[and-cuda]` can resolve to an older TF: tensorflow/tensorflow#61993)."""
    if cell.device != "gpu":
        return cell.requirements
    found = []
    for text in cell.requirements:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == "tensorflow" and not requirement.extras:
            text = requirement.name + "[and-cuda]" + text.removeprefix(requirement.name)
        found.append(text)
    return tuple(found)


def jit_cache(cache_dir: Path, gpus: list[Gpu], cell: Cell) -> dict[str, str]:
    """CUDA's compute cache for a GPU cell, kept under the cache folder per GPU, driver and TF release: a release
    whose wheels lack this GPU's kernels compiles their PTX once (which can take many minutes), not in every run."""
    path = cache_dir / "cuda-cache" / cuda_cache_key(gpus, cell)
    path.mkdir(parents=True, exist_ok=True)
    return {"CUDA_CACHE_PATH": str(path), "CUDA_CACHE_MAXSIZE": str(CUDA_CACHE_MAXSIZE)}


def pip_environment(index_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "UV_")) or k in PIP_TRANSPORT_SETTINGS + UV_TRANSPORT_SETTINGS}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=index_url, PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INPUT="1", UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never")
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return env


class VenvBackend:
    name = "venv"
    uses_images = False

    def __init__(self, cache_dir: Path, run_id: str = "", rebuild: bool = False, fresh: bool = False,
                 select: Sequence[str] = ()):
        check_cache_dir(cache_dir)
        self.select = select  # the --select globs (a GPU cell predicted not to run starts only when named)
        self._gpus: list[Gpu] | None = None
        self.cache_dir = cache_dir
        self.fresh = fresh  # no zygote: every scenario a fresh process
        self.processes = ProcessGroups(run_id)
        self.rebuild = rebuild  # --rebuild: recreate each cell's environment once in this run
        self._rebuilt: set[Path] = set()
        self._interpreters: dict[str, tuple[Interpreter | None, list[str]]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.processes.close()

    def gpus(self) -> list[Gpu]:
        """This host's GPUs (nvidia-smi), asked once per run."""
        with self._lock:
            if self._gpus is None:
                self._gpus = host_gpus()
            return self._gpus

    def cell_gpus(self, cell: Cell) -> list[Gpu]:
        return self.gpus() if cell.device == "gpu" else []

    def interpreter(self, python: str) -> tuple[Interpreter | None, list[str]]:
        """Python X.Y on this host, and the places looked in; found once per run and shared by its cells."""
        with self._lock:
            if python not in self._interpreters:
                self._interpreters[python] = find_interpreter(python)
            return self._interpreters[python]

    def serves_python(self, python: str) -> bool:
        return self.interpreter(python)[0] is not None

    def serves(self, cell: Cell) -> str | None:
        """Why this host cannot run the cell (None when it can): what `open` would say, and how to get what is
        missing."""
        if cell.device == "gpu" and not self.gpus():
            return "no GPU on this host (nvidia-smi lists none); --skip '*-gpu*' leaves GPU cells out"
        if cell.device == "gpu" and Version(cell.tf) < AND_CUDA_FROM:
            return (f"TF {cell.tf} has no tensorflow[and-cuda] (CUDA and cuDNN come as wheels from {AND_CUDA_FROM} "
                    "on): its GPU cell needs TF's GPU image, which has CUDA (--backend docker)")
        refusal = gpu_refusal(cell, self.gpus(), self.select)
        if refusal:
            return refusal
        interpreter, looked = self.interpreter(cell.python)
        if interpreter is None:
            return f"no Python {cell.python} on this host (looked in {', '.join(looked)}); {python_hint(cell.python)}"
        return None

    @contextmanager
    def open(self, cell: Cell, setup_log: Path, report_step: StepReporter) -> Iterator[VenvSession]:
        report_step(f"finding Python {cell.python}")
        why = self.serves(cell)
        if why:
            raise CellNotRun(why)
        interpreter, _ = self.interpreter(cell.python)
        assert interpreter is not None
        venv = self._venv(cell, interpreter, setup_log, report_step)
        session = VenvSession(venv, cell, self.processes, self.cache_dir, self.gpus())
        try:
            if not self.fresh:
                report_step("importing TensorFlow in the cell's zygote")
                session.start_zygote(setup_log)
            yield session
        finally:
            session.close()

    def venv_path(self, cell: Cell, interpreter: Interpreter) -> Path:
        key = json.dumps([str(interpreter.path), interpreter.version, installs(cell), cell.index_url,
                          *([cell.exclude_newer] if cell.exclude_newer else [])])
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return self.cache_dir / "venvs" / f"tf-{cell.tf}-py{interpreter.version}-{digest}"

    def _venv(self, cell: Cell, interpreter: Interpreter, setup_log: Path, report_step: StepReporter) -> Path:
        venv = self.venv_path(cell, interpreter)
        venv.parent.mkdir(parents=True, exist_ok=True)
        with open(venv.parent / f"{venv.name}.lock", "w") as lock:
            self._wait_for(lock, venv, report_step)  # two runs sharing the cache build a venv once
            ready = read_ready_marker(venv)
            if ready is not None and not (self.rebuild and venv not in self._rebuilt):
                report_step(f"reusing {venv.name}")
                setup_log.write_text(f"reused {venv}\n" + json.dumps(ready, indent=1), encoding="utf-8")
                return venv
            self._create(cell, interpreter, venv, setup_log, report_step)
            self._rebuilt.add(venv)
        return venv

    def _wait_for(self, lock: Any, venv: Path, report_step: StepReporter) -> None:
        """Take the env's lock; while another run holds it, say so, and stop at once on Ctrl-C."""
        told = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if self.processes.closed:
                    raise Cancelled from None
                if not told:
                    report_step(f"waiting for another bnmatrix run that is building {venv.name}")
                    told = True
                time.sleep(LOCK_POLL_S)

    def _create(self, cell: Cell, interpreter: Interpreter, venv: Path, setup_log: Path,
                report_step: StepReporter) -> None:
        """Build the venv in a fresh folder and rename it into place only when complete: an install
        killed half-way never writes into the venv a later run builds or uses."""
        building = venv.parent / f".{venv.name}.{uuid.uuid4().hex[:8]}.partial"
        for leftover in venv.parent.glob(f".{venv.name}.*.partial"):  # of runs killed while building
            shutil.rmtree(leftover, ignore_errors=True)
        env = pip_environment(cell.index_url)
        python = str(building / "bin" / "python")
        # uv (a dependency of bnmatrix) creates and installs: one download cache for every cell, linked from,
        # and bytecode written at install time as pip does. Its compiler needs Python 3.7+: a 3.6 env is
        # compiled by its own Python afterwards.
        uv = uv_binary()
        env["UV_CACHE_DIR"] = str(self.cache_dir / "uv")
        old_python = interpreter.version.startswith("3.6.")
        steps = [
            (f"creating venv (Python {interpreter.version})",
             [uv, "venv", "--quiet", "--seed", "--python", str(interpreter.path), str(building)]),
            (f"installing {' '.join(installs(cell))}",
             [uv, "pip", "install", "--python", python, "--index-url", cell.index_url,
              *resolution_flags(cell),
              *([] if old_python else ["--compile-bytecode"]), *installs(cell)]),
        ]
        if old_python:
            steps.append(("compiling bytecode", [python, "-m", "compileall", "-q", "-j", "0",
                                                 str(building / "lib" / "python3.6" / "site-packages")]))
        try:
            with open(setup_log, "w", encoding="utf-8") as log:

                def step(label: str, command: list[str], timeout_s: float, output: Any) -> str:
                    """Run one step, logged; a failure ends the build with the log so far."""
                    report_step(label)
                    log.write(f"$ {' '.join(command)}\n")
                    log.flush()
                    done, out, _, timed_out = self.processes.run(command, timeout_s, env=env, stdout=output,
                                                                 stderr=subprocess.STDOUT)
                    if timed_out or done.returncode != 0:
                        log.write(out)
                        log.close()
                        text = setup_log.read_text(encoding="utf-8", errors="replace")
                        why = "timed out" if timed_out else f"exit {done.returncode}"
                        raise CellSetupError(f"{label} failed ({why})", text)
                    return out

                for label, command in steps:
                    step(label, command, INSTALL_TIMEOUT_S, log)
                packages = step("listing the installed packages", [uv, "pip", "freeze", "--quiet", "--python", python],
                                PROBE_TIMEOUT_S, subprocess.PIPE)
            ready = {"python": str(interpreter.path), "python_version": interpreter.version,
                     "requirements": list(installs(cell)), "index_url": cell.index_url,
                     "packages": [line for line in packages.splitlines() if "==" in line or " @ " in line]}
            write_json(building / READY_MARKER, ready)
            if venv.exists():
                shutil.rmtree(venv)  # a broken or --rebuild env: replaced whole
            building.rename(venv)
        finally:
            shutil.rmtree(building, ignore_errors=True)


def read_ready_marker(venv: Path) -> dict[str, Any] | None:
    """The venv's ready marker if it is whole and ours; None (build again) for a missing, truncated or
    foreign one."""
    try:
        ready = json.loads((venv / READY_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(ready, dict) or not set(ready) >= READY_KEYS or not (venv / "bin" / "python").exists():
        return None
    return ready


class VenvSession:
    """Runs scenario scripts with the cell's venv Python, each in its own process group: forked from the cell's
    zygote (bnmatrix_zygote.py, started by start_zygote) where it can, else as a fresh process."""

    def __init__(self, venv: Path, cell: Cell, processes: ProcessGroups, cache_dir: Path, gpus: list[Gpu]):
        self.venv = venv
        self.cell = cell
        self.processes = processes
        ready = read_ready_marker(venv) or {}
        self.environment: dict[str, Any] = {
            "kind": "venv",
            "venv": str(venv),
            "python": ready["python"],
            "python_version": ready["python_version"],
            "packages": ready["packages"],
            "variables": cell_environment(cell),
        }
        self.cuda: dict[str, str] = {}
        if cell.device == "gpu":  # the GPUs it ran on, what bnmatrix predicted, and a JIT cache that outlives the run
            self.environment.update(gpu_environment(cell, gpus))
            self.cuda = jit_cache(cache_dir, gpus, cell)
            self.environment["cuda_cache"] = self.cuda["CUDA_CACHE_PATH"]
        self.helper = data_path(SCENARIOS_FOLDER)
        # The zygote's socket and scratch folder (a later run sweeps it if this one is killed); in /tmp where the
        # temporary folder's path is too long for a Unix socket's (107 bytes).
        self.prefix = f"bnmatrix-cell-{processes.run_id}-"  # of every scratch folder of the run's scenarios
        short = len(os.fsencode(tempfile.gettempdir())) + len(self.prefix) + 30 < 100
        self.scratch = Path(tempfile.mkdtemp(prefix=self.prefix, dir=None if short else "/tmp"))
        self.socket = NO_ZYGOTE
        self._zygote: tuple[subprocess.Popen[bytes], str, int, ZygoteOutput] | None = None

    def _environment(self, scratch: str) -> dict[str, str]:
        env = pip_environment(self.cell.index_url)
        env.update(cell_environment(self.cell))
        env["PYTHONPATH"] = str(self.helper)  # the helper, importable from any scenario folder
        env["TMPDIR"] = scratch
        env.update(self.cuda)
        return env

    def start_zygote(self, setup_log: Path) -> None:
        """Start the cell's zygote and wait until it has imported TensorFlow (ZygoteOutput.wait); a zygote that does
        not listen leaves every scenario a fresh process (its setup log says why)."""
        path = self.scratch / "zygote.sock"
        process, token = self.processes.spawn(
            zygote_server(str(self.venv / "bin" / "python"), str(self.helper), str(path)),
            env=self._environment(str(self.scratch)), cwd=self.scratch, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        assert process.stdout is not None
        pipe = os.fstat(process.stdout.fileno()).st_ino
        output = ZygoteOutput(setup_log, _chunks(process.stdout))
        self._zygote = (process, token, pipe, output)
        if output.wait():
            self.socket = str(path)

    def close(self) -> None:
        if self._zygote is not None:
            process, token, pipe, output = self._zygote
            self.processes.end(process, token, {pipe})  # whatever still holds its output too: the reader ends
            output.thread.join(DRAIN_GRACE_S)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def run(self, scenario: Scenario, args: list[str], timeout_s: float, log: Path) -> ScenarioRun:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=self.prefix) as scratch, open(log, "wb") as handle:
            capture = OutputCapture(handle)
            command = launcher(str(self.venv / "bin" / "python"), str(self.helper), self.socket, str(scenario.script),
                               args)
            code, timed_out = self.processes.stream(command, timeout_s, capture, cwd=scratch,
                                                    env=self._environment(scratch))
        return ScenarioRun.from_capture(capture, code, timed_out, time.monotonic() - started)


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    """What a pipe gives until it ends; closed by its reader (never while another thread reads it)."""
    try:
        while chunk := os.read(stream.fileno(), 1 << 16):
            yield chunk
    finally:
        stream.close()


def _open(setup: Setup, chosen: bool) -> tuple[Backend | None, str]:
    """Always opens: it needs only this host (each cell says whether the host has its Python)."""
    return (VenvBackend(setup.cache_dir, setup.run_id, setup.rebuild, setup.fresh, setup.select),
            f"one virtualenv per cell in {setup.cache_dir}")


def reproduce(what: Reproduction) -> str:
    """A venv of the cell's Python with exactly the packages the cell had (pip, --no-deps, from the cell's index;
    the host's pip configuration still brings its certificates and proxies), and the scenario run with it as the
    cell ran it: the helper on PYTHONPATH, a CPU cell hiding the GPUs, in a scratch folder removed afterwards. The
    venv is the cell's, kept for its other scenarios in ${TMPDIR:-/tmp}/bnmatrix-<cell>."""
    cell = what.cell
    packages = what.environment.get("packages") or []
    pins = ["--no-deps", *packages] if packages else list(installs(cell))
    index = ["--index-url", cell.index_url]
    recorded = what.environment.get("variables")
    variables = (well_formed(recorded) if isinstance(recorded, dict) else  # before they were recorded: what was set
                 {**what.variables, **({"CUDA_VISIBLE_DEVICES": ""} if cell.device == "cpu" else {})})
    where, script, helper = what.paths()
    assignments = " ".join(f"{k}={shlex.quote(v)}" if v else f"{k}=" for k, v in sorted(variables.items()))
    return "\n".join([
        what.comment(where),
        'run=$PWD; venv="${TMPDIR:-/tmp}"/' + shlex.quote(f"bnmatrix-{cell.id}"),
        shlex.join([f"python{cell.python}", "-m", "venv"]) + ' "$venv"',
        '"$venv"/bin/python -m pip install --disable-pip-version-check ' + shlex.join([*index, *pins]),
        f'(scratch=$(mktemp -d) && trap \'rm -rf "$scratch"\' EXIT && cd "$scratch" && '
        f'{assignments + " " if assignments else ""}PYTHONPATH="$run"/{shlex.quote(helper)} '
        f'"$venv"/bin/python "$run"/{shlex.quote(script)} {shlex.join(what.args)})',
        what.comment(f"or: {what.again}"),
    ])


register(BackendKind(name="venv", summary="one virtualenv per cell, on a Python found on this host", auto_order=90,
                     open=_open, reproduce=reproduce, installs=installs))
