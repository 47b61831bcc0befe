"""Real containers on a real Docker daemon: TF 1.15.5 and TF 2.15.1 cells, the same verdicts and
statistics as the venv backend, and no container of ours left after success, failure, timeout
or Ctrl-C. Without a registry, the base images come from docker/base/build.sh."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bnmatrix.backends.docker import LABEL
from bnmatrix.cli import main
from bnmatrix.config import Matrix
from bnmatrix.store.reader import load_run
from bnmatrix.store.records import CellResult
from tests.conftest import require
from tests.e2e.conftest import E2E_CELLS, REPO, check_verdicts, reproduce_and_compare
from tests.e2e.test_venv_cells import user_scenarios

pytestmark = pytest.mark.e2e
TEST_SCENARIOS = Path(__file__).parent / "scenarios"
# The original four and the two whose numbers depend most on the kernels (fused variance, tf.function).
DOCKER_SCENARIOS = ["keras_bn_custom_estimator", "layers_bn_custom_estimator", "keras_bn_model_to_estimator",
                    "layers_bn_session", "keras_fit_4d_variance", "keras_tf_function"]


Spawn = Callable[..., "subprocess.Popen[Any]"]


def ours(client: Any) -> list[Any]:
    return client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True)


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Starts bnmatrix processes that are killed when the test ends, passed or failed: a failed test leaves no run
    whose live process keeps its container from the next test's sweep."""
    processes: list[subprocess.Popen[Any]] = []

    def start(command: list[str], **options: Any) -> subprocess.Popen[Any]:
        processes.append(subprocess.Popen(command, **options))
        return processes[-1]

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def docker_runs(docker_client: Any, image_map_args: list[str],
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, CellResult]:
    from bnmatrix.backends.docker import unobtainable

    mapped = dict(entry.split("=", 1) for entry in image_map_args[1::2])
    bases = [mapped.get(f"python:{python}-slim", f"python:{python}-slim") for _, python in E2E_CELLS.values()]
    missing, why = unobtainable(docker_client, bases)  # asks a registry once, not once per image
    require(not missing, f"{', '.join(missing)} not on this daemon and no registry answers ({why}): build them "
                         "with docker/base/build.sh")
    for base in bases:
        if not docker_client.images.list(name=base):
            docker_client.images.pull(base)  # a registry answers
    results = tmp_path_factory.mktemp("docker-results")
    args = ["run", "--matrix", str(REPO / "matrix.yaml"), "--backend", "docker", "--jobs", "1",
            "--results", str(results), *image_map_args, *[x for name in DOCKER_SCENARIOS for x in ("--scenario", name)]]
    for cell_id in E2E_CELLS:
        args += ["--select", cell_id]
    assert main(args) == 0
    assert ours(docker_client) == []  # after success
    return {cell.id: cell for cell in load_run(results).cells}


@pytest.mark.parametrize("cell_id", sorted(E2E_CELLS))
def test_container_verdicts_from_the_numbers(docker_runs: dict[str, CellResult], cell_id: str) -> None:
    cell = docker_runs[cell_id]
    assert sorted(cell.scenarios) == sorted(DOCKER_SCENARIOS)
    check_verdicts(cell)
    environment = cell.environment or {}
    assert environment["kind"] == "docker"
    assert environment["cell_image"].startswith("bnmatrix-cell:" + cell_id.removeprefix("tf-"))
    assert environment["image_id"].startswith("sha256:")
    assert any(line.startswith("tensorflow==" + E2E_CELLS[cell_id][0]) for line in environment["packages"])


@pytest.mark.parametrize("cell_id", sorted(E2E_CELLS))
def test_venv_and_docker_agree(docker_runs: dict[str, CellResult], venv_runs: dict[str, tuple[Path, CellResult]],
                               cell_id: str) -> None:
    _, venv = venv_runs[cell_id]
    docker = docker_runs[cell_id]
    for name, in_docker in docker.scenarios.items():
        in_venv = venv.scenarios[name]
        assert in_docker.status == in_venv.status, name
        docker_numbers, venv_numbers = in_docker.numbers(), in_venv.numbers()
        assert docker_numbers["variance_correction"] == venv_numbers["variance_correction"], name
        # The session scenario's two update ops per step race on shared variables: a run-to-run spread.
        rel = 1e-2 if name == "layers_bn_session" else 1e-3
        for field in ("moving_mean", "moving_variance", "effective_updates"):
            expected = venv_numbers[field]
            assert docker_numbers[field] == (None if expected is None else pytest.approx(expected, rel=rel)), \
                (name, field)


