"""The container backend: one image and one hardened container per cell, through the Docker SDK.

A cell's image is its base image plus what docker/cell.sh.j2 installs: the script runs in a container
of the base image with the shared download cache volume mounted (so no wheel is downloaded twice by
any build on the daemon, the classic builder has no cache mounts), and the container is committed.
Images are content-addressed (the hash of the rendered script) and reused when their tag exists;
cells on the same base share its layers. Every container carries our labels and is removed after
success, failure, timeout and Ctrl-C. The scenarios reach the container through a read-only volume,
so editing one never rebuilds TensorFlow, and a remote daemon (DOCKER_HOST=ssh://...) works the same way.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import re
import shlex
import socket
import tarfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    gpu_prediction,
    gpu_refusal,
    launcher,
    register,
    resolution_flags,
    zygote_server,
)
from bnmatrix.backends.venv import uv_binary
from bnmatrix.config import DOCKER_FOLDER, ContainerSettings, Scenario, base_image_script, data_path, scenario_files
from bnmatrix.errors import Cancelled
from bnmatrix.host import GPU_QUERY, PROBE_TIMEOUT_S, Gpu, parse_gpus, process_alive
from bnmatrix.intake import start_ticks
from bnmatrix.plan import Cell

LABEL = "org.bnmatrix.tool"
LABEL_CELL = "org.bnmatrix.cell"
LABEL_RUN = "org.bnmatrix.run"
LABEL_HOST = "org.bnmatrix.host"  # with LABEL_PID: which process owns a container or volume
LABEL_PID = "org.bnmatrix.pid"
LABEL_STARTED = "org.bnmatrix.started-ticks"  # when that process started: its pid may be another's after a reboot
LIFETIME_MARGIN_S = 300  # a cell container ends by itself this long after its scenarios' time budget
IMAGE_REPOSITORY = "bnmatrix-cell"
SCENARIO_MOUNT = "/scenarios"
CACHE_VOLUME = "bnmatrix-cache"  # downloads (uv's and pip's caches, and uv itself) shared by every build
CACHE_MOUNT = "/cache"
ZYGOTE_SOCKET = "/tmp/bnmatrix-zygote.sock"  # in the container's own /tmp
CUDA_CACHE_MOUNT = "/cuda-cache"  # a GPU cell's CUDA JIT cache: a volume per GPU, driver and TF release, kept
# `timeout` sends SIGKILL to the scenario; 137 (128 + 9) is its exit status then.
KILLED_EXIT = 137

if TYPE_CHECKING:  # docker-py is imported where it is used: it takes 0.1 s, and the registry imports every backend
    from docker.types import DeviceRequest

    import docker


def render_script(cell: Cell) -> str:
    """The cell's install script (pure)."""
    import jinja2  # like docker-py, only where a cell image is built

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(data_path(DOCKER_FOLDER)), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=True)
    env.filters["shell"] = shlex.quote
    return env.get_template("cell.sh.j2").render(cell=cell, resolve=resolution_flags(cell))


def image_tag(cell: Cell, script: str) -> str:
    """A content-addressed tag: the same script on the same base gives the same tag, so an image is built once."""
    digest = hashlib.sha256(script.encode("utf-8")).hexdigest()[:16]
    return f"{IMAGE_REPOSITORY}:{cell.id.removeprefix('tf-')}-{digest}"


def image_labels(cell: Cell) -> dict[str, str]:
    return {LABEL: "bnmatrix", LABEL_CELL: cell.id, "org.bnmatrix.tf": cell.tf, "org.bnmatrix.device": cell.device}


def gpu_requests() -> list[DeviceRequest]:
    """All GPUs, as `docker run --gpus all` asks for them."""
    from docker.types import DeviceRequest
    return [DeviceRequest(count=-1, capabilities=[["gpu"]])]


def daemon_says(exc: Exception) -> str:
    """The first line of what the Docker daemon (or docker-py) said in an error."""
    return str(getattr(exc, "explanation", None) or exc).splitlines()[0]


