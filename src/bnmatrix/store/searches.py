"""A run's bisect conclusions (bisect.json): reading them, and which search each concludes."""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.version import Version

from bnmatrix.intake import read_json
from bnmatrix.store.files import moment

if TYPE_CHECKING:
    from bnmatrix.store.records import Manifest

BISECT_SCHEMA = "bnmatrix.bisect/1"
BISECT_FILE = "bisect.json"  # a run's bisect conclusions (bnmatrix bisect), beside its manifest


class Outcome(enum.Enum):
    """How a bisect search ended (a conclusion's `outcome`)."""

    NARROWED = "narrowed"  # to the exact release of every change
    RANGE = "range"  # to two releases with none between that gives a verdict
    INCOMPLETE = "incomplete"  # its time budget ran out (run again to go on)
    ENDPOINT_ERROR = "endpoint-error"  # an end gave no verdict: nothing to compare with
    NOTHING_TO_BISECT = "nothing-to-bisect"  # both ends agree
    NO_CHANGE = "no-change"  # --exhaustive: every release agrees


def search_key(search: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a bisect search: a rerun of the same search replaces its conclusion."""
    return (search.get("scenario"), search.get("device"), search.get("variant"), search.get("good", {}).get("version"),
            search.get("bad", {}).get("version"))


def change_span(search: dict[str, Any]) -> tuple[Any, ...]:
    """(scenario, device, variant, older version, newer version): the change a search looked at, whichever
    way round --good and --bad were given; what a change point of a run is matched with."""
    ends = sorted((search["good"]["version"], search["bad"]["version"]), key=Version)
    return (search["scenario"], search["device"], search.get("variant"), *ends)


def latest_searches(runs: Iterable[tuple[Path, Manifest]]) -> list[dict[str, Any]]:
    """The newest conclusion of every bisect search in these runs ((directory, manifest) pairs), each with the
    id of the run that holds it."""
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for directory, manifest in runs:
        for search in read_searches(directory):
            key = search_key(search)
            if key not in found or moment(search.get("updated")) >= moment(found[key].get("updated")):
                found[key] = {**search, "run_id": manifest.run_id or directory.name}
    return list(found.values())


def read_searches(directory: Path) -> list[dict[str, Any]]:
    """A run's bisect conclusions (none without a bisect.json); a damaged or forged file is a BnMatrixError."""
    path = directory / BISECT_FILE
    if not os.path.lexists(path):
        return []
    return list(read_json(path, "bisect")["searches"])
