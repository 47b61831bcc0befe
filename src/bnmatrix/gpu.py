"""Which GPU can run which TensorFlow release: the facts of each release's CUDA build (gpu.yaml, measured from its
GPU wheels) against a GPU's compute capability and driver, as a prediction `bnmatrix plan` shows and a run obeys.

Kernels: machine code (SASS) for compute capability X.Y runs on X.Z with Z >= Y; PTX for X.Y is compiled by the
driver for any newer GPU when first used (a JIT that can take many minutes, kept in CUDA's compute cache).
`python -m bnmatrix.gpu tensorflow==2.21.0 ...` measures a release's facts from its GPU wheel on PyPI.
"""

from __future__ import annotations

import collections
import io
import json
import struct
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from packaging.version import InvalidVersion, Version

from bnmatrix.errors import BnMatrixError
from bnmatrix.host import Gpu

FACTS_FILE = "gpu.yaml"
NATIVE, JIT, CANNOT, UNKNOWN = "native", "jit", "cannot", "unknown"
FULL = 0.99  # the share of a release's kernels with machine code for a GPU that counts as all of them


@dataclass(frozen=True)
class Build:
    """The CUDA build of one TF minor release (its newest patch's GPU wheel): how many CUDA fat binaries its
    libraries hold (about one per kernel source file), and in how many of them each architecture has code."""

    minor: str
    cuda: str  # "12.5.1"
    cudnn: str
    fatbins: int
    sass: dict[int, int]  # compute capability (70 for 7.0) -> fat binaries with machine code for it
    ptx: dict[int, int]  # compute capability -> fat binaries with PTX for it
    source: str

    def kernels(self) -> str:
        return ", ".join([f"sm_{a}" for a in sorted(self.sass)] + [f"compute_{a}" for a in sorted(self.ptx)])

    def coverage(self, capability: int) -> tuple[int, int]:
        """(fat binaries with machine code a GPU of this compute capability runs, fat binaries with any code it could
        use): kernels built only for newer GPUs are never launched on it; the rest need their PTX compiled."""
        native = max([n for a, n in self.sass.items() if a // 10 == capability // 10 and a <= capability], default=0)
        usable = max([n for a, n in [*self.sass.items(), *self.ptx.items()] if a <= capability], default=0)
        return native, usable


@dataclass(frozen=True)
class Cuda:
    """What one CUDA release needs of the driver, and the newest GPU its libraries (cuBLAS, cuDNN) know."""

    release: str
    driver: str  # the oldest Linux driver that runs it
    newest: int  # the newest compute capability it has code for, as 90 for 9.0


@dataclass(frozen=True)
class Facts:
    builds: dict[str, Build]
    cuda: dict[str, Cuda]

    def cuda_of(self, release: str) -> Cuda | None:
        """The facts of a CUDA release by its major.minor ("12.5.1" -> "12.5"), else by its major ("12")."""
        parts = release.split(".")
        return self.cuda.get(".".join(parts[:2])) or self.cuda.get(parts[0])


@dataclass(frozen=True)
class Prediction:
    """Whether a GPU runs a release: native, jit (after compiling PTX), cannot, or unknown; and why."""

    outcome: str
    reason: str
    disable_requires: bool = False  # the image's CUDA check must be off: this driver runs it by minor-version compat
    libraries: bool = False  # a JIT of the CUDA libraries too: they predate the GPU

    def describe(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "reason": self.reason}


def _capability(text: str) -> int:
    major, _, minor = text.partition(".")
    return int(major) * 10 + int(minor or 0)


def _arch(value: int) -> str:
    return f"{value // 10}.{value % 10}"


@cache
def load_facts() -> Facts:
    """The shipped facts (src/bnmatrix/gpu.yaml)."""
    path = Path(__file__).with_name(FACTS_FILE)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        builds = {}
        for minor, row in raw["tf"].items():
            kernels = row["kernels"]
            builds[minor] = Build(minor=minor, cuda=str(row["cuda"]), cudnn=str(row["cudnn"]),
                                  fatbins=int(row["fatbins"]),
                                  sass={int(k[3:]): int(n) for k, n in kernels.items() if k.startswith("sm_")},
                                  ptx={int(k[8:]): int(n) for k, n in kernels.items() if k.startswith("compute_")},
                                  source=row["source"])
        cuda = {release: Cuda(release=release, driver=str(row["driver"]), newest=_capability(str(row["newest"])))
                for release, row in raw["cuda"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise BnMatrixError(f"{path}: malformed GPU facts ({type(exc).__name__}: {exc})") from None
    return Facts(builds=builds, cuda=cuda)


def _older(driver: str, than: str) -> bool:
    try:
        return Version(driver) < Version(than)
    except InvalidVersion:
        return False


def predict(tf: str, gpu: Gpu, facts: Facts | None = None) -> Prediction:
    """Whether `gpu` can run TF `tf`'s GPU kernels (pure): its driver against the release's CUDA, the GPU against
    what the CUDA libraries know, and its compute capability against the release's SASS and PTX."""
    facts = facts or load_facts()
    minor = ".".join(tf.split(".")[:2])
    build = facts.builds.get(minor)
    if build is None:
        return Prediction(UNKNOWN, f"no GPU facts for TF {minor} in bnmatrix's gpu.yaml: started, not predicted")
    if not gpu.compute_capability:
        return Prediction(UNKNOWN, f"{gpu.name}: this driver's nvidia-smi does not report the compute capability")
    have = _capability(gpu.compute_capability)
    cuda = facts.cuda_of(build.cuda)
    what = f"TF {tf} (CUDA {build.cuda}, cuDNN {build.cudnn})"
    disable = False
    if cuda is not None and gpu.driver and _older(gpu.driver, cuda.driver):
        return Prediction(CANNOT, f"{what} needs NVIDIA driver {cuda.driver} or newer; {gpu.name} has driver "
                                  f"{gpu.driver}")
    if gpu.cuda and _older(gpu.cuda, ".".join(build.cuda.split(".")[:2])):
        disable = True  # an older CUDA 11+/12 driver of the same major: minor-version compatibility, image checks off
    libraries_jit = False
    if cuda is not None and have // 10 > cuda.newest // 10:  # machine code runs on later GPUs of its major only
        if int(build.cuda.split(".")[0]) < 11:
            return Prediction(CANNOT, f"{what}: the cuBLAS and cuDNN of CUDA {build.cuda} have no code for compute "
                                      f"capability {gpu.compute_capability} ({gpu.name}; CUDA {cuda.release} ends at "
                                      f"{_arch(cuda.newest)}): users report CUBLAS_STATUS_EXECUTION_FAILED there")
        libraries_jit = True
    native, relevant = build.coverage(have)
    ptx = [a for a in sorted(build.ptx) if a <= have]
    share = native / relevant if relevant else 0.0
    newest = f"sm_{max(build.sass)}" if build.sass else "none"
    on = f"{gpu.name} (compute capability {gpu.compute_capability})"
    if share >= FULL and not libraries_jit:
        return Prediction(NATIVE, f"{what} has machine code {on} runs for all its kernels ({relevant} kernel "
                                  "binaries)", disable)
    if share < FULL and not ptx:
        return Prediction(CANNOT, f"{what} has machine code up to {newest}, for {share:.0%} of its kernels on {on}, "
                                  f"and no PTX this GPU can use (its PTX: "
                                  f"{', '.join(f'compute_{a}' for a in sorted(build.ptx)) or 'none'})")
    if disable:
        return Prediction(CANNOT, f"{what} must JIT-compile PTX on {gpu.name}, but driver {gpu.driver} supports "
                                  f"only CUDA {gpu.cuda}: PTX of a newer CUDA than the driver's cannot be compiled "
                                  "(CUDA_ERROR_UNSUPPORTED_PTX_VERSION, as in googlecolab/colabtools#5667)")
    if libraries_jit and cuda is not None:
        return Prediction(JIT, f"{what} predates {on}: CUDA {build.cuda}'s libraries end at {_arch(cuda.newest)}, "
                               f"so they and TF's kernels ({build.kernels()}) run from PTX compiled at first use, "
                               "untested by NVIDIA for this GPU; this can take 30 minutes or longer", libraries=True)
    return Prediction(JIT, f"{what} has machine code {on} runs for {share:.0%} of its kernels ({native} of "
                           f"{relevant} kernel binaries; newest {newest}); the rest compile from PTX "
                           f"compute_{ptx[-1]} at first use, which can take 30 minutes or longer "
                           "(tensorflow/tensorflow#62320), kept in the JIT cache for later runs")


# Measuring the facts of a release from its GPU wheel on the package index, without downloading the whole wheel
# (HTTP ranges): TF's own build_info.py as it stands, and the CUDA fat binaries in its kernel libraries (each entry's
# header names its kind, PTX or machine code, and its architecture).
FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)


class _Ranges(io.RawIOBase):
    """A remote file read through HTTP range requests."""

    def __init__(self, url: str):
        self.url, self.position = url, 0
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as answer:
            self.size = int(answer.headers["Content-Length"])

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = (offset, self.position + offset, self.size + offset)[whence]
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: Any) -> int:
        size = min(len(buffer), self.size - self.position)
        if size <= 0:
            return 0
        ask = urllib.request.Request(self.url, headers={"Range": f"bytes={self.position}-{self.position + size - 1}"})
        with urllib.request.urlopen(ask, timeout=300) as answer:
            data = answer.read()
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)


def fatbin_kernels(stream: Any) -> collections.Counter[tuple[str, int]]:
    """How many of the CUDA fat binaries in a library's bytes (read as a stream) have code of each (kind,
    architecture), kind "sm" (machine code) or "compute" (PTX); ("fatbins", 0) counts the fat binaries."""
    found: collections.Counter[tuple[str, int]] = collections.Counter()
    buffer = b""
    while chunk := stream.read(1 << 24):
        buffer += chunk
        position = 0
        while True:
            at = buffer.find(FATBIN_MAGIC, position)
            if at < 0 or at + 16 > len(buffer):
                position = max(position, len(buffer) - 16) if at < 0 else at
                break
            version, header, size = struct.unpack_from("<HHQ", buffer, at + 4)
            if version != 1 or header != 16 or size > 1 << 31:
                position = at + 4
                continue
            end = at + 16 + size
            if end > len(buffer):  # the rest of this fat binary is in the next chunk
                position = at
                break
            entry, kinds = at + 16, set()
            while entry + 32 <= end:
                kind, _, entry_header, payload = struct.unpack_from("<HHIQ", buffer, entry)
                (architecture,) = struct.unpack_from("<I", buffer, entry + 28)
                if kind not in (1, 2) or entry_header < 32:
                    break
                kinds.add(("compute" if kind == 1 else "sm", architecture))
                entry += entry_header + payload
            found.update(kinds)
            found[("fatbins", 0)] += 1
            position = end
        buffer = buffer[position:]
    return found


def measure(url: str) -> dict[str, Any]:
    """The CUDA facts of one GPU wheel at `url`: TF's build_info.py as it stands, and the kernels of the fat binaries
    in TF's own libraries (build_info's list names the last architecture compute_XY where the wheel has both its
    machine code and its PTX, so only the binaries say which)."""
    wheel = zipfile.ZipFile(io.BufferedReader(_Ranges(url), 1 << 20))
    info = next((n for n in wheel.namelist() if n.endswith("python/platform/build_info.py")), None)
    text = wheel.read(info).decode("utf-8").strip() if info else ""
    found: collections.Counter[tuple[str, int]] = collections.Counter()
    libraries = [i for i in wheel.infolist() if ".so" in i.filename and "/external/" not in i.filename
                 and i.file_size > 20 << 20]
    for library in libraries:
        with zipfile.ZipFile(io.BufferedReader(_Ranges(url), 1 << 22)).open(library.filename) as stream:
            found.update(fatbin_kernels(stream))
    kernels = {f"{kind}_{architecture}": count for (kind, architecture), count in sorted(
        found.items(), key=lambda item: (item[0][0] == "compute", item[0][1])) if kind != "fatbins"}
    return {"build_info": text.splitlines()[-1] if text else "", "fatbins": found[("fatbins", 0)],
            "kernels": kernels, "from": ", ".join(i.filename.rsplit("/", 1)[-1] for i in libraries)}


def wheel_url(requirement: str, index_url: str = "https://pypi.org/simple") -> str:
    """The URL of a Linux x86_64 wheel of `name==version` on a PEP 691 (JSON) index (every Python's wheel of a TF
    release is one build)."""
    name, _, version = requirement.partition("==")
    ask = urllib.request.Request(f"{index_url}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(ask, timeout=60) as answer:
        files = json.load(answer)["files"]
    for file in reversed(files):  # the newest Python's: the last listed
        if f"-{version}-" in file["filename"] and "linux" in file["filename"] and "x86_64" in file["filename"]:
            return str(file["url"])
    raise BnMatrixError(f"{requirement}: no Linux x86_64 wheel on {index_url}")


TABLE_GPUS = (("V100", "7.0"), ("T4", "7.5"), ("A100", "8.0"), ("L4", "8.9"), ("H100", "9.0"))
TABLE_DRIVER = ("570.86.10", "12.8")  # a driver new enough for every release: the table shows the GPUs alone


def table(facts: Facts | None = None) -> str:
    """The facts and the predictions for common GPUs on a current driver, as the Markdown table of docs/gpu.md."""
    facts = facts or load_facts()
    lines = ["| TF | CUDA | cuDNN | machine code (share of kernels, where partial); PTX | "
             + " | ".join(f"{name} ({capability})" for name, capability in TABLE_GPUS) + " |",
             "|---|---|---|---|" + "---|" * len(TABLE_GPUS)]
    for minor, build in facts.builds.items():
        full = max(build.sass.values())
        kernels = ", ".join(f"sm_{a}" + ("" if n == full else f" ({n * 100 // build.fatbins}%)")
                            for a, n in sorted(build.sass.items()))
        cells = []
        for name, capability in TABLE_GPUS:
            prediction = predict(f"{minor}.0", Gpu(name, capability, TABLE_DRIVER[0], None, TABLE_DRIVER[1]), facts)
            native, usable = build.coverage(_capability(capability))
            cells.append({NATIVE: "native", CANNOT: "no", UNKNOWN: "?"}.get(prediction.outcome) or (
                "JIT, libraries too" if prediction.libraries else f"JIT ({native * 100 // usable}% native)"))
        lines.append(f"| {minor} | {build.cuda} | {build.cudnn} | {kernels}; "
                     f"{', '.join(f'compute_{a}' for a in sorted(build.ptx))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """python -m bnmatrix.gpu tensorflow==2.21.0 tensorflow-gpu==1.15.5 ...: each release's CUDA facts from its GPU
    wheel on PyPI, as JSON lines (what gpu.yaml records); --table: docs/gpu.md's table of the shipped facts."""
    if argv == ["--table"]:
        print(table(), end="")
        return 0
    for requirement in argv:
        url = wheel_url(requirement)
        print(json.dumps({"wheel": url.rsplit("/", 1)[-1], **measure(url)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