def test_a_users_own_scenario_runs_in_a_container(docker_runs: dict[str, CellResult], image_map_args: list[str],
                                                 tmp_path: Path) -> None:
    """... and the reproduce command of each scenario, run without bnmatrix from the run's folder (`docker run` of the
    cell's image with the container options it ran with, the run's copy of the code), gives its numbers again."""
    folder = user_scenarios(tmp_path / "mine")
    assert main(["run", "--matrix", str(REPO / "matrix.yaml"), "--backend", "docker", "--select", "tf-2.15.1-cpu",
                 "--scenarios", str(folder), "--scenario", "user_keras_fit", "--scenario", "keras_bn_custom_estimator",
                 "--results", str(tmp_path / "r"), *image_map_args]) == 0
    (cell,) = load_run(tmp_path / "r").cells
    mine = cell.scenarios["user_keras_fit"]
    assert mine.status.value == "updated", mine.reason
    assert mine.numbers()["effective_updates"] == pytest.approx(100, abs=0.01)
    assert mine.observed is not None and mine.observed.extra == {"made_by": "mylib"}
    flags = (cell.environment or {})["run_flags"]
    assert flags[flags.index("--network"):][:2] == ["--network", "none"] and "--read-only" in flags
    commands = reproduce_and_compare(tmp_path / "r", cell)
    assert all(command.splitlines()[1].startswith('docker run --rm -v "$PWD"/code:/scenarios:ro ')
               for command in commands)


def probe_matrix(tmp_path: Path, timeout_s: float, scenarios: list[str], pins: str = "") -> Path:
    """A matrix on the TF 1.15.5 CPU image (already built above) running the test scenarios."""
    text = (REPO / "matrix.yaml").read_text()
    line = next(x for x in text.splitlines() if x.startswith("  - {tf: 1.15.5"))
    version = line + "\n" + text.split(line + "\n", 1)[1].splitlines()[0]
    if pins:
        version = version.replace('"h5py<3"]', f'"h5py<3", "{pins}"]')
    path = tmp_path / "matrix.yaml"
    released = Matrix.from_file(REPO / "matrix.yaml").released["1.15.5"]  # its dependencies as of its release too
    path.write_text(f"schema_version: 1\nsettings:\n  scenario_timeout_s: {timeout_s}\n  devices: [cpu]\n"
                    f"scenario_paths: [{TEST_SCENARIOS}]\nscenarios: {json.dumps(scenarios)}\n"
                    f"versions:\n{version}\nreleased: {{\"1.15.5\": \"{released}\"}}\n")
    return path


def test_timeout_and_failure_leave_no_container(docker_runs: dict[str, Any], docker_client: Any,
                                               image_map_args: list[str], tmp_path: Path) -> None:
    matrix = probe_matrix(tmp_path, 15, ["sleeper", "broken"])  # TF 1.15's import takes a few seconds
    started = time.monotonic()
    assert main(["run", "--matrix", str(matrix), "--backend", "docker", "--results", str(tmp_path / "r"),
                 *image_map_args]) == 1  # every scenario of the run is an error
    assert time.monotonic() - started < 120
    (cell,) = load_run(tmp_path / "r").cells
    assert (cell.environment or {})["cell_image"] == (docker_runs["tf-1.15.5-cpu"].environment or {})["cell_image"]
    sleeper, broken = cell.scenarios["sleeper"], cell.scenarios["broken"]
    assert sleeper.status.value == "error" and sleeper.reason == "timeout: killed after 15 s"
    assert broken.status.value == "error" and "exited with code 3" in str(broken.reason)
    assert broken.error is not None and "broken on purpose" in broken.error["traceback"]
    assert ours(docker_client) == []


def test_a_child_in_its_own_session_cannot_hold_a_scenarios_output(docker_runs: dict[str, Any], docker_client: Any,
                                                                   image_map_args: list[str], tmp_path: Path) -> None:
    """`timeout` kills the scenario's process group; a child that left it (setsid) keeps the output open. The
    scenario is done all the same, and the child goes with the cell's container."""
    matrix = probe_matrix(tmp_path, 60, ["escaper"])
    started = time.monotonic()
    assert main(["run", "--matrix", str(matrix), "--backend", "docker", "--results", str(tmp_path / "r"),
                 *image_map_args]) == 0
    assert time.monotonic() - started < 60  # not the container's lifetime (60 s + 5 min)
    (cell,) = load_run(tmp_path / "r").cells
    assert cell.scenarios["escaper"].status.value == "updated", cell.scenarios["escaper"].reason
    assert ours(docker_client) == []


def test_build_failure_is_a_build_error_and_leaves_no_container(docker_runs: dict[str, Any], docker_client: Any,
                                                                image_map_args: list[str], tmp_path: Path) -> None:
    matrix = probe_matrix(tmp_path, 3, ["broken"], pins="six==0.0.1")
    before = {c.id for c in docker_client.containers.list(all=True, ignore_removed=True)}
    assert main(["run", "--matrix", str(matrix), "--backend", "docker", "--results", str(tmp_path / "r"),
                 *image_map_args]) == 1
    assert not (tmp_path / "r" / "latest").exists()  # nothing was measured
    (run_dir,) = (tmp_path / "r").iterdir()
    (cell,) = load_run(run_dir).cells
    assert cell.status.value == "build-error"
    assert "six==0.0.1" in (cell.setup_log_tail or "")
    assert {c.id for c in docker_client.containers.list(all=True, ignore_removed=True)} == before