def cuda_cache_volume(gpus: Sequence[Gpu], cell: Cell) -> str:
    """The volume that keeps a GPU cell's CUDA JIT cache across runs (never swept: it is not a run's)."""
    return "bnmatrix-cuda-cache-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", cuda_cache_key(gpus, cell))


def probe_gpus(client: docker.DockerClient, image: str, labels: dict[str, str]) -> tuple[list[Gpu], str]:
    """The GPUs a container of `image` sees with `--gpus all` (nvidia-smi, which the NVIDIA Container Toolkit
    mounts in), or none and the daemon's answer: whether the toolkit serves GPUs, whatever runtimes are listed."""
    import docker
    query = " ".join(["nvidia-smi", *GPU_QUERY])
    container = None
    try:
        container = client.containers.create(image, ["sh", "-c", f"{query} && echo ---- && nvidia-smi"],
                                             device_requests=gpu_requests(), network_disabled=True, labels=labels,
                                             environment={"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"})
        container.start()
        code = container.wait(timeout=PROBE_TIMEOUT_S).get("StatusCode")
        output = container.logs(stdout=True, stderr=True)
        if code != 0:
            return [], f"nvidia-smi failed in the container (exit {code}): {output.decode('utf-8', 'replace')[-200:]}"
    except docker.errors.DockerException as exc:
        return [], daemon_says(exc)[-300:]
    except Exception as exc:  # noqa: BLE001  a probe that hangs (a timeout of wait): no GPU, and why
        return [], f"{type(exc).__name__}: {exc}"[:300]
    finally:
        if container is not None:
            with suppress(docker.errors.DockerException):
                container.remove(force=True)
    query_text, _, header = output.decode("utf-8", "replace").partition("----")
    gpus = parse_gpus(query_text, header)
    return gpus, "" if gpus else "nvidia-smi listed no GPU"


def owner_labels(run_id: str) -> dict[str, str]:
    """Labels that say which bnmatrix process made a container or volume, so a later run can tell dead ones."""
    return {LABEL: "bnmatrix", LABEL_RUN: run_id, LABEL_HOST: socket.gethostname(), LABEL_PID: str(os.getpid()),
            LABEL_STARTED: str(start_ticks(os.getpid()) or "")}


def run_options(cell: Cell, settings: ContainerSettings, run_id: str, scenarios_volume: str,
                lifetime_s: float, gpus: Sequence[Gpu] = ()) -> dict[str, Any]:
    """Keyword arguments of containers.run for the cell's container (pure): hardened unless matrix.yaml says.

    The container's own command ends after `lifetime_s`, so it cannot outlive a bnmatrix killed with -9. A GPU
    cell gets every GPU, its CUDA JIT cache volume, and the image's CUDA check switched off where `gpus`' driver
    runs the image's CUDA only by minor-version compatibility (an older 11.x/12.x driver).
    """
    from docker.types import Ulimit
    # The helper lives in the built-in scenario folder, mounted first: importable from any scenario folder.
    environment = {"HOME": "/tmp", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
                   "PYTHONPATH": f"{SCENARIO_MOUNT}/0", **cell_environment(cell)}
    options: dict[str, Any] = {
        "command": ["sleep", f"{lifetime_s:.0f}"],
        "detach": True,
        "init": True,
        "labels": {**image_labels(cell), **owner_labels(run_id)},
        "environment": environment,
        "working_dir": "/tmp",
        "volumes": {scenarios_volume: {"bind": SCENARIO_MOUNT, "mode": "ro"}},
        "network_mode": settings.network,
        "read_only": settings.read_only,
        "tmpfs": {"/tmp": f"rw,exec,size={settings.tmpfs_size},mode=1777"},
        "user": settings.user,
        "mem_limit": settings.memory,
        "memswap_limit": settings.memory,  # no swap on top of the memory limit
        "nano_cpus": int((settings.cpus or os.cpu_count() or 1) * 1e9),
        "ulimits": [Ulimit(name="nofile", soft=settings.nofile, hard=settings.nofile),
                    Ulimit(name="nproc", soft=settings.nproc, hard=settings.nproc)],
        "pids_limit": settings.pids,
    }
    if settings.drop_capabilities:
        options["cap_drop"] = ["ALL"]
    if settings.no_new_privileges:
        options["security_opt"] = ["no-new-privileges"]
    if cell.device == "gpu":
        options["device_requests"] = gpu_requests()
        options["volumes"][cuda_cache_volume(gpus, cell)] = {"bind": CUDA_CACHE_MOUNT, "mode": "rw"}
        environment.update(CUDA_CACHE_PATH=CUDA_CACHE_MOUNT, CUDA_CACHE_MAXSIZE=str(CUDA_CACHE_MAXSIZE))
        prediction = gpu_prediction(cell, gpus)
        if prediction is not None and prediction.disable_requires:
            environment["NVIDIA_DISABLE_REQUIRES"] = "true"
    return options


