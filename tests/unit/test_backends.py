"""The backend registry: every backend module registers itself, auto tries them in order, and a backend added in
one file is chosen by name and by auto without a change anywhere else."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from bnmatrix import backends
from bnmatrix.backends import Backend, BackendKind, CellSession, Reproduction, Setup, backend_kinds, select_backend
from bnmatrix.config import Matrix, data_path
from bnmatrix.errors import BnMatrixError
from bnmatrix.plan import Cell


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
