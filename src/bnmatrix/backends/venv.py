"""The embedded default: one virtualenv per cell, on a Python interpreter found on this host."""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uv

from bnmatrix.backends import CellNotRun, CellSetupError, OutputCapture, ScenarioRun, StepReporter
from bnmatrix.config import Scenario, base_image_script, data_path
from bnmatrix.errors import BnMatrixError
from bnmatrix.intake import RUN_ID
from bnmatrix.plan import Cell
from bnmatrix.results import write_json

READY_MARKER = "bnmatrix-ready.json"
# uv and pip settings about transport (certificates, proxies, timeouts) are the host's business and kept;
# every other UV_* and PIP_* setting and their config files are dropped, so a cell installs from its index only.
PIP_TRANSPORT_SETTINGS = ("PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT",
                          "PIP_RETRIES")
UV_TRANSPORT_SETTINGS = ("UV_NATIVE_TLS", "UV_HTTP_TIMEOUT", "UV_INSECURE_HOST", "UV_CONCURRENT_DOWNLOADS")
INSTALL_TIMEOUT_S = 3600
PROBE_TIMEOUT_S = 30  # an interpreter, `uv python find`, nvidia-smi, the package listing
LOCK_POLL_S = 0.5
# Every process bnmatrix starts carries this in its environment, and so do its descendants (even a
# double-forked, setsid one): `<run id>:<process id>`, so that what a scenario left behind can be found.
TOKEN_VARIABLE = "BNMATRIX_PROCESS_TOKEN"
READY_KEYS = {"python", "python_version", "requirements", "index_url", "packages"}
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when bnmatrix dies, even by SIGKILL (Linux prctl)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def tagged_processes(run_id: str | None = None, token: str | None = None) -> list[int]:
    """The processes whose environment holds a token of the run `run_id` (the token's first part is exactly that
    id), or exactly `token` (one process bnmatrix started, with its descendants)."""
    variable = f"{TOKEN_VARIABLE}=".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        for item in environ.split(b"\0"):
            if item.startswith(variable):
                value = item[len(variable):].decode("utf-8", "replace")
                if value == token or (run_id is not None and value.partition(":")[0] == run_id):
                    found.append(int(entry.name))
                break
    return found


def sweep_dead_run(run_id: str) -> int:
    """What a killed run left on this host: its processes (by token) and its scratch folders; how many
    processes were stopped. Only a run id of bnmatrix's own shape is swept (never a prefix of others)."""
    if not RUN_ID.fullmatch(run_id):
        return 0
    killed = _kill_all(tagged_processes(run_id=run_id))
    for scratch in Path(tempfile.gettempdir()).glob(f"bnmatrix-cell-{run_id}-*"):
        shutil.rmtree(scratch, ignore_errors=True)
    return killed


