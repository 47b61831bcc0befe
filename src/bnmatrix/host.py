"""What this host runs, and what runs on it: bnmatrix's child processes (each tagged with a token, killed with
its group and whatever it left), liveness of a recorded process, the sweep of what killed runs left, and the
host's Pythons and GPUs. Every backend and the results store ask here; nothing here knows a backend."""

from __future__ import annotations

import ctypes
import os
import re
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
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bnmatrix.errors import Cancelled
from bnmatrix.intake import RUN_ID, start_ticks

PROBE_TIMEOUT_S = 30  # an interpreter, `uv python find`, nvidia-smi
# Every process bnmatrix starts carries this in its environment, and so do its descendants (even a
# double-forked, setsid one): `<run id>:<process id>`, so that what a scenario left behind can be found.
TOKEN_VARIABLE = "BNMATRIX_PROCESS_TOKEN"
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


class Capture(Protocol):
    """Where a watched process's output goes (backends.OutputCapture)."""

    def feed(self, chunk: bytes, stream: str) -> None: ...

    def finish(self) -> None: ...


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
    killed = kill_all(tagged_processes(run_id=run_id))
    for folder in {Path(tempfile.gettempdir()), Path("/tmp")}:  # a cell's zygote's is in /tmp for a long TMPDIR
        for scratch in folder.glob(f"bnmatrix-cell-{run_id}-*"):
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


def kill_all(pids: list[int]) -> int:
    """SIGKILL these processes; how many."""
    killed = 0
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def process_alive(pid: int, started_ticks: int | None = None) -> bool:
    """Whether a process with this pid exists on this host (one we may not signal counts as alive); given when it
    started (intake.start_ticks), only that very process: not another that got its pid (after a reboot)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        pass
    return started_ticks is None or start_ticks(pid) == started_ticks


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


@dataclass(frozen=True)
class Gpu:
    """A GPU of this host as nvidia-smi describes it; what an older driver's nvidia-smi cannot say is None."""

    name: str
    compute_capability: str | None = None  # "9.0"
    driver: str | None = None  # "550.54.15"
    memory: str | None = None  # "81559 MiB"
    cuda: str | None = None  # the newest CUDA the driver runs, as nvidia-smi's header says ("12.4")

    def describe(self) -> str:
        """"NVIDIA H100 80GB HBM3 (compute capability 9.0, driver 550.54.15, 81559 MiB)": what a GPU result records."""
        known = [f"compute capability {self.compute_capability}" if self.compute_capability else "",
                 f"driver {self.driver}" if self.driver else "", self.memory or ""]
        return self.name + (f" ({', '.join(k for k in known if k)})" if any(known) else "")


GPU_QUERY = ["--query-gpu=name,compute_cap,driver_version,memory.total", "--format=csv,noheader"]


def parse_gpus(query: str, header: str) -> list[Gpu]:
    """The GPUs of `nvidia-smi --query-gpu` (GPU_QUERY)'s CSV, with the driver's CUDA from plain nvidia-smi's header."""
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", header)
    rows = [[field.strip() for field in line.split(",")] for line in query.splitlines() if line.strip()]

    def known(value: str) -> str | None:
        return value if value and "N/A" not in value else None

    return [Gpu(row[0], known(row[1]), known(row[2]), known(row[3]), cuda.group(1) if cuda else None)
            for row in rows if len(row) == 4]


def host_gpus() -> list[Gpu]:
    """The GPUs nvidia-smi lists: name, compute capability, driver and memory where its --query-gpu knows them
    (compute_cap needs a driver from 2022 on), else the names of `nvidia-smi -L`; none without nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        found = subprocess.run([smi, *GPU_QUERY], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        if found.returncode == 0 and found.stdout.strip():
            header = subprocess.run([smi], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S).stdout
            return parse_gpus(found.stdout, header)
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return []
    return [Gpu(line.split(":", 1)[1].split("(UUID")[0].strip()) for line in listing.stdout.splitlines()
            if listing.returncode == 0 and line.startswith("GPU ") and ":" in line]


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
                raise Cancelled
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
        kill_all(tagged_processes(token=token) + (pipe_holders(inodes) if inodes else []))
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

    def stream(self, command: list[str], timeout_s: float, capture: Capture,
               **options: Any) -> tuple[int | None, bool]:
        """(exit code, timed_out) of `command`, its output streamed into `capture`."""
        process, token = self._start(command, {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **options})
        try:
            timed_out = self._watch(process, token, timeout_s, capture.feed)
        finally:
            self._finish(process, token)
            capture.finish()
        return (None if timed_out else process.returncode), timed_out

    def spawn(self, command: list[str], **options: Any) -> tuple[subprocess.Popen[bytes], str]:
        """(process, token) of a long-lived helper (a cell's zygote), in its own group like every child; `end` stops
        it."""
        return self._start(command, options)

    def end(self, process: subprocess.Popen[Any], token: str, inodes: set[int]) -> None:
        """Kill a spawned process's group, whatever carries its token and whatever holds these pipes of its (`inodes`);
        its pipes stay open for their reader."""
        if process.returncode is None or process in self._running:
            self._end(process, token, inodes)

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
