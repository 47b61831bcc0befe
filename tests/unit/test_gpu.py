"""Which GPU runs which release: the shipped facts (src/bnmatrix/gpu.yaml, measured from TF's GPU wheels) against
GPUs as nvidia-smi describes them, and the fat-binary reader those facts were measured with."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bnmatrix.gpu import CANNOT, JIT, NATIVE, UNKNOWN, fatbin_kernels, load_facts, predict, table
from bnmatrix.host import Gpu, find_interpreter, parse_gpus
from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
H100 = Gpu("NVIDIA H100 80GB HBM3", "9.0", "550.54.15", "81559 MiB", "12.4")
A100 = Gpu("NVIDIA A100-SXM4-40GB", "8.0", "550.54.15", "40960 MiB", "12.4")
T4 = Gpu("Tesla T4", "7.5", "535.183.01", "15360 MiB", "12.2")
V100 = Gpu("Tesla V100-SXM2-16GB", "7.0", "535.183.01", "16384 MiB", "12.2")
K40 = Gpu("Tesla K40c", "3.5", "470.82.01", "11441 MiB", "11.4")


def test_every_tf_minor_of_the_matrix_has_facts_with_a_source() -> None:
    facts = load_facts()
    text = (REPO / "matrix.yaml").read_text()
    minors = {".".join(v.split(".")[:2]) for v in re.findall(r"\{tf: (\d+\.\d+\.\d+),", text)}
    assert minors <= set(facts.builds), minors - set(facts.builds)
    for build in facts.builds.values():
        assert build.fatbins > 0 and build.sass and build.ptx and build.source
        assert max(build.sass.values()) <= build.fatbins and facts.cuda_of(build.cuda) is not None, build


@pytest.mark.parametrize(("tf", "gpu", "outcome", "says"), [
    # CUDA 10's cuBLAS and cuDNN know no Ampere or Hopper: what users of 1.13-1.15 on A100s report.
    ("1.15.5", H100, CANNOT, "the cuBLAS and cuDNN of CUDA 10.0 have no code for compute capability 9.0"),
    ("1.15.5", A100, CANNOT, "CUDA 10.0 ends at 7.5"),
    ("1.15.5", T4, NATIVE, "for all its kernels"),  # sm_70 machine code runs on 7.5
    ("1.15.5", V100, NATIVE, "for all its kernels"),
    # 1.12.3 was built for the K80 alone (sm_37, compute_37): every newer GPU compiles all of it.
    ("1.12.3", V100, JIT, "for 0% of its kernels"),
    ("1.12.3", K40, CANNOT, "no PTX this GPU can use"),  # sm_37 code needs a 3.7 at least, so does its PTX
    # 2.8-2.15 carry sm_80 machine code for only part of their kernels: an A100 compiles the rest.
    ("2.15.1", A100, JIT, "the rest compile from PTX compute_80"),
    ("2.15.1", H100, JIT, "compute_80"),
    ("2.15.1", T4, NATIVE, "for all its kernels"),
    ("2.4.4", A100, NATIVE, "for all its kernels"),
    ("2.21.0", T4, NATIVE, "for all its kernels"),
    ("2.21.0", K40, CANNOT, "needs NVIDIA driver 525.60.13 or newer"),
])
def test_what_a_release_does_on_a_gpu(tf: str, gpu: Gpu, outcome: str, says: str) -> None:
    prediction = predict(tf, gpu)
    assert prediction.outcome == outcome, prediction
    assert says in prediction.reason, prediction.reason


def test_an_older_driver_of_the_same_cuda_major_runs_the_image_with_its_check_off_but_compiles_no_newer_ptx() -> None:
    """CUDA minor-version compatibility: a CUDA 12.2 driver runs TF 2.18's CUDA 12.5 (NVIDIA_DISABLE_REQUIRES for the
    image), but cannot compile PTX made by CUDA 12.5."""
    on_t4 = predict("2.18.1", T4)
    assert (on_t4.outcome, on_t4.disable_requires) == (NATIVE, True)
    old_h100 = Gpu("NVIDIA H100 80GB HBM3", "9.0", "535.183.01", "81559 MiB", "12.2")
    assert predict("2.15.1", old_h100).disable_requires is False
    late = predict("2.18.1", Gpu("NVIDIA H200", "9.0", "535.183.01", "143771 MiB", "12.2"))
    if late.outcome != NATIVE:  # where 2.18 needs PTX on Hopper, an older 12.x driver cannot compile it
        assert late.outcome == CANNOT and "supports only CUDA 12.2" in late.reason


def test_what_cannot_be_predicted_says_why() -> None:
    assert predict("3.0.0", H100).outcome == UNKNOWN
    unknown = predict("2.15.1", Gpu("NVIDIA H100 80GB HBM3"))  # a driver whose nvidia-smi has no compute_cap
    assert unknown.outcome == UNKNOWN and "does not report the compute capability" in unknown.reason


def test_nvidia_smi_output_becomes_gpus() -> None:
    header = "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |"
    query = "NVIDIA H100 80GB HBM3, 9.0, 550.54.15, 81559 MiB\nTesla T4, [N/A], 535.1, 15360 MiB\n"
    assert parse_gpus(query, header) == [H100, Gpu("Tesla T4", None, "535.1", "15360 MiB", "12.4")]
    assert parse_gpus("", header) == [] and parse_gpus(query, "")[0].cuda is None


def _fatbin(entries: list[tuple[int, int, bytes]]) -> bytes:
    """A CUDA fat binary: its header, then per entry (kind 1 PTX / 2 machine code, architecture, payload) a 64-byte
    header as nvcc writes it (kind, version, header size, payload size, ..., architecture at offset 28)."""
    body = b""
    for kind, architecture, payload in entries:
        header = struct.pack("<HHIQ", kind, 0x101, 64, len(payload)) + b"\0" * 12 + struct.pack("<I", architecture)
        body += header + b"\0" * (64 - len(header)) + payload
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body


class _Trickle(io.RawIOBase):
    """A stream that gives at most `size` bytes per read: fat binaries across every chunk boundary."""

    def __init__(self, data: bytes, size: int):
        self.data, self.size = data, size

    def read(self, size: int = -1) -> bytes:
        chunk, self.data = self.data[:self.size], self.data[self.size:]
        return chunk


@pytest.mark.parametrize("size", [1 << 24, 7, 64])
def test_the_fat_binaries_of_a_library_are_counted_by_kind_and_architecture(size: int) -> None:
    library = (b"\x7fELF" + b"x" * 100 + _fatbin([(2, 70, b"sass" * 10), (2, 80, b"s" * 33), (1, 80, b"ptx\0")])
               + b"y" * 50 + _fatbin([(2, 70, b"k" * 9), (1, 80, b"p")]) + struct.pack("<I", 0xBA55ED50) + b"\7\0junk")
    found = fatbin_kernels(_Trickle(library, size))
    assert dict(found) == {("fatbins", 0): 2, ("sm", 70): 2, ("sm", 80): 1, ("compute", 80): 2}


def test_the_scenarios_helper_zygote_and_warm_up_are_python_3_5_syntax_for_the_oldest_gpu_images() -> None:
    """TF's GPU images up to 1.13 have Python 3.5 (their -gpu-py3 tags, Ubuntu 16.04): every file a cell runs must
    parse there. Python 3.12+ no longer checks f-strings against feature_version, so an older one checks."""
    check = ("import ast, pathlib, sys\n"
             "for path in sorted(pathlib.Path(sys.argv[1]).glob('*.py')):\n"
             "    ast.parse(path.read_text(), str(path), feature_version=(3, 5))\n")
    python = sys.executable if sys.version_info < (3, 12) else None
    for version in ("3.11", "3.10", "3.9", "3.8"):
        if python is None:
            found, _ = find_interpreter(version)
            python = found.path if found else None
    require(python is not None, "no Python 3.8 to 3.11 here to check Python 3.5 syntax with")
    done = subprocess.run([str(python), "-c", check, str(REPO / "scenarios")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_table_in_docs_is_the_shipped_facts() -> None:
    text = (REPO / "docs" / "gpu.md").read_text()
    shown = text.split("<!-- gpu table: python -m bnmatrix.gpu --table -->\n", 1)[1]
    shown = shown.split("<!-- end of gpu table -->")[0]
    assert shown == table(), "docs/gpu.md's table is stale: python -m bnmatrix.gpu --table"