def run_flags(options: dict[str, Any]) -> list[str]:
    """The `docker run` options of containers.run keyword arguments (pure): what a cell's container ran with,
    but for its command, labels and volumes, and PYTHONPATH (which names where the scenarios are mounted)."""
    flags = ["--init"] if options.get("init") else []
    flags += ["--network", options["network_mode"], "-w", options["working_dir"]]
    flags += ["--read-only"] if options.get("read_only") else []
    flags += [item for path, spec in sorted(options.get("tmpfs", {}).items()) for item in ("--tmpfs", f"{path}:{spec}")]
    flags += ["--user", options["user"], "--memory", options["mem_limit"], "--memory-swap", options["memswap_limit"],
              "--cpus", f"{options['nano_cpus'] / 1e9:g}", "--pids-limit", str(options["pids_limit"])]
    flags += [item for limit in options.get("ulimits", [])
              for item in ("--ulimit", f"{limit['Name']}={limit['Soft']}:{limit['Hard']}")]
    flags += [item for capability in options.get("cap_drop", []) for item in ("--cap-drop", capability)]
    flags += [item for option in options.get("security_opt", []) for item in ("--security-opt", option)]
    flags += ["--gpus", "all"] if options.get("device_requests") else []
    flags += [item for volume, spec in sorted(options.get("volumes", {}).items()) if spec["bind"] == CUDA_CACHE_MOUNT
              for item in ("-v", f"{volume}:{CUDA_CACHE_MOUNT}")]
    flags += [item for k, v in sorted(options["environment"].items()) if k != "PYTHONPATH"
              for item in ("-e", f"{k}={v}")]
    return flags


def connect(scenario_timeout_s: float = 0) -> tuple[docker.DockerClient | None, str]:
    """A client whose daemon answered (DOCKER_HOST honoured), or None and why not.

    Its socket timeout exceeds the scenario timeout: a scenario's output stream may be silent that long.
    """
    import docker
    try:
        client = docker.from_env(timeout=int(max(600, scenario_timeout_s + 120)))
        client.ping()
        version = client.version().get("Version", "?")
    except docker.errors.DockerException as exc:
        return None, str(exc).splitlines()[0]
    return client, f"Docker {version} at {client.api.base_url}"


def unobtainable(client: docker.DockerClient, images: Sequence[str]) -> tuple[list[str], str]:
    """The base images this daemon neither has nor can pull (a host without a registry), and why; asking the
    registry once, for the first image missing here."""
    import docker
    missing = []
    for image in sorted(set(images)):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
        except docker.errors.APIError:
            missing.append(image)
    if not missing:
        return [], ""
    try:
        client.api.inspect_distribution(missing[0])  # type: ignore[no-untyped-call]
    except docker.errors.APIError as exc:
        message = daemon_says(exc)
        return missing, message[-200:]
    except docker.errors.DockerException as exc:
        return missing, str(exc).splitlines()[0][-200:]
    return [], ""


