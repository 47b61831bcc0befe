"""GPU cells on the venv backend, for real but for the GPU: a fake nvidia-smi (an H100, or one with an old driver) on
PATH and a fake TensorFlow that lists a GPU (FAULT_GPU=1) and, with FAULT_PTX_JIT=S, warns of a PTX JIT as TF does
and takes S seconds over it. A cell installs its TF with the `and-cuda` extra, warms up (timed, outside the scenario
timeout), runs, and records the GPU, the prediction and the CUDA JIT cache it used, which outlives the run; a cell
predicted not to run on the GPU is not started unless asked for by name, and then its failures say why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import fake_smi
from tests.faults.conftest import Fault

pytestmark = pytest.mark.faults


def test_a_gpu_cell_installs_cuda_as_wheels_warms_up_and_records_its_gpu_and_jit_cache(fault: Fault) -> None:
    matrix = fault.matrix(["ok"], versions=("2.15.1", "2.14.1"))
    matrix.write_text(matrix.read_text().replace("devices: [cpu]", "devices: [gpu]"))
    path = f"{fake_smi(fault.dir / 'bin')}:{os.environ['PATH']}"
    code, output = fault.bnmatrix("run", "--matrix", "matrix.yaml", "--backend", "venv", "--jobs", "1", "--results",
                                  "results", PATH=path, FAULT_GPU="1", FAULT_PTX_JIT="1.5")
    assert code == 0, output
    run = fault.runs()[-1]
    for tf in ("2.15.1", "2.14.1"):
        cell = fault.cell(run, f"tf-{tf}-gpu")
        assert cell["status"] == "ran" and cell["scenarios"]["ok"]["status"] == "updated", output
        assert cell["scenarios"]["ok"]["devices_seen"] == ["CPU", "GPU"]
        environment = cell["environment"]
        assert environment["gpus"] == ["NVIDIA H100 80GB HBM3 (compute capability 9.0, driver 550.54.15, 81559 MiB)"]
        # Both releases carry machine code up to sm_80 and PTX compute_80 (gpu.yaml): an H100 compiles the PTX.
        assert environment["gpu_prediction"]["outcome"] == "jit", environment
        assert "compute_80" in environment["gpu_prediction"]["reason"]
        warmup = environment["warmup"]
        assert warmup["jit"] is True and warmup["seconds"] >= 1.5, warmup  # the fake's JIT warning and its time
        log = fault.results / run["run_id"] / "logs" / f"tf-{tf}-gpu" / "warmup.log"
        assert "jit-compiled from PTX" in log.read_text()
        cache = Path(environment["cuda_cache"])
        assert cache == fault.dir / "cache" / "cuda-cache" / "NVIDIA-H100-80GB-HBM3-driver-550.54.15" / f"tf-{tf}"
        assert cache.is_dir()  # kept for the next run
        setup = (fault.results / run["run_id"] / "logs" / f"tf-{tf}-gpu" / "setup.log").read_text()
        assert f"tensorflow[and-cuda]=={tf}" in setup  # CUDA and cuDNN as wheels (the fake release has none)
    code, output = fault.bnmatrix("report", "--results", "results", "--out", "site")
    assert code == 0, output
    page = (fault.dir / "site" / "cells" / "tf-2.15.1-gpu.html").read_text()
    assert "runs after a PTX JIT" in page and "TensorFlow compiled PTX for this GPU" in page
    assert (fault.dir / "site" / "cells" / "logs" / "tf-2.15.1-gpu" / "warmup.log").is_file()
    code, output = fault.bnmatrix("run", "--matrix", "matrix.yaml", "--backend", "venv", "--results", "results",
                                  "--force", PATH="/usr/bin:/bin", FAULT_GPU="1")  # no nvidia-smi: not run
    assert "no GPU on this host (nvidia-smi lists none)" in output, output


def test_a_gpu_cell_predicted_not_to_run_starts_only_when_named_and_then_says_why_it_fails(fault: Fault) -> None:
    """An H100 whose driver (470, CUDA 11.4) is older than TF 2.15's CUDA 12.2 needs (525.60.13)."""
    matrix = fault.matrix(["ok", "abort"], versions=("2.15.1",))
    matrix.write_text(matrix.read_text().replace("devices: [cpu]", "devices: [gpu]"))
    env = {"PATH": f"{fake_smi(fault.dir / 'bin')}:{os.environ['PATH']}", "FAULT_GPU": "1",
           "FAKE_SMI_DRIVER": "470.82.01"}
    why = ("TF 2.15.1 (CUDA 12.2, cuDNN 8) needs NVIDIA driver 525.60.13 or newer; NVIDIA H100 80GB HBM3 has driver "
           "470.82.01")
    code, output = fault.bnmatrix("plan", "--matrix", "matrix.yaml", "--backend", "venv", **env)
    assert code == 0 and "not run" in output and why in " ".join(output.split()), output
    code, output = fault.bnmatrix("run", "--matrix", "matrix.yaml", "--backend", "venv", "--results", "results", **env)
    assert code == 0, output  # not asked for: left out, and the run succeeds
    cell = fault.cell(fault.runs()[-1], "tf-2.15.1-gpu")
    assert cell["status"] == "not-run" and cell["reason"].startswith(why), cell["reason"]
    assert "--select tf-2.15.1-gpu runs it anyway" in cell["reason"]
    code, output = fault.bnmatrix("run", "--matrix", "matrix.yaml", "--backend", "venv", "--results", "results",
                                  "--select", "tf-2.15.1-gpu", **env)
    assert code == 0 and "abort" in output, output  # asked for by name: it runs
    cell = fault.cell(fault.runs()[-1], "tf-2.15.1-gpu")
    assert cell["status"] == "ran" and cell["environment"]["gpu_prediction"]["outcome"] == "cannot"
    assert cell["scenarios"]["ok"]["status"] == "updated"  # the fake has no CUDA to fail
    failed = cell["scenarios"]["abort"]
    assert failed["status"] == "error" and f"bnmatrix predicted this: {why}" in failed["reason"], failed