def pipe_holders(inodes: set[int]) -> list[int]:
    """The processes that hold the writing end of one of these pipes open: what keeps a scenario's output open after
    it ended, even a descendant that shed its session and its environment (and so its token). Only the writing
    end counts: a process another thread of bnmatrix is just starting holds copies of bnmatrix's reading ends
    until it execs, and is nobody's leftover."""
    wanted = {f"pipe:[{inode}]" for inode in inodes}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with suppress(OSError):
            if any(os.readlink(fd) in wanted and _writes(entry / "fdinfo" / fd.name)
                   for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
    return found


def _writes(fdinfo: Path) -> bool:
    """Whether a file descriptor was opened for writing (its flags in /proc/PID/fdinfo, octal)."""
    flags = next((line.split()[1] for line in fdinfo.read_text().splitlines() if line.startswith("flags:")), "0")
    return int(flags, 8) & (os.O_WRONLY | os.O_RDWR) != 0


def _kill_all(pids: list[int]) -> int:
    """SIGKILL these processes; how many."""
    killed = 0
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


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


@dataclass(frozen=True)
class Interpreter:
    path: Path
    version: str  # full, e.g. 3.7.16


def _probe(candidate: Path) -> Interpreter | None:
    """The real interpreter behind `candidate` if it runs and has venv, else None."""
    code = "import sys, venv; print(sys.executable); print('%d.%d.%d' % sys.version_info[:3])"
    try:
        out = subprocess.run([str(candidate), "-c", code], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2:
        return None
    return Interpreter(Path(lines[0]), lines[1])


def find_interpreter(python: str) -> tuple[Interpreter | None, list[str]]:
    """A Python X.Y from pyenv's versions, uv's managed Pythons or PATH (pyenv shims skipped), tried in that
    order: a place is asked only when the ones before it had none that runs.

    Returns the interpreter (or None) and the places looked in, for the not-run reason.
    """
    looked: list[str] = []

    def candidates() -> Iterator[Path]:
        pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
        looked.append(str(pyenv_root / "versions"))
        yield from sorted((pyenv_root / "versions").glob(f"{python}.*/bin/python{python}"), reverse=True)
        uv = shutil.which("uv")
        if uv:
            looked.append("uv python find")
            with suppress(subprocess.TimeoutExpired):
                found = subprocess.run([uv, "python", "find", python], capture_output=True, text=True,
                                       timeout=PROBE_TIMEOUT_S)
                if found.returncode == 0 and found.stdout.strip():
                    yield Path(found.stdout.strip())
        looked.append("PATH")
        for directory in os.environ.get("PATH", "").split(os.pathsep):
            candidate = Path(directory) / f"python{python}"
            if candidate.is_file() and "shims" not in candidate.parts:
                yield candidate
        if sys.version_info[:2] == tuple(int(p) for p in python.split(".")):
            yield Path(sys.executable)

    for candidate in candidates():
        interpreter = _probe(candidate)
        if interpreter and interpreter.version.startswith(python + "."):
            return interpreter, looked
    return None, looked


def python_hint(python: str) -> str:
    """How to get a cell's Python: where uv can install it, pyenv can, and so can the container backend."""
    own = "pyenv install " + python
    if tuple(int(p) for p in python.split(".")) >= (3, 8):
        own = f"uv python install {python}, or {own}"
    return (f"install it ({own}), or use the container backend: bnmatrix run --backend docker (where no registry "
            f"answers, {base_image_script()} {python} builds its base image)")


def gpu_available() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False
    return listing.returncode == 0 and "GPU" in listing.stdout


_UV_LOCK = threading.Lock()


@functools.cache
def uv_binary() -> str:
    """The uv executable installed with bnmatrix (the `uv` package). Found under a lock: it reads sysconfig,
    whose first reading is not thread-safe on Python 3.11 (two cells starting together got EXE = None)."""
    with _UV_LOCK:
        return str(uv.find_uv_bin())


def pip_environment(index_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "UV_")) or k in PIP_TRANSPORT_SETTINGS + UV_TRANSPORT_SETTINGS}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=index_url, PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INPUT="1", UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never")
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return env


DRAIN_GRACE_S = 5.0  # after a process ended and what it left was killed: the most its pipes are read for