def tar_of(files: Sequence[tuple[Path, str, int]]) -> bytes:
    """A tar of (file, name in the archive, mode) entries, owned by root: what put_archive copies into a volume."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for path, name, mode in files:
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.mode = mode
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    return archive.getvalue()


def remove_dead_runs(client: docker.DockerClient) -> int:
    """Remove the containers and volumes of bnmatrix runs on this host whose process is gone (killed with
    -9, a crashed CI job); how many. Nothing without our labels, or of a live run, is touched."""
    import docker
    host = socket.gethostname()

    def dead(labels: dict[str, str]) -> bool:
        pid, started = labels.get(LABEL_PID, ""), labels.get(LABEL_STARTED, "")
        return (labels.get(LABEL) == "bnmatrix" and labels.get(LABEL_HOST) == host
                and not (pid.isdigit() and process_alive(int(pid), int(started) if started.isdigit() else None)))

    removed = 0
    for container in client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True):
        if dead(container.labels):
            with suppress(docker.errors.NotFound):
                container.remove(force=True)
                removed += 1
    for volume in client.volumes.list(filters={"label": LABEL}):
        if dead(volume.attrs.get("Labels") or {}):
            with suppress(docker.errors.NotFound, docker.errors.APIError):
                volume.remove(force=True)
                removed += 1
    return removed


class DockerBackend:
    name = "docker"
    uses_images = True

    def __init__(self, client: docker.DockerClient, settings: ContainerSettings, run_id: str,
                 scenario_dirs: tuple[Path, ...], rebuild: bool = False, scenario_timeout_s: float = 900,
                 sweep: bool = True, fresh: bool = False, select: Sequence[str] = ()):
        self.client = client
        self.fresh = fresh  # no zygote: every scenario a fresh process
        self.settings = settings
        self.run_id = run_id
        self.scenario_dirs = scenario_dirs
        self.rebuild = rebuild  # --rebuild: build every cell's image again
        self._lock = threading.Lock()
        self._volume: str | None = None
        self._uv: str | None = None  # the path of uv in the cache volume ("" for none), once known
        self.closed = False
        self.select = select  # the --select globs (a GPU cell predicted not to run starts only when named)
        self._probes: dict[str, tuple[list[Gpu], str]] = {}  # base image -> what `docker run --gpus all` saw
        self.architecture = client.info().get("Architecture")
        self.scenario_timeout_s = scenario_timeout_s
        self.looks_only = not sweep  # `plan`: pulls no image (a GPU probe uses one the daemon has)
        if sweep:
            remove_dead_runs(client)

    def serves_python(self, python: str) -> bool:
        return True  # each cell's base image brings its Python

    def pulled(self, image: str) -> None:
        """Pull a base image this daemon does not have yet (docker-py's create does not)."""
        import docker
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            self.client.images.pull(image)

    def gpus(self, image: str) -> tuple[list[Gpu], str]:
        """The GPUs containers see (probed once per run with the first image that can tell: the cell's base image,
        pulled first, or for `plan` any base image the daemon has), or none and why."""
        import docker
        with self._lock:
            seen = next((probe for probe in self._probes.values() if probe[0]), None)
            if seen is None and image not in self._probes:
                try:
                    if not self.looks_only:
                        self.pulled(image)
                    self._probes[image] = probe_gpus(self.client, image, owner_labels(self.run_id))
                except docker.errors.DockerException as exc:
                    self._probes[image] = [], daemon_says(exc)[-300:]
            return seen or self._probes[image]

    def cell_gpus(self, cell: Cell) -> list[Gpu]:
        return self.gpus(cell.image)[0] if cell.device == "gpu" else []

    def serves(self, cell: Cell) -> str | None:
        """Why this daemon cannot run the cell (None when it can): what `open` would say."""
        if cell.device != "gpu":
            return None
        gpus, why = self.gpus(cell.image)
        if not gpus:
            return (f"no GPU in containers: `docker run --gpus all {cell.image} nvidia-smi` answered: {why} (a GPU "
                    "host needs the NVIDIA driver and the NVIDIA Container Toolkit: docs/gpu.md)")
        return gpu_refusal(cell, gpus, self.select)

    @contextmanager
    def open(self, cell: Cell, setup_log: Path, report_step: StepReporter) -> Iterator[DockerSession]:
        why = self.serves(cell)
        if why:
            raise CellNotRun(why)
        script = render_script(cell)
        tag = image_tag(cell, script)
        self._image(cell, script, tag, setup_log, report_step)
        volume = self._scenarios_volume(tag)
        report_step("starting container")
        lifetime = self.scenario_timeout_s * max(1, len(cell.scenarios)) + LIFETIME_MARGIN_S
        gpus = self.cell_gpus(cell)
        options = run_options(cell, self.settings, self.run_id, volume, lifetime, gpus)
        container = self.client.containers.run(tag, **options)
        try:
            session = DockerSession(container, cell, self.client, tag, self.scenario_dirs, run_flags(options))
            if cell.device == "gpu":  # the GPUs it ran on, what bnmatrix predicted, the JIT cache volume it kept
                session.environment.update(gpu_environment(cell, gpus))
                session.environment["cuda_cache"] = cuda_cache_volume(gpus, cell)
            if not self.fresh:
                report_step("importing TensorFlow in the cell's zygote")
                session.start_zygote(setup_log)
            yield session
        finally:
            self._remove(container)

    def _image(self, cell: Cell, script: str, tag: str, setup_log: Path, report_step: StepReporter) -> None:
        from docker.types import Mount

        import docker
        with open(setup_log, "w", encoding="utf-8") as log:
            log.write(script + "\n")
            previous = None
            with suppress(docker.errors.ImageNotFound):
                previous = self.client.images.get(tag)
            if previous is not None and not self.rebuild:
                report_step(f"reusing image {tag}")
                log.write(f"reused image {tag}\n")
                return
            report_step(f"building {tag} from {cell.image}")
            error = None
            try:
                self.pulled(cell.image)
                uv = self._uv_in_cache(cell.image)
                builder = self.client.containers.create(
                    cell.image, command=["sh", "-c", script, "cell.sh", *([uv] if uv else [])],
                    labels={**image_labels(cell), **owner_labels(self.run_id)}, user="0", working_dir="/",
                    # A mount, not `volumes=` (which would make /cache a VOLUME of the committed image).
                    mounts=[Mount(target=CACHE_MOUNT, source=CACHE_VOLUME, type="volume")])
                try:
                    builder.start()
                    for chunk in builder.logs(stream=True, follow=True):
                        if self.closed:  # Ctrl-C: close() removes the builder, which ends the stream
                            raise Cancelled
                        log.write(chunk.decode("utf-8", "replace"))
                        log.flush()
                    code = builder.wait().get("StatusCode")
                    if self.closed:
                        raise Cancelled
                    if code != 0:
                        error = f"the install script exited with {code}"
                    else:
                        # The image: our labels with the builder's owner blanked (the daemon merges the
                        # builder's labels in), so that no container of the image looks like a run's.
                        owner = dict.fromkeys(owner_labels(self.run_id), "")
                        labels = {**owner, **image_labels(cell), "org.bnmatrix.requested-image": cell.requested_image}
                        builder.commit(repository=IMAGE_REPOSITORY, tag=tag.partition(":")[2],
                                       conf={"Cmd": ["python3"], "Labels": labels})
                        if previous is not None:  # --rebuild: the image it replaces, untagged now
                            with suppress(docker.errors.APIError):
                                self.client.images.remove(str(previous.id))
                finally:
                    self._remove(builder)
            except docker.errors.APIError as exc:
                error = daemon_says(exc)
                log.write(error + "\n")
        if error is not None:
            hint = ""
            if "No such image" in error or "pull access denied" in error or "registry" in error:
                hint = (f"; is {cell.image} available here? Without a registry, build local bases with "
                        f"{base_image_script()} or map the image with --image-map")
            raise CellSetupError(f"image build failed: {error}{hint}",
                                 setup_log.read_text(encoding="utf-8", errors="replace"))

    def _uv_in_cache(self, image: str) -> str | None:
        """uv (bnmatrix's own) in the cache volume, put there once per version through a short-lived container;
        None when the daemon runs another architecture than this host (then the builds use pip)."""
        with self._lock:
            if self._uv is None:
                self._uv = ""
                if self.architecture == platform.machine():
                    self._uv = self._put_uv(image)
            return self._uv or None

    def _put_uv(self, image: str) -> str:
        import docker
        source = Path(uv_binary())
        target = f"bin/uv-{hashlib.sha256(source.read_bytes()).hexdigest()[:12]}"
        with self._filler(image, CACHE_VOLUME, CACHE_MOUNT) as filler:
            try:
                filler.get_archive(f"{CACHE_MOUNT}/{target}")  # there already (its stream is not read)
            except docker.errors.NotFound:
                filler.put_archive(CACHE_MOUNT, tar_of([(source, target, 0o755)]))
        return f"{CACHE_MOUNT}/{target}"

    @contextmanager
    def _filler(self, image: str, volume: str, mount: str) -> Iterator[Any]:
        """A short-lived container of `image` (never started, no network) with `volume` at `mount`, to copy into."""
        filler = self.client.containers.create(image, command=["true"], labels=owner_labels(self.run_id),
                                               network_disabled=True, volumes={volume: {"bind": mount, "mode": "rw"}})
        try:
            yield filler
        finally:
            self._remove(filler)

    def _scenarios_volume(self, image: str) -> str:
        """A volume holding every scenario folder (subfolders included) as /scenarios/<index>, the
        built-in one at 0, filled once per run through a short-lived container."""
        with self._lock:
            if self._volume is not None:
                return self._volume
            archive = tar_of([(path, f"{index}/{path.relative_to(directory)}", 0o644)
                              for index, directory in enumerate(self.scenario_dirs)
                              for path in sorted(scenario_files(directory))])
            volume = self.client.volumes.create(name=f"bnmatrix-scenarios-{self.run_id}",
                                                labels=owner_labels(self.run_id))
            with self._filler(image, volume.name, SCENARIO_MOUNT) as filler:
                filler.put_archive(SCENARIO_MOUNT, archive)
            self._volume = volume.name
            return volume.name

    def _remove(self, container: Any) -> None:
        """Remove a container, gone already or being removed by another thread (a stop while a build ends: the
        daemon answers 409, removal already in progress)."""
        import docker
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise

    def close(self) -> None:
        """Remove every container and the scenarios volume of this run (also on Ctrl-C). Best effort: what the
        daemon refuses to remove now, the next run removes (remove_dead_runs), so a stop never becomes an error."""
        import docker
        self.closed = True
        with suppress(docker.errors.APIError):
            for container in self.client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={self.run_id}"},
                                                        ignore_removed=True):
                with suppress(docker.errors.APIError):
                    self._remove(container)
        with self._lock:
            if self._volume is not None:
                with suppress(docker.errors.APIError):  # NotFound included
                    self.client.volumes.get(self._volume).remove(force=True)
                self._volume = None


