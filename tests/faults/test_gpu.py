"""A GPU cell on the venv backend, for real but for the GPU: a fake nvidia-smi (an H100) on PATH and a fake
TensorFlow that lists a GPU (FAULT_GPU=1). The cell installs its TF with the `and-cuda` extra, runs, and records the
GPU it ran on and the CUDA JIT cache it used, which outlives the run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import fake_smi
from tests.faults.conftest import Fault

pytestmark = pytest.mark.faults


def test_a_gpu_cell_installs_cuda_as_wheels_and_records_its_gpu_and_jit_cache(fault: Fault) -> None:
    matrix = fault.matrix(["ok"], versions=("2.15.1", "2.14.1"))
    matrix.write_text(matrix.read_text().replace("devices: [cpu]", "devices: [gpu]"))
    path = f"{fake_smi(fault.dir / 'bin')}:{os.environ['PATH']}"
    code, output = fault.bnmatrix("run", "--matrix", "matrix.yaml", "--backend", "venv", "--jobs", "1", "--results",
                                  "results", PATH=path, FAULT_GPU="1")
    assert code == 0, output
    run = fault.runs()[-1]
    for tf in ("2.15.1", "2.14.1"):
        cell = fault.cell(run, f"tf-{tf}-gpu")
        assert cell["status"] == "ran" and cell["scenarios"]["ok"]["status"] == "updated", output
        assert cell["scenarios"]["ok"]["devices_seen"] == ["CPU", "GPU"]
        environment = cell["environment"]
        assert environment["gpus"] == ["NVIDIA H100 80GB HBM3 (compute capability 9.0, driver 550.54.15, 81559 MiB)"]
        cache = Path(environment["cuda_cache"])
        assert cache == fault.dir / "cache" / "cuda-cache" / "NVIDIA-H100-80GB-HBM3-driver-550.54.15" / f"tf-{tf}"
        assert cache.is_dir()  # kept for the next run
        setup = (fault.results / run["run_id"] / "logs" / f"tf-{tf}-gpu" / "setup.log").read_text()
        assert f"tensorflow[and-cuda]=={tf}" in setup  # CUDA and cuDNN as wheels (the fake release has none)
    code, output = fault.bnmatrix("run", "--matrix", "matrix.yaml", "--backend", "venv", "--results", "results",
                                  "--force", PATH="/usr/bin:/bin", FAULT_GPU="1")  # no nvidia-smi: not run
    assert "no GPU on this host (nvidia-smi lists none)" in output, output