class ProcessGroups:
    """Child processes in their own process groups, so that close() can kill each with its children.

    Each child dies with bnmatrix (a parent-death signal) and carries a token in its environment; when it
    ends, whatever it started that still runs (double-forked or not) is killed too, and so is any process
    that still holds its output pipes. Its pipes are read for at most DRAIN_GRACE_S after that: no child,
    however it hides, keeps bnmatrix waiting.
    """

    def __init__(self, run_id: str = "") -> None:
        self.run_id = run_id or uuid.uuid4().hex
        self._running: set[subprocess.Popen[Any]] = set()
        self._lock = threading.Lock()
        self.closed = False

    def _start(self, command: list[str], options: dict[str, Any]) -> tuple[subprocess.Popen[Any], str]:
        token = f"{self.run_id}:{uuid.uuid4().hex}"
        env = dict(options.pop("env", None) or os.environ)
        env[TOKEN_VARIABLE] = token
        with self._lock:
            if self.closed:
                raise KeyboardInterrupt
            process: subprocess.Popen[Any] = subprocess.Popen(command, start_new_session=True, env=env,
                                                              preexec_fn=_die_with_parent, **options)
            self._running.add(process)
        return process, token

    def _watch(self, process: subprocess.Popen[Any], token: str, timeout_s: float,
               feed: Callable[[bytes, str], None]) -> bool:
        """Read the process's pipes into `feed` until it has ended and they are drained, or until `timeout_s`
        (then it is killed); whatever it left is killed when it ends. Returns whether it timed out."""
        pipes = {pipe: name for pipe, name in ((process.stdout, "stdout"), (process.stderr, "stderr")) if pipe}
        inodes = {os.fstat(pipe.fileno()).st_ino for pipe in pipes}
        deadline = time.monotonic() + timeout_s
        timed_out, ended = False, None
        with selectors.DefaultSelector() as selector:
            for pipe, name in pipes.items():
                os.set_blocking(pipe.fileno(), False)
                selector.register(pipe, selectors.EVENT_READ, name)
            while True:
                now = time.monotonic()
                if ended is None and (process.poll() is not None or now >= deadline):
                    timed_out = process.returncode is None
                    self._end(process, token, inodes)
                    ended = now
                if ended is not None and (not selector.get_map() or now - ended > DRAIN_GRACE_S):
                    return timed_out
                if not selector.get_map():
                    with suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=max(0.0, min(deadline - now, 1.0)))
                    continue
                for key, _ in selector.select(timeout=0.2):
                    try:
                        chunk = os.read(key.fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    if chunk:
                        feed(chunk, key.data)
                    else:
                        selector.unregister(key.fileobj)

    def _end(self, process: subprocess.Popen[Any], token: str, inodes: set[int]) -> None:
        """Kill the process's group, then every process with its token or holding its pipes."""
        self._kill(process)
        process.wait()
        _kill_all(tagged_processes(token=token) + (pipe_holders(inodes) if inodes else []))
        with self._lock:
            self._running.discard(process)

    def run(self, command: list[str], timeout_s: float, **options: Any) -> tuple[subprocess.Popen[bytes], str, str,
                                                                                  bool]:
        """(process, stdout, stderr, timed_out) of `command`, killed with its group after `timeout_s`."""
        process, token = self._start(command, options)
        output: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        try:
            timed_out = self._watch(process, token, timeout_s, lambda chunk, name: output[name].extend(chunk))
        finally:
            self._finish(process, token)
        return (process, output["stdout"].decode("utf-8", "replace"), output["stderr"].decode("utf-8", "replace"),
                timed_out)

    def stream(self, command: list[str], timeout_s: float, capture: OutputCapture,
               **options: Any) -> tuple[int | None, bool]:
        """(exit code, timed_out) of `command`, its output streamed into `capture`."""
        process, token = self._start(command, {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **options})
        try:
            timed_out = self._watch(process, token, timeout_s, capture.feed)
        finally:
            self._finish(process, token)
            capture.finish()
        return (None if timed_out else process.returncode), timed_out

    def _finish(self, process: subprocess.Popen[Any], token: str) -> None:
        """However the watch ended (even by an exception): nothing of the process left, its pipes closed."""
        if process.returncode is None or process in self._running:
            self._end(process, token, set())
        for pipe in (process.stdout, process.stderr):
            if pipe:
                pipe.close()

    @staticmethod
    def _kill(process: subprocess.Popen[Any]) -> None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            for process in self._running:
                self._kill(process)


class VenvBackend:
    name = "venv"

    def __init__(self, cache_dir: Path, run_id: str = "", rebuild: bool = False):
        check_cache_dir(cache_dir)
        self.cache_dir = cache_dir
        self.processes = ProcessGroups(run_id)
        self.rebuild = rebuild  # --rebuild: recreate each cell's environment once in this run
        self._rebuilt: set[Path] = set()
        self._interpreters: dict[str, tuple[Interpreter | None, list[str]]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.processes.close()

    def interpreter(self, python: str) -> tuple[Interpreter | None, list[str]]:
        """Python X.Y on this host, and the places looked in; found once per run and shared by its cells."""
        with self._lock:
            if python not in self._interpreters:
                self._interpreters[python] = find_interpreter(python)
            return self._interpreters[python]

    def serves(self, cell: Cell) -> str | None:
        """Why this host cannot run the cell (None when it can): what `open` would say, and how to get what is
        missing."""
        if cell.device == "gpu" and not gpu_available():
            return "no GPU on this host (nvidia-smi lists none); --skip '*-gpu*' leaves GPU cells out"
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
        yield VenvSession(venv, cell, self.processes)

    def venv_path(self, cell: Cell, interpreter: Interpreter) -> Path:
        key = json.dumps([str(interpreter.path), interpreter.version, cell.requirements, cell.index_url])
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
                    raise KeyboardInterrupt from None
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
            (f"installing {' '.join(cell.requirements)}",
             [uv, "pip", "install", "--python", python, "--index-url", cell.index_url,
              *([] if old_python else ["--compile-bytecode"]), *cell.requirements]),
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
                     "requirements": list(cell.requirements), "index_url": cell.index_url,
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
    """Runs scenario scripts with the cell's venv Python, each in its own process group."""

    def __init__(self, venv: Path, cell: Cell, processes: ProcessGroups):
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
        }

    def run(self, scenario: Scenario, args: list[str], timeout_s: float, log: Path) -> ScenarioRun:
        env = pip_environment(self.cell.index_url)
        env.update(self.cell.env)
        env["PYTHONPATH"] = str(data_path("scenarios"))  # the helper, importable from any scenario folder
        if self.cell.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU cell measures the CPU kernels even on a GPU host
        started = time.monotonic()
        scratch_prefix = f"bnmatrix-cell-{self.processes.run_id}-"  # a later run sweeps it if this one is killed
        with tempfile.TemporaryDirectory(prefix=scratch_prefix) as scratch, open(log, "wb") as handle:
            env["TMPDIR"] = scratch
            capture = OutputCapture(handle)
            code, timed_out = self.processes.stream([str(self.venv / "bin" / "python"), str(scenario.script), *args],
                                                    timeout_s, capture, cwd=scratch, env=env)
        return ScenarioRun.from_capture(capture, code, timed_out, time.monotonic() - started)
