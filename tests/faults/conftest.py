"""The fault suite's world: a fake `tensorflow` (and a package whose build takes as long as we say) on a
local file index, the fault scenarios beside this file, and the real `bnmatrix` run as a process."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bnmatrix.host import find_interpreter, tagged_processes
from tests.conftest import require

SCENARIOS = Path(__file__).parent / "scenarios"
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
# The fake TF answers what the scenario helper asks (version, devices) and nothing else.
FAKE_TF = '''import os as _os, time as _time

_time.sleep(float(_os.environ.get("FAULT_IMPORT_SECONDS", "0")))  # as long as a real import takes, when asked
if _os.environ.get("FAULT_IMPORT_THREAD"):  # an import that leaves a thread running, where a fork is not safe
    import threading as _threading
    _threading.Thread(target=_time.sleep, args=(3600,), daemon=True).start()
__version__ = "{version}"


class _Device(object):
    device_type = "CPU"


class _Gpu(object):  # FAULT_GPU=1: a GPU, as TF lists one where CUDA finds it
    device_type = "GPU"


class config(object):
    @staticmethod
    def list_physical_devices(kind=None):
        if _os.environ.get("FAULT_PTX_JIT"):  # TF's warning where it compiles PTX for the GPU, and the time it takes
            import sys as _sys
            _sys.stderr.write("W gpu_device.cc: TensorFlow was not built with CUDA kernel binaries compatible with "
                              "compute capability 9.0. CUDA kernels will be jit-compiled from PTX, which could take "
                              "30 minutes or longer.\\n")
            _time.sleep(float(_os.environ["FAULT_PTX_JIT"]))
        return [_Device()] + ([_Gpu()] if _os.environ.get("FAULT_GPU") else [])
'''
# A PEP 517 backend without requirements: pip builds it offline, and the build sleeps $FAULT_SLOW_SECONDS.
SLOW_BACKEND = '''import base64, hashlib, os, time, zipfile


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    time.sleep(float(os.environ.get("FAULT_SLOW_SECONDS", "0")))
    name = "slowpkg-1.0-py3-none-any.whl"
    files = {"slowpkg/__init__.py": "", "slowpkg-1.0.dist-info/METADATA":
             "Metadata-Version: 2.1\\nName: slowpkg\\nVersion: 1.0\\n",
             "slowpkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (path, digest, len(text.encode())))
    files["slowpkg-1.0.dist-info/RECORD"] = "\\n".join(record + ["slowpkg-1.0.dist-info/RECORD,,"]) + "\\n"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
    return name
'''


def _wheel(directory: Path, name: str, version: str, files: dict[str, str]) -> Path:
    info = f"{name}-{version}.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def _sdist(directory: Path) -> Path:
    sdist = directory / "slowpkg-1.0.tar.gz"
    files = {"pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
             "backend.py": SLOW_BACKEND,
             "PKG-INFO": "Metadata-Version: 2.1\nName: slowpkg\nVersion: 1.0\n"}
    with tarfile.open(sdist, "w:gz") as archive:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"slowpkg-1.0/{path}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return sdist


def write_index(root: Path, packages: dict[str, list[Path]]) -> str:
    """PEP 503 pages for the files in root/<name>/; returns the index's file:// URL."""
    for name, files in packages.items():
        links = "".join(f'<a href="{f.name}">{f.name}</a>\n' for f in files)
        (root / name / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
    (root / "index.html").write_text("".join(f'<a href="{n}/">{n}</a>\n' for n in packages))
    return root.as_uri()


def bisect_index(folder: Path, releases: dict[str, int], tag: str = "py3-none-any") -> str:
    """A local index of fake tensorflow releases, each with its own BN_UPDATES (see scenarios/versioned.py)."""
    root = folder / "simple"
    (root / "tensorflow").mkdir(parents=True)
    wheels = []
    for version, updates in releases.items():
        code = FAKE_TF.format(version=version) + f"\nBN_UPDATES = {updates}\n"
        wheel = _wheel(root / "tensorflow", "tensorflow", version, {"tensorflow/__init__.py": code})
        wheels.append(wheel.rename(wheel.with_name(wheel.name.replace("py3-none-any", tag))))
    return write_index(root, {"tensorflow": wheels})


@pytest.fixture(scope="session")
def fake_index(tmp_path_factory: pytest.TempPathFactory) -> str:
    """file:// URL of a PEP 503 index with fake tensorflow 2.15.1 and 2.14.1, and slowpkg 1.0 (an sdist)."""
    root = tmp_path_factory.mktemp("index") / "simple"
    for name in ("tensorflow", "slowpkg"):
        (root / name).mkdir(parents=True)
    packages = {"tensorflow": [_wheel(root / "tensorflow", "tensorflow", version,
                                      {"tensorflow/__init__.py": FAKE_TF.format(version=version)})
                               for version in ("2.15.1", "2.14.1")],
                "slowpkg": [_sdist(root / "slowpkg")]}
    return write_index(root, packages)


class Fault:
    """One test's results root, cache and scratch, and the real bnmatrix run against them."""

    def __init__(self, tmp_path: Path, index: str):
        self.dir = tmp_path
        self.index = index
        self.results = tmp_path / "results"
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self.env = {**os.environ, "BNMATRIX_CACHE": str(tmp_path / "cache"), "TMPDIR": str(self.tmp),
                    "FAULT_DIR": str(tmp_path), "COLUMNS": "200", "FAULT_HANG_TF": "", "FAULT_SLOW_SECONDS": "0"}
        self.env.pop("CI", None)

    def matrix(self, scenarios: list[str], timeout_s: float = 60, pins: list[str] | None = None,
               versions: tuple[str, ...] = ("2.15.1", "2.14.1"), extra: str = "") -> Path:
        path = self.dir / "matrix.yaml"
        lines = [f'  - {{tf: {v}, python: "{PYTHON}", pins: {json.dumps(pins or [])}}}' for v in versions]
        path.write_text(f"schema_version: 1\nsettings:\n  index_url: {self.index}\n  scenario_timeout_s: {timeout_s}\n"
                        f"  devices: [cpu]\n{extra}scenario_paths: [{SCENARIOS}]\nscenarios: {json.dumps(scenarios)}\n"
                        "versions:\n" + "\n".join(lines) + "\n")
        return path

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        """`bnmatrix run` as a user starts it (SIGINT acts even where the tests run as a background job)."""
        command = [sys.executable, "-m", "bnmatrix", "run", "--matrix", str(self.dir / "matrix.yaml"),
                   "--backend", "venv", "--jobs", "1", "--results", str(self.results), *args]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**self.env, **env}, cwd=self.dir,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def run(self, *args: str, timeout: float = 300, **env: str) -> tuple[int, str]:
        process = self.start(*args, **env)
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output

    def bnmatrix(self, *args: str, timeout: float = 300, **env: str) -> tuple[int, str]:
        """Any bnmatrix command, run as a user runs it, in this test's folder."""
        done = subprocess.run([sys.executable, "-m", "bnmatrix", *args], capture_output=True, text=True,
                              env={**self.env, **env}, cwd=self.dir, timeout=timeout)
        return done.returncode, done.stdout + done.stderr

    def runs(self) -> list[dict[str, Any]]:
        """Every run's manifest, oldest first: ordered by the manifest's start time, as bnmatrix orders them (run ids
        only carry whole seconds, and runs of these tests often start within the same second)."""
        manifests = [json.loads(p.read_text()) for p in self.results.glob("2*/manifest.json")]
        return sorted(manifests, key=lambda m: (m["started"], m["run_id"]))

    def cell(self, run: dict[str, Any], cell_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.results / run["run_id"] / "cells" / f"{cell_id}.json").read_text())
        return data

    def left_running(self, run_id: str) -> list[int]:
        """Processes started for `run_id` that still run (zombies waiting for a reaper do not count)."""
        alive = []
        for pid in tagged_processes(run_id):
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
        return alive


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")


def stopped_at_once(fault: Fault, process: subprocess.Popen[str], run_id: str, signum: int, code: int) -> str:
    """Send `signum` to a command once its run's scenario runs: it must end within 30 s with `code`; its output."""
    wait_for(lambda: fault.left_running(run_id), what="the scenario's process")
    started = time.monotonic()
    process.send_signal(signum)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == code, output
    assert time.monotonic() - started < 30
    return output


@pytest.fixture
def fault(tmp_path: Path, fake_index: str) -> Iterator[Fault]:
    require(find_interpreter(PYTHON)[0] is not None, f"no Python {PYTHON} for the fault cells")
    yield Fault(tmp_path, fake_index)
