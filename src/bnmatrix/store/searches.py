"""A run's bisect conclusions (bisect.json), typed: each search's probes, the changes it found and its answer;
reading them, and which search each concludes."""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.version import Version

from bnmatrix.intake import read_json
from bnmatrix.store.files import known_fields, moment
from bnmatrix.verdict import ANSWERS, Finding, Status

if TYPE_CHECKING:
    from bnmatrix.store.records import CellResult, Manifest

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


@dataclass(frozen=True)
class Probe:
    """One release's verdict on one scenario, with the numbers it rests on and where it is stored."""

    version: str
    status: Status
    python: str | None
    run_id: str | None
    cell_id: str
    reason: str | None = None
    moving_mean: float | None = None
    expected_moving_mean: float | None = None
    effective_updates: float | None = None
    steps: int | None = None
    facets: dict[str, str] | None = None  # the verdict's facets; None in a search stored before facets were

    @classmethod
    def of(cls, result: CellResult, scenario: str) -> Probe:
        found = result.scenarios.get(scenario)
        if found is None:
            return cls(result.cell.tf, result.own_status, result.cell.python, result.run_id, result.id, result.reason)
        numbers = found.numbers()
        return cls(result.cell.tf, found.status, result.cell.python, result.run_id, result.id, found.reason,
                   numbers["moving_mean"], numbers["expected_moving_mean"], numbers["effective_updates"], found.steps,
                   dict(found.finding.facets))

    @property
    def judged(self) -> bool:
        return self.status in ANSWERS

    @property
    def finding(self) -> Finding:
        return Finding.from_dict({"status": self.status.value, **(self.facets or {})})

    def agrees(self, other: Probe) -> bool:
        """The same finding; a probe stored before facets were agrees with one of the same status."""
        if self.facets is None or other.facets is None:
            return self.status == other.status
        return self.finding == other.finding

    def describe(self) -> str:
        text = f"{self.version} (Python {self.python}): {self.status.icon} {self.finding.label()}"
        if self.moving_mean is not None and self.expected_moving_mean is not None:
            updates = "n/a" if self.effective_updates is None else f"{self.effective_updates:.1f}"
            return (f"{text}: moving mean {self.moving_mean:.6g} (expected {self.expected_moving_mean:.6g}), "
                    f"{updates} effective updates of {self.steps}")
        return f"{text}: {self.reason}" if self.reason else text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Probe:
        return cls(**{**known_fields(cls, data, "bisect probe"), "status": Status(data["status"])})

    def to_dict(self) -> dict[str, Any]:
        data = {**{f.name: getattr(self, f.name) for f in fields(self)}, "status": self.status.value}
        return data if self.facets is not None else {k: v for k, v in data.items() if k != "facets"}


@dataclass(frozen=True)
class End:
    """A search's --good or --bad release and the verdict there (None before it was probed)."""

    version: str
    status: Status | None


@dataclass(frozen=True)
class Change:
    """Where a verdict changes: the last release before and the first after (adjacent when `exact`; else the
    releases between gave no verdict)."""

    before: str
    after: str
    was: Finding
    becomes: Finding
    exact: bool
    unjudged: list[str]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Change:
        was = Finding.from_dict({"status": data["from"], **data.get("from_facets", {})})
        becomes = Finding.from_dict({"status": data["to"], **data.get("to_facets", {})})
        return cls(data["before"], data["after"], was, becomes, data["exact"], list(data["unjudged"]))

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "from": self.was.status.value,
                "to": self.becomes.status.value, "from_facets": dict(self.was.facets),
                "to_facets": dict(self.becomes.facets), "exact": self.exact, "unjudged": self.unjudged}


@dataclass(frozen=True, kw_only=True)
class Conclusion:
    """One bisect search as bisect.json holds it: every probe, every change found, and the answer in words."""

    scenario: str
    device: str
    variant: str | None
    good: End
    bad: End
    outcome: Outcome
    answer: str
    candidates: list[str]  # the releases searched, in release order
    unavailable: list[dict[str, str]]  # {"version", "why"}: releases in range that cannot be probed here
    probes: list[Probe]
    checked: int
    total: int
    changes: list[Change]
    exhaustive: bool
    assumed_monotonic: bool
    monotonic: bool
    command: str
    updated: str
    run_id: str | None = None  # the run holding it, once read from a results root (stored once, for the file)
    package: str | None = None  # bisect --package: the package whose releases were searched, TF held at `tf`
    tf: str | None = None

    # Written for readers of the file: the first change's ends and verdicts (read back from `changes`).
    FIRST_CHANGE = ("changed_in", "last_before", "from_status", "to_status")

    @property
    def first_change(self) -> Change | None:
        return self.changes[0] if self.changes else None

    def probe_at(self, version: str) -> Probe | None:
        return next((p for p in self.probes if p.version == version), None)

    @property
    def ordered(self) -> list[str]:
        return sorted(self.candidates, key=Version)

    @property
    def key(self) -> tuple[Any, ...]:
        """What identifies a search: a rerun of the same search replaces its conclusion."""
        return (self.scenario, self.device, self.variant, self.good.version, self.bad.version, self.package, self.tf)

    @property
    def span(self) -> tuple[Any, ...]:
        """(scenario, device, variant, older version, newer version): the change the search looked at, whichever way
        round --good and --bad were given; what a change point of a run is matched with."""
        ends = sorted((self.good.version, self.bad.version), key=Version)
        if self.package:  # a package's releases at one TF: no change point of a run's TF releases
            return (self.scenario, self.device, self.variant, *ends, self.package, self.tf)
        return (self.scenario, self.device, self.variant, *ends)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Conclusion:
        """From a search of a bisect.json that passed its schema."""
        values = known_fields(cls, data, "bisect search", legacy=cls.FIRST_CHANGE)

        def end(value: dict[str, Any]) -> End:
            return End(value["version"], Status(value["status"]) if value.get("status") else None)

        return cls(**{**values, "good": end(data["good"]), "bad": end(data["bad"]), "outcome": Outcome(data["outcome"]),
                      "probes": [Probe.from_dict(p) for p in data["probes"]],
                      "changes": [Change.from_dict(c) for c in data["changes"]]})

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "run_id"
                and not (f.name in ("package", "tf") and getattr(self, f.name) is None)}
        data.update(good=_end(self.good), bad=_end(self.bad), outcome=self.outcome.value,
                    probes=[p.to_dict() for p in self.probes], changes=[c.to_dict() for c in self.changes])
        if self.first_change:
            change = self.first_change
            data.update(changed_in=change.after, last_before=change.before, from_status=change.was.status.value,
                        to_status=change.becomes.status.value)
        return data


def _end(end: End) -> dict[str, Any]:
    return {"version": end.version, "status": end.status.value if end.status else None}


def latest_searches(runs: Iterable[tuple[Path, Manifest]]) -> list[Conclusion]:
    """The newest conclusion of every bisect search in these runs ((directory, manifest) pairs), each with the
    id of the run that holds it."""
    found: dict[tuple[Any, ...], Conclusion] = {}
    for directory, manifest in runs:
        for search in read_searches(directory):
            if search.key not in found or moment(search.updated) >= moment(found[search.key].updated):
                found[search.key] = dataclasses.replace(search, run_id=manifest.run_id or directory.name)
    return list(found.values())


def read_searches(directory: Path) -> list[Conclusion]:
    """A run's bisect conclusions (none without a bisect.json); a damaged or forged file is a BnMatrixError."""
    path = directory / BISECT_FILE
    if not os.path.lexists(path):
        return []
    return [Conclusion.from_dict(search) for search in read_json(path, "bisect")["searches"]]