class DockerSession:
    """Runs each scenario in the cell's container (docker exec), with a timeout: forked from the cell's zygote
    (bnmatrix_zygote.py, started in the container by start_zygote) where it can, else as a fresh process."""

    def __init__(self, container: Any, cell: Cell, client: docker.DockerClient, tag: str,
                 scenario_dirs: tuple[Path, ...], flags: list[str]):
        self.container = container
        self.cell = cell
        self.client = client
        self.scenario_dirs = scenario_dirs
        self.socket = NO_ZYGOTE
        python = self._exec(["python3", "-c", "import sys; print(sys.executable, sys.version.split()[0])"])
        executable, _, version = python.strip().partition(" ")
        base = client.images.get(cell.image)
        built = client.images.get(tag)
        self.environment: dict[str, Any] = {
            "kind": "docker",
            "image": cell.image,
            "requested_image": cell.requested_image,
            "image_id": base.id,
            "image_digests": base.attrs.get("RepoDigests") or [],
            "cell_image": tag,
            "cell_image_id": built.id,
            "cell_image_size": built.attrs.get("Size"),
            "python": executable,
            "python_version": version,
            "packages": self._exec(["cat", "/etc/bnmatrix-packages.txt"]).split(),
            "run_flags": flags,
        }

    def _exec(self, command: list[str]) -> str:
        code, output = self.container.exec_run(command, demux=False)
        text: str = output.decode("utf-8", "replace")
        if code != 0:
            raise RuntimeError(f"{' '.join(command)} failed in the container (exit {code}): {text[-500:]}")
        return text

    def start_zygote(self, setup_log: Path) -> None:
        """Start the cell's zygote in the container and wait until it has imported TensorFlow (ZygoteOutput.wait); a
        zygote that does not listen leaves every scenario a fresh process (the setup log says why). It ends with the
        container."""
        api = self.client.api
        exec_id = api.exec_create(self.container.id, zygote_server("python3", f"{SCENARIO_MOUNT}/0", ZYGOTE_SOCKET),
                                  workdir="/tmp")["Id"]
        if ZygoteOutput(setup_log, api.exec_start(exec_id, stream=True)).wait():
            self.socket = ZYGOTE_SOCKET

    def run(self, scenario: Scenario, args: list[str], timeout_s: float, log: Path) -> ScenarioRun:
        index = self.scenario_dirs.index(scenario.root)
        script = f"{SCENARIO_MOUNT}/{index}/{scenario.script.relative_to(scenario.root)}"
        command = ["timeout", "--signal=KILL", f"{timeout_s:g}s",
                   *launcher("python3", f"{SCENARIO_MOUNT}/0", self.socket, script, args)]
        started = time.monotonic()
        api = self.client.api
        exec_id = api.exec_create(self.container.id, command, workdir="/tmp")["Id"]
        with open(log, "wb") as handle:
            capture = OutputCapture(handle)
            for stdout, stderr in api.exec_start(exec_id, stream=True, demux=True):
                if stdout:
                    capture.feed(stdout, "stdout")
                if stderr:
                    capture.feed(stderr, "stderr")
            capture.finish()
        code = api.exec_inspect(exec_id).get("ExitCode")
        duration = time.monotonic() - started
        timed_out = code == KILLED_EXIT and duration >= timeout_s * 0.99
        return ScenarioRun.from_capture(capture, None if timed_out else code, timed_out, duration)