def test_ctrl_c_removes_the_running_container(docker_runs: dict[str, Any], docker_client: Any,
                                              image_map_args: list[str], tmp_path: Path, spawn: Spawn) -> None:
    matrix = probe_matrix(tmp_path, 600, ["sleeper"])
    command = [sys.executable, "-m", "bnmatrix", "run", "--matrix", str(matrix), "--backend", "docker",
               "--results", str(tmp_path / "r"), *image_map_args]
    # As from a terminal: SIGINT handled even where this test runs as a background job (which ignores it).
    process = spawn(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "COLUMNS": "200"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not ours(docker_client) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
    if not ours(docker_client):  # say why: bnmatrix ended (with its output), or the container was not up in time
        ended = process.poll()
        process.kill()
        output, _ = process.communicate(timeout=60)
        state = "still ran after 120 s" if ended is None else f"exited {ended}"
        raise AssertionError(f"the cell's container never started (bnmatrix {state}):\n{output}")
    time.sleep(3)  # the sleeper scenario is running inside it now
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "interrupted" in output
    assert ours(docker_client) == []
    assert docker_client.volumes.list(filters={"label": LABEL}) == []
    # No cell finished, so `latest` did not move: the run is read from its own folder.
    (manifest,) = (tmp_path / "r").glob("2*/manifest.json")
    assert json.loads(manifest.read_text())["status"] == "interrupted"


def test_a_killed_run_leaves_a_bounded_container_that_the_next_run_removes(
        docker_runs: dict[str, Any], docker_client: Any, image_map_args: list[str], tmp_path: Path,
        spawn: Spawn) -> None:
    matrix = probe_matrix(tmp_path, 600, ["sleeper"])
    command = [sys.executable, "-m", "bnmatrix", "run", "--matrix", str(matrix), "--backend", "docker",
               "--results", str(tmp_path / "r"), *image_map_args]
    process = spawn(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The cell's container, not the short-lived one that fills the scenarios volume before it.
    def cell_containers() -> list[Any]:
        return [c for c in ours(docker_client) if c.attrs["Config"]["Cmd"] != ["true"]]
    deadline = time.monotonic() + 120
    while not cell_containers() and time.monotonic() < deadline:
        time.sleep(0.5)
    (container,) = cell_containers()
    assert container.attrs["Config"]["Cmd"] == ["sleep", str(600 + 300)]  # it ends by itself, at the latest
    assert container.labels["org.bnmatrix.pid"] == str(process.pid)
    time.sleep(3)
    process.kill()  # no cleanup can run
    process.wait()
    assert ours(docker_client) and docker_client.volumes.list(filters={"label": LABEL})
    # A container of a run from before a reboot, whose pid a live process (this one) has now: its owner's start
    # time tells it apart.
    labels = {**container.labels, "org.bnmatrix.pid": str(os.getpid()), "org.bnmatrix.started-ticks": "1"}
    docker_client.containers.create(container.image.id, command=["true"], labels=labels)
    # The next run on this daemon sees that the owners are gone and removes what they left.
    assert main(["run", "--matrix", str(probe_matrix(tmp_path, 15, ["broken"])), "--backend", "docker",
                 "--results", str(tmp_path / "r2"), *image_map_args]) == 1  # (every scenario errors)
    assert ours(docker_client) == []
    assert docker_client.volumes.list(filters={"label": LABEL}) == []


def test_ctrl_c_during_an_image_build_stops_it_promptly(docker_runs: dict[str, Any], docker_client: Any,
                                                        image_map_args: list[str], tmp_path: Path,
                                                        spawn: Spawn) -> None:
    # --rebuild: a real build of the cell's image (uv installs TF inside its builder container); cancelled, it
    # leaves the existing image of that tag as it was.
    matrix = probe_matrix(tmp_path, 60, ["broken"])
    before = {c.id for c in docker_client.containers.list(all=True, ignore_removed=True)}
    command = [sys.executable, "-m", "bnmatrix", "run", "--matrix", str(matrix), "--backend", "docker", "--rebuild",
               "--results", str(tmp_path / "r"), *image_map_args]
    process = spawn(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    log = None
    while time.monotonic() < deadline and process.poll() is None:
        log = next(iter((tmp_path / "r").glob("2*/logs/*/setup.log")), None)
        if log is not None and re.search("^bnmatrix: installing ", log.read_text(), re.M):  # the script's output
            break
        time.sleep(0.2)
    assert log is not None and process.poll() is None, "the build never started"
    time.sleep(2)  # inside the install now
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert time.monotonic() - interrupted < 30, "the build went on after Ctrl-C"
    time.sleep(2)  # the daemon removes the cancelled step's container
    assert {c.id for c in docker_client.containers.list(all=True, ignore_removed=True)} == before


def test_a_rebuild_downloads_nothing_and_replaces_the_image(docker_runs: dict[str, Any], docker_client: Any,
                                                            image_map_args: list[str], tmp_path: Path) -> None:
    # The cell's image was built above, so every wheel it needs is in the daemon's bnmatrix-cache volume: building
    # it again prepares only what must be built from an sdist, and downloads nothing.
    tag = docker_runs["tf-1.15.5-cpu"].environment["cell_image"]
    before = docker_client.images.get(tag)
    assert main(["run", "--matrix", str(probe_matrix(tmp_path, 60, ["broken"])), "--backend", "docker", "--rebuild",
                 "--results", str(tmp_path / "r"), *image_map_args]) == 1  # (its one scenario errs)
    (log,) = (tmp_path / "r").glob("2*/logs/tf-1.15.5-cpu/setup.log")
    text = log.read_text()
    prepared = re.search(r"^Prepared (\d+) packages? in", text, re.M)
    built = re.findall(r"^ +Built ", text, re.M)
    assert re.search(r"^Installed \d+ packages in", text, re.M), text
    assert prepared is None or int(prepared.group(1)) == len(built), text  # prepared = downloaded + built
    after = docker_client.images.get(tag)
    assert after.id != before.id and before.id not in {i.id for i in docker_client.images.list(all=True)}
    assert after.labels["org.bnmatrix.pid"] == "" and after.attrs["Config"]["Volumes"] is None


def test_a_container_two_threads_remove_at_once_is_no_error(docker_runs: dict[str, Any], docker_client: Any) -> None:
    """A stop while a build ends: the build's cleanup and the backend's close remove the same container at once, and
    the daemon answers one of them 409 (removal already in progress). Neither may turn the stop into an error."""
    from bnmatrix.backends.docker import LABEL_RUN, DockerBackend
    from bnmatrix.config import ContainerSettings

    backend = DockerBackend(docker_client, ContainerSettings(), "remove-race", (), sweep=False)
    image = docker_runs["tf-1.15.5-cpu"].environment["cell_image"]
    for _ in range(8):
        container = docker_client.containers.run(image, ["sleep", "60"], detach=True,
                                                 labels={LABEL: "bnmatrix", LABEL_RUN: "remove-race"})
        failures: list[BaseException] = []

        def remove(container: Any = container, failures: list[BaseException] = failures) -> None:
            try:
                backend._remove(container)
            except BaseException as exc:  # what a thread raised is the finding
                failures.append(exc)

        threads = [threading.Thread(target=remove) for _ in range(2)] + [threading.Thread(target=backend.close)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        backend.closed = False
    assert ours(docker_client) == []


def test_a_gpu_cell_on_a_daemon_that_serves_no_gpu_is_not_run_with_the_daemons_answer(
        docker_runs: dict[str, Any], docker_client: Any, image_map_args: list[str], tmp_path: Path) -> None:
    """GPUs are probed with `docker run --gpus all ... nvidia-smi`, not read from the daemon's runtimes: here (no
    NVIDIA Container Toolkit) the daemon refuses the device request, and the cell says so, as `not run`."""
    matrix = probe_matrix(tmp_path, 60, ["layers_bn_session"])
    matrix.write_text(matrix.read_text().replace("devices: [cpu]", "devices: [gpu]"))
    python = dict(entry.split("=", 1) for entry in image_map_args[1::2]).get("python:3.7-slim", "python:3.7-slim")
    mapped = [*image_map_args, "--image-map", f"tensorflow/tensorflow:1.15.5-gpu-py3={python}"]
    assert main(["run", "--matrix", str(matrix), "--backend", "docker", "--results", str(tmp_path / "r"),
                 *mapped]) == 0  # not asked for by name: left out
    (run,) = (tmp_path / "r").iterdir()  # (`latest` names a run with a cell that ran)
    (cell,) = load_run(run).cells
    assert cell.status.value == "not-run" and cell.reason is not None
    assert cell.reason.startswith(f"no GPU in containers: `docker run --gpus all {python} nvidia-smi` answered: ")
    assert "could not select device driver" in cell.reason, cell.reason  # the daemon's own words
    assert main(["run", "--matrix", str(matrix), "--backend", "docker", "--results", str(tmp_path / "r"),
                 "--select", "tf-1.15.5-gpu", *mapped]) == 1  # asked for: a cell that cannot run fails the run
    assert ours(docker_client) == []  # the probe's container is gone
