"""The container backend's pure parts: install scripts (golden files), tags, labels, run options,
GPU requests, image substitution and the backend choice. Real containers: tests/e2e."""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from bnmatrix.backends import Setup, select_backend
from bnmatrix.backends.docker import image_tag, render_script, run_flags, run_options
from bnmatrix.backends.venv import VenvBackend
from bnmatrix.config import ContainerSettings, Matrix
from bnmatrix.errors import BnMatrixError
from bnmatrix.host import Gpu
from bnmatrix.intake import start_ticks
from bnmatrix.plan import Cell, plan

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    """The shipped matrix without the image-map.yaml a checkout may have beside it."""
    copy = tmp_path_factory.mktemp("matrix") / "matrix.yaml"
    copy.write_text((REPO / "matrix.yaml").read_text())
    return Matrix.from_file(copy)


def cell(matrix: Matrix, cell_id: str, image_map: dict[str, str] | None = None) -> Cell:
    (found,) = plan(matrix, select=[cell_id], image_map=image_map)
    return found


@pytest.mark.parametrize("cell_id", ["tf-1.15.5-cpu", "tf-1.15.5-gpu", "tf-2.16.2-cpu-tfkeras", "tf-2.15.1-gpu"])
def test_install_script_matches_its_golden_file(matrix: Matrix, cell_id: str) -> None:
    rendered = render_script(cell(matrix, cell_id))
    golden = GOLDEN / f"cell.sh.{cell_id}"
    if os.environ.get("BNMATRIX_UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert rendered == golden.read_text()


def test_install_script_quotes_requirements_for_the_shell(matrix: Matrix) -> None:
    text = render_script(cell(matrix, "tf-1.15.5-cpu"))
    assert "tensorflow==1.15.5 'numpy<1.19' 'protobuf<3.20' 'h5py<3'\n" in text
    assert text.startswith("#!/bin/sh\n# bnmatrix cell tf-1.15.5-cpu") and "on python:3.7-slim.\n" in text
    assert "index=https://pypi.org/simple\n" in text


def test_tags_are_content_addressed(matrix: Matrix) -> None:
    a = cell(matrix, "tf-1.15.5-cpu")
    assert image_tag(a, render_script(a)) == image_tag(a, render_script(a))
    assert image_tag(a, render_script(a)).startswith("bnmatrix-cell:1.15.5-cpu-")
    pinned = replace(a, requirements=(*a.requirements, "six==1.16.0"))
    assert image_tag(pinned, render_script(pinned)) != image_tag(a, render_script(a))
    moved = replace(a, image="bnmatrix-local/python:3.7")
    assert image_tag(moved, render_script(moved)) != image_tag(a, render_script(a))


def test_run_options_are_hardened_by_default(matrix: Matrix) -> None:
    options = run_options(cell(matrix, "tf-1.15.5-cpu"), ContainerSettings(), "run-1", "vol", 1200)
    assert options["command"] == ["sleep", "1200"]  # the container ends by itself, even if bnmatrix is killed
    assert options["network_mode"] == "none"
    assert options["read_only"] is True
    assert options["tmpfs"] == {"/tmp": "rw,exec,size=2g,mode=1777"}
    assert options["user"] == "65534:65534"
    assert options["cap_drop"] == ["ALL"]
    assert options["security_opt"] == ["no-new-privileges"]
    assert options["mem_limit"] == options["memswap_limit"] == "6g" and options["pids_limit"] == 1024
    assert options["nano_cpus"] == (os.cpu_count() or 1) * 10**9
    assert {(u["Name"], u["Soft"], u["Hard"]) for u in options["ulimits"]} == {("nofile", 4096, 4096),
                                                                               ("nproc", 4096, 4096)}
    assert options["volumes"] == {"vol": {"bind": "/scenarios", "mode": "ro"}}
    assert options["labels"] == {"org.bnmatrix.tool": "bnmatrix", "org.bnmatrix.cell": "tf-1.15.5-cpu",
                                 "org.bnmatrix.tf": "1.15.5", "org.bnmatrix.device": "cpu",
                                 "org.bnmatrix.run": "run-1", "org.bnmatrix.host": socket.gethostname(),
                                 "org.bnmatrix.pid": str(os.getpid()),
                                 "org.bnmatrix.started-ticks": str(start_ticks(os.getpid()))}
    assert options["environment"]["CUDA_VISIBLE_DEVICES"] == ""
    assert "device_requests" not in options


def test_run_options_follow_matrix_settings(tmp_path: Path) -> None:
    text = (REPO / "matrix.yaml").read_text().replace(
        "settings:\n", "settings:\n  container: {network: bridge, read_only: false, user: '1000:1000', "
        "memory: 2g, pids: 64, drop_capabilities: false, no_new_privileges: false, cpus: 1.5, nofile: 256, "
        "nproc: 512}\n", 1)
    (tmp_path / "matrix.yaml").write_text(text)
    custom = Matrix.from_file(tmp_path / "matrix.yaml")
    options = run_options(cell(custom, "tf-1.15.5-cpu"), custom.container, "r", "v", 60)
    assert (options["network_mode"], options["read_only"], options["user"]) == ("bridge", False, "1000:1000")
    assert options["nano_cpus"] == 1_500_000_000
    assert {(u["Name"], u["Soft"]) for u in options["ulimits"]} == {("nofile", 256), ("nproc", 512)}
    assert (options["mem_limit"], options["pids_limit"]) == ("2g", 64)
    assert "cap_drop" not in options and "security_opt" not in options


H100 = Gpu("NVIDIA H100 80GB HBM3", "9.0", "550.54.15", "81559 MiB", "12.4")
T4 = Gpu("Tesla T4", "7.5", "535.183.01", "15360 MiB", "12.2")


def test_gpu_cells_request_every_gpu_with_a_jit_cache_volume_per_gpu_driver_and_release(matrix: Matrix) -> None:
    options = run_options(cell(matrix, "tf-2.15.1-gpu"), ContainerSettings(), "r", "v", 60, [H100])
    (request,) = options["device_requests"]
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
    environment = options["environment"]
    assert "CUDA_VISIBLE_DEVICES" not in environment and "NVIDIA_DISABLE_REQUIRES" not in environment
    assert (environment["CUDA_CACHE_PATH"], environment["CUDA_CACHE_MAXSIZE"]) == ("/cuda-cache", str(4 << 30))
    volume = "bnmatrix-cuda-cache-NVIDIA-H100-80GB-HBM3-driver-550.54.15-tf-2.15.1"
    assert options["volumes"][volume] == {"bind": "/cuda-cache", "mode": "rw"}
    assert options["volumes"]["v"]["mode"] == "ro"  # the scenarios stay read-only
    flags = run_flags(options)
    assert flags[flags.index("--gpus"):flags.index("--gpus") + 2] == ["--gpus", "all"]
    assert f"{volume}:/cuda-cache" in flags and "CUDA_CACHE_PATH=/cuda-cache" in flags
    cpu = run_options(cell(matrix, "tf-2.15.1-cpu"), ContainerSettings(), "r", "v", 60, [H100])
    assert "device_requests" not in cpu and list(cpu["volumes"]) == ["v"]
    assert "CUDA_CACHE_PATH" not in cpu["environment"] and cpu["environment"]["CUDA_VISIBLE_DEVICES"] == ""
    assert "mkdir -p /cuda-cache && chmod 1777 /cuda-cache" in render_script(cell(matrix, "tf-2.15.1-gpu"))
    assert "cuda-cache" not in render_script(cell(matrix, "tf-2.15.1-cpu"))


def test_the_images_cuda_check_is_off_only_where_the_driver_runs_its_cuda_by_minor_version_compatibility(
        matrix: Matrix) -> None:
    """A T4 whose driver's CUDA is 12.2: TF 2.18's image (CUDA 12.5) would refuse it, NVIDIA_REQUIRE_CUDA; 2.15's
    (12.2) would not, nor would any on the H100's driver (CUDA 12.4) for 2.15."""
    older = run_options(cell(matrix, "tf-2.18.1-gpu"), ContainerSettings(), "r", "v", 60, [T4])
    assert older["environment"]["NVIDIA_DISABLE_REQUIRES"] == "true"
    for name, gpu in (("tf-2.15.1-gpu", T4), ("tf-2.15.1-gpu", H100)):
        assert "NVIDIA_DISABLE_REQUIRES" not in run_options(cell(matrix, name), ContainerSettings(), "r", "v", 60,
                                                            [gpu])["environment"]


def test_image_substitution_from_option_and_overlay_file(tmp_path: Path, matrix: Matrix) -> None:
    mapped = cell(matrix, "tf-1.15.5-cpu", {"python:3.7-slim": "bnmatrix-local/python:3.7"})
    assert (mapped.image, mapped.requested_image) == ("bnmatrix-local/python:3.7", "python:3.7-slim")
    assert "on bnmatrix-local/python:3.7.\n" in render_script(mapped)
    (tmp_path / "matrix.yaml").write_text((REPO / "matrix.yaml").read_text())
    (tmp_path / "image-map.yaml").write_text("python:3.7-slim: mirror.example/python:3.7-slim\n")
    overlaid = Matrix.from_file(tmp_path / "matrix.yaml")
    assert cell(overlaid, "tf-1.15.5-cpu").image == "mirror.example/python:3.7-slim"
    assert cell(overlaid, "tf-1.15.5-cpu", {"python:3.7-slim": "other:1"}).image == "other:1"  # option wins


def test_a_bad_overlay_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "matrix.yaml").write_text((REPO / "matrix.yaml").read_text())
    (tmp_path / "image-map.yaml").write_text("python:3.7-slim: bnmatrix-local/python:3.7\npython:3.11-slim: [x]\n")
    with pytest.raises(BnMatrixError, match=r"image-map.yaml:2: python:3.11-slim: found a list, expected an image"):
        Matrix.from_file(tmp_path / "matrix.yaml")


def test_auto_falls_back_to_venv_without_a_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  matrix: Matrix) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    backend, why = select_backend("auto", Setup(matrix=matrix, run_id="r", cache_dir=tmp_path))
    assert isinstance(backend, VenvBackend)
    assert why.startswith("venv backend (auto: no Docker daemon answered")
    with pytest.raises(BnMatrixError, match="--backend docker: no Docker daemon answered") as caught:
        select_backend("docker", Setup(matrix=matrix, run_id="r", cache_dir=tmp_path))
    assert caught.value.exit_code == 2
    backend, why = select_backend("venv", Setup(matrix=matrix, run_id="r", cache_dir=tmp_path))
    assert isinstance(backend, VenvBackend) and why.startswith("venv backend (chosen)")