def _open(setup: Setup, chosen: bool) -> tuple[Backend | None, str]:
    """Opens where a Docker daemon answers (DOCKER_HOST honoured); tried by auto, also only where the daemon has
    the cells' base images or can pull them."""
    client, about = connect(setup.matrix.timeout_s)
    if client is None:
        hint = "; start one, set DOCKER_HOST, or use another --backend" if chosen else ""
        return None, f"no Docker daemon answered: {about}{hint}"
    missing, reason = unobtainable(client, setup.images) if not chosen else ([], "")
    if missing:
        client.close()
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        return None, (f"{about} answered, but it has no {shown} and cannot pull: {reason}; build local bases with "
                      f"{base_image_script()}, or map images with --image-map, to use Docker")
    return DockerBackend(client, setup.matrix.container, setup.run_id, setup.matrix.scenario_dirs,
                         rebuild=setup.rebuild, scenario_timeout_s=setup.matrix.timeout_s,
                         sweep=setup.sweep, fresh=setup.fresh, select=setup.select), f"{about} answered"


def reproduce(what: Reproduction) -> str:
    """`docker run` of the cell's image with the options its container ran with (the defaults of matrix.yaml's
    settings.container for a run that did not record them), the scenario code mounted read-only as it was."""
    flags = what.environment.get("run_flags")
    if not isinstance(flags, list):
        cell = replace(what.cell, env=what.variables)
        flags = run_flags(run_options(cell, ContainerSettings(), "", "", 0))
    where, script, helper = what.paths()
    folder = script.partition("/")[0]  # code/ of the run, or scenarios/ of a checkout

    def inside(path: str) -> str:
        return (SCENARIO_MOUNT if folder == "code" else f"{SCENARIO_MOUNT}/0") + path[len(folder):]

    return "\n".join([
        what.comment(where),
        f'docker run --rm -v "$PWD"/{shlex.quote(folder)}:{inside(folder)}:ro '
        + shlex.join([*map(str, flags), "-e", f"PYTHONPATH={inside(helper)}", str(what.environment.get("cell_image")),
                      "python3", inside(script), *what.args]),
        what.comment(f"or: {what.again}"),
    ])


register(BackendKind(name="docker", summary="one hardened container per cell, through a Docker daemon",
                     auto_order=10, open=_open, reproduce=reproduce))
