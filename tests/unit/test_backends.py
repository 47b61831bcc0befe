"""The backend registry: every backend module registers itself, auto tries them in order, and a backend added in
one file is chosen by name and by auto without a change anywhere else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bnmatrix import backends
from bnmatrix.backends import Backend, BackendKind, CellSession, Reproduction, Setup, backend_kinds, select_backend
from bnmatrix.config import Matrix, data_path
from bnmatrix.errors import BnMatrixError
from bnmatrix.plan import Cell, inputs_hash
from tests.conftest import fake_smi


def test_every_backend_module_registers_itself_whichever_was_imported_first() -> None:
    # The CLI imports the venv module before it asks the registry: the Docker backend must still be found.
    code = ("import sys, bnmatrix.backends.venv\nfrom bnmatrix.backends import backend_kinds\n"
            "print(' '.join(backend_kinds()), 'docker' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert shown == ["docker", "venv", "False"]  # in auto's order; docker-py itself is not imported to list them


class Recorder:
    """A third backend, as a plugin module would define it: serves every cell and records what it was asked."""

    name = "recorder"
    uses_images = False

    def __init__(self, setup: Setup):
        self.setup = setup
        self.closed = False

    def serves(self, cell: Cell) -> str | None:
        return None

    def serves_python(self, python: str) -> bool:
        return True

    def open(self, cell: Cell, setup_log: Path, report_step: Any) -> AbstractContextManager[CellSession]:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def recorder() -> Iterator[list[bool]]:
    """Registers the recorder kind (it opens only where `available[0]`) for one test."""
    available = [True]

    def open_(setup: Setup, chosen: bool) -> tuple[Backend | None, str]:
        return (Recorder(setup), "records") if available[0] else (None, "nothing to record with")

    backends.register(BackendKind(name="recorder", summary="records", auto_order=1, open=open_,
                                  reproduce=lambda what: f"replay {what.scenario}"))
    try:
        yield available
    finally:
        del backends._KINDS["recorder"]


def test_a_backend_registered_in_one_place_is_chosen_by_name_and_first_by_auto(recorder: list[bool],
                                                                               tmp_path: Path) -> None:
    setup = Setup(matrix=Matrix.from_file(data_path("matrix.yaml")), run_id="r", cache_dir=tmp_path)
    assert list(backend_kinds())[0] == "recorder"
    backend, why = select_backend("recorder", setup)
    assert isinstance(backend, Recorder) and backend.setup is setup and why == "recorder backend (chosen): records"
    backend, why = select_backend("auto", setup)
    assert isinstance(backend, Recorder) and why == "recorder backend (auto): records"
    recorder[0] = False  # auto passes it by and says why
    backend, why = select_backend("auto", setup)
    assert backend.name != "recorder" and why.startswith(f"{backend.name} backend (auto: nothing to record with")
    with pytest.raises(BnMatrixError, match="--backend recorder: nothing to record with"):
        select_backend("recorder", setup)
    with pytest.raises(BnMatrixError, match="--backend nosuch: unknown; expected auto or one of recorder, docker, "
                                            "venv"):
        select_backend("nosuch", setup)
    reproduction = Reproduction(cell=Cell(
        id="tf-1.15.5-cpu", tf="1.15.5", python="3.7", device="cpu", variant=None, requirements=(), env={}, image="",
        requested_image="", steps=100, scenarios=("s",), index_url=""), environment={}, scenario="s", run="r",
        folder="results/r", code=None, again="")
    assert backend_kinds()["recorder"].reproduce(reproduction) == "replay s"


def test_the_cli_offers_every_registered_backend(recorder: list[bool]) -> None:
    from bnmatrix.cli import build_parser

    parser = build_parser()
    for command in ("plan", "run", "bisect"):
        actions = parser._subparsers._group_actions[0].choices[command]._actions  # type: ignore[union-attr]
        (backend,) = [a for a in actions if "--backend" in a.option_strings]
        assert list(backend.choices) == ["auto", "recorder", "docker", "venv"], command


def test_the_hosts_gpus_come_from_nvidia_smi_with_what_its_driver_can_say(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from bnmatrix.backends.venv import jit_cache
    from bnmatrix.host import Gpu, host_gpus
    from bnmatrix.plan import plan

    monkeypatch.setenv("PATH", f"{fake_smi(tmp_path / 'bin')}:/usr/bin:/bin")
    (gpu,) = host_gpus()
    assert gpu == Gpu("NVIDIA H100 80GB HBM3", "9.0", "550.54.15", "81559 MiB", "12.4")  # CUDA: nvidia-smi's header
    assert gpu.describe() == "NVIDIA H100 80GB HBM3 (compute capability 9.0, driver 550.54.15, 81559 MiB)"
    monkeypatch.setenv("FAKE_SMI_OLD", "1")
    assert host_gpus() == [Gpu("NVIDIA H100 80GB HBM3")]  # an older driver: the name from nvidia-smi -L
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert host_gpus() == []
    (cell,) = plan(Matrix.from_file(data_path("matrix.yaml")), select=["tf-2.15.1-gpu"])
    cache = jit_cache(tmp_path / "cache", [gpu], cell)
    assert cache == {"CUDA_CACHE_PATH": str(tmp_path / "cache" / "cuda-cache" / "NVIDIA-H100-80GB-HBM3-driver-550.54.15"
                                            / "tf-2.15.1"), "CUDA_CACHE_MAXSIZE": str(4 << 30)}
    assert Path(cache["CUDA_CACHE_PATH"]).is_dir()


def test_on_a_gpu_host_the_venv_backend_installs_cuda_as_wheels_from_2_14_and_leaves_older_gpu_cells_to_containers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """With a fake nvidia-smi on PATH (no GPU here): a 2.14+ GPU cell installs tensorflow[and-cuda] at the cell's exact
    version, an older one is not run by this backend, and plan --json shows what each backend installs."""
    from bnmatrix.backends.venv import VenvBackend, installs
    from bnmatrix.cli import main
    from bnmatrix.plan import plan

    monkeypatch.setenv("PATH", f"{fake_smi(tmp_path / 'bin')}:{os.environ['PATH']}")
    cells = {c.id: c for c in plan(Matrix.from_file(data_path("matrix.yaml")), select=["tf-2.1[35].1-*"])}
    assert installs(cells["tf-2.15.1-gpu"]) == ("tensorflow[and-cuda]==2.15.1", "numpy<2")
    assert installs(cells["tf-2.15.1-cpu"]) == cells["tf-2.15.1-cpu"].requirements == ("tensorflow==2.15.1", "numpy<2")
    backend = VenvBackend(tmp_path / "cache")
    assert backend.serves(cells["tf-2.13.1-gpu"]) == (
        "TF 2.13.1 has no tensorflow[and-cuda] (CUDA and cuDNN come as wheels from 2.14 on): its GPU cell needs TF's "
        "GPU image, which has CUDA (--backend docker)")
    assert backend.serves(cells["tf-2.15.1-gpu"]) == backend.serves(cells["tf-2.15.1-cpu"])  # served as the CPU cell
    assert main(["plan", "--select", "tf-2.15.1-gpu", "--json"]) == 0
    (shown,) = json.loads(capsys.readouterr().out)
    assert shown["installs"] == {"docker": ["tensorflow==2.15.1", "numpy<2"],
                                 "venv": ["tensorflow[and-cuda]==2.15.1", "numpy<2"]}
    # and what the release does on this host's GPU: machine code for sm_80 at most, PTX compute_80 for the H100
    assert shown["gpu"]["on"] == "NVIDIA H100 80GB HBM3 (compute capability 9.0, driver 550.54.15, 81559 MiB)"
    assert shown["gpu"]["outcome"] == "jit" and "compute_80" in shown["gpu"]["reason"]
    assert main(["plan", "--select", "tf-2.15.1-cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["gpu"] is None  # a CPU cell
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvidia-smi: no GPU, whatever the version
    assert VenvBackend(tmp_path / "cache").serves(cells["tf-2.15.1-gpu"]) == (
        "no GPU on this host (nvidia-smi lists none); --skip '*-gpu*' leaves GPU cells out")


def test_plan_says_what_each_gpu_cells_release_does_on_this_hosts_gpu(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A T4 (fake nvidia-smi): 2.15.1 runs natively, 2.21.0 too (its image's CUDA 12.5 on a CUDA 12.2 driver); on the
    H100 2.15.1 runs after a PTX JIT, which plan's table and its note say."""
    from bnmatrix.cli import main

    monkeypatch.setenv("PATH", f"{fake_smi(tmp_path / 'bin')}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SMI_GPU", "t4")
    assert main(["plan", "--select", "tf-2.15.1-gpu", "--select", "tf-2.21.0-gpu", "--json"]) == 0
    shown = {cell["id"]: cell["gpu"] for cell in json.loads(capsys.readouterr().out)}
    assert {cell_id: gpu["outcome"] for cell_id, gpu in shown.items()} == {"tf-2.21.0-gpu": "native",
                                                                           "tf-2.15.1-gpu": "native"}
    assert shown["tf-2.15.1-gpu"]["on"] == "Tesla T4 (compute capability 7.5, driver 535.183.01, 15360 MiB)"
    monkeypatch.delenv("FAKE_SMI_GPU")
    monkeypatch.setenv("COLUMNS", "300")  # the table on one line per cell
    assert main(["plan", "--select", "tf-2.15.1-gpu", "--backend", "venv"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "✔ runs after a PTX JIT" in printed
    assert ("tf-2.15.1-gpu: TF 2.15.1 (CUDA 12.2, cuDNN 8) has machine code NVIDIA H100 80GB HBM3 (compute capability "
            "9.0) runs for 0% of its kernels") in printed


def test_a_cell_resolves_as_of_its_release_but_for_what_it_pins_from_below(tmp_path: Path) -> None:
    """matrix.yaml released: 2.21.0 uploaded 2026-03-06T17:22:44Z, plus the 7 days' grace: uv's cutoff; tf_keras
    2.21.0 came out 12 days after TF 2.21.0, so what a cell pins from below is exempt; the latest variant has none."""
    from bnmatrix.backends import resolution_flags
    from bnmatrix.backends.docker import render_script
    from bnmatrix.plan import plan

    matrix = Matrix.from_file(data_path("matrix.yaml"))
    cells = {c.id: c for c in plan(matrix, select=["tf-2.21.0-cpu*"])}
    assert cells["tf-2.21.0-cpu"].exclude_newer == "2026-03-13T17:22:44Z"
    assert resolution_flags(cells["tf-2.21.0-cpu-tfkeras"]) == [
        "--exclude-newer", "2026-03-13T17:22:44Z", "--exclude-newer-package", "setuptools=2100-01-01T00:00:00Z",
        "--exclude-newer-package", "wheel=2100-01-01T00:00:00Z",
        "--exclude-newer-package", "tensorflow=2100-01-01T00:00:00Z",
        "--exclude-newer-package", "tf_keras=2100-01-01T00:00:00Z"]
    assert cells["tf-2.21.0-cpu-latest"].exclude_newer is None and resolution_flags(cells["tf-2.21.0-cpu-latest"]) == []
    assert "--exclude-newer 2026-03-13T17:22:44Z" in render_script(cells["tf-2.21.0-cpu"])
    # a cell without a date (an entry sync has not dated) resolves as of the day it runs, and hashes as before
    undated = replace(cells["tf-2.21.0-cpu"], exclude_newer=None)
    assert "exclude_newer" in undated.describe() and undated.inputs_hash({}) == inputs_hash(
        {k: v for k, v in undated.describe().items() if k != "exclude_newer"}, {})


def test_a_cell_waits_for_its_zygotes_import_and_never_for_a_zygote_that_ended(tmp_path: Path) -> None:
    """The run's scenario slots serve other cells while a zygote imports TensorFlow: the cell sends its scenarios
    only once the zygote says how it will start them. A zygote that listened, then died, is not waited for (its
    scenarios then run fresh); one that never listened gives no socket."""
    imported = threading.Event()

    def importing() -> Iterator[bytes]:
        yield b"bnmatrix-zygote: listening on /tmp/z.sock (pid 7)\n"
        imported.wait(30)  # TensorFlow's import
        yield b"bnmatrix-zygote: forking each scenario\n"

    output = backends.ZygoteOutput(tmp_path / "setup.log", importing())
    answers: list[bool] = []
    waiting = threading.Thread(target=lambda: answers.append(output.wait(timeout_s=30)))
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive() and output.listening.is_set()  # it listens, and the cell still waits
    imported.set()
    waiting.join(30)
    assert answers == [True]
    assert "forking each scenario" in (tmp_path / "setup.log").read_text()
    died = backends.ZygoteOutput(tmp_path / "died.log", iter([b"bnmatrix-zygote: listening on /tmp/z.sock\n"]))
    assert died.wait(timeout_s=30) is True
    never = backends.ZygoteOutput(tmp_path / "never.log", iter([b"Traceback: no TensorFlow\n"]))
    assert never.wait(timeout_s=30) is False
