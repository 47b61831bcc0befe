"""The host's judgement: a scenario's observations -> a status and a reason, from the numbers only.

With a constant batch of mean mu and variance s2, momentum m and k updates from the initial
(0, 1), the moving statistics must be mu * (1 - m**k) and s2 + (1 - s2) * m**k. A scenario reports
what it read; this module says how many updates that implies, which batch variance (biased, n, or
unbiased, n - 1) the moving variance follows, and which statistics a training-mode forward pass
used. Whatever the scenario thinks of itself is never read.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

Correction = Literal["biased", "unbiased"]  # which batch variance: n or n-1 in the denominator

# float32 statistics after a few hundred updates agree with the closed form far closer than this.
REL_TOLERANCE = 1e-4
STALE_TOLERANCE = 1e-7
# A forward pass's outputs are float32 normalised values: their error is far below this.
FORWARD_TOLERANCE = 1e-3


class Status(str, enum.Enum):
    """What one cell x scenario shows: the one vocabulary of results, report, CLI, JUnit and schemas. A member is
    its word in every text (a page, a file, a dict of words): `Status.STALE == "stale"`."""

    UPDATED = "updated"
    STALE = "stale"
    WRONG = "wrong"
    UNSUPPORTED = "unsupported"
    ERROR = "error"
    BUILD_ERROR = "build-error"
    NOT_RUN = "not-run"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def icon(self) -> str:
        return _STATUS_TABLE[self][0]

    @property
    def word(self) -> str:
        return _STATUS_TABLE[self][1]

    @property
    def colour(self) -> str:
        """Okabe-Ito colours: distinct under the common colour-vision deficiencies."""
        return _STATUS_TABLE[self][2]

    @property
    def junit(self) -> str:
        """The JUnit outcome without an expectation: pass, failure, error or skipped."""
        return _STATUS_TABLE[self][3]

    @property
    def meaning(self) -> str:
        return _STATUS_TABLE[self][4]

    @classmethod
    def scenario_values(cls) -> list[str]:
        """The statuses a scenario that ran can get (the others belong to its cell)."""
        return [s.value for s in cls if s not in (cls.BUILD_ERROR, cls.NOT_RUN)]


_STATUS_TABLE: dict[Status, tuple[str, str, str, str, str]] = {
    Status.UPDATED: ("✔", "updated", "#009E73", "pass",
                     "the moving statistics match the closed form for every training step"),
    Status.STALE: ("✘", "stale", "#D55E00", "failure", "the moving statistics never left their initial values (0, 1)"),
    Status.WRONG: ("≠", "wrong", "#CC79A7", "failure",
                   "the statistics changed, but not as one update per step would (partial, double, other data)"),
    Status.UNSUPPORTED: ("∅", "unsupported", "#E69F00", "skipped",
                         "an API the pattern needs is absent in this TensorFlow"),
    Status.ERROR: ("‼", "error", "#000000", "error", "the scenario failed or its result was refused; see why"),
    Status.BUILD_ERROR: ("⚠", "build error", "#56B4E9", "error",
                         "the cell's environment could not be built; see the setup log"),
    Status.NOT_RUN: ("–", "not run", "#999999", "skipped",
                     "this host cannot serve the cell (no such Python, no GPU)"),
}


# The statuses that answer "do the statistics update?" (the others say why there is no answer).
ANSWERS = frozenset((Status.UPDATED, Status.STALE, Status.WRONG, Status.UNSUPPORTED))
VERDICTS = frozenset(s.value for s in ANSWERS)


class CellStatus(enum.Enum):
    """How a cell as a whole went; its scenarios carry their own Status when it ran."""

    RAN = "ran"
    NOT_RUN = "not-run"
    BUILD_ERROR = "build-error"
    ERROR = "error"


@dataclass(frozen=True)
class BatchData:
    """The data a BN layer saw in training: its mean and both variances."""

    n: int
    mean: float
    variance_biased: float
    variance_unbiased: float

    @classmethod
    def from_observation(cls, data: dict[str, Any]) -> BatchData:
        """From {"values": [...]} or {"n", "mean", "variance_biased", "variance_unbiased"} (schema-checked)."""
        if "values" in data:
            values = [float(v) for v in data["values"]]
            n = len(values)
            mean = sum(values) / n
            squares = sum((v - mean) ** 2 for v in values)
            return cls(n, mean, squares / n, squares / (n - 1))
        return cls(int(data["n"]), float(data["mean"]), float(data["variance_biased"]),
                   float(data["variance_unbiased"]))

    def variance(self, correction: Correction) -> float:
        """The batch variance with that correction (a word that is none of them is refused, never read as one)."""
        if correction not in CORRECTION_WORDS:
            raise ValueError(f"variance correction {correction!r}; expected one of {', '.join(CORRECTION_WORDS)}")
        return self.variance_unbiased if correction == "unbiased" else self.variance_biased


CORRECTION_WORDS: dict[Correction, str] = {"biased": "the biased batch variance (n)",
                                           "unbiased": "the unbiased batch variance (n-1)"}


def expected_statistics(data: BatchData, momentum: float, updates: float,
                        correction: Correction = "biased") -> tuple[float, float]:
    """Moving mean and variance after `updates` updates from (0, 1) on a constant batch."""
    decay = momentum ** updates
    variance = data.variance(correction)
    return data.mean * (1.0 - decay), variance + (1.0 - variance) * decay


def effective_updates(moving_mean: float, data: BatchData, momentum: float) -> float | None:
    """The k for which mu * (1 - m**k) equals the observed moving mean; None when no k does."""
    if data.mean == 0.0:
        return None
    remaining = 1.0 - moving_mean / data.mean
    if remaining <= 0.0 or remaining > 1.0 + STALE_TOLERANCE:
        return None  # past the batch mean, or on the other side of 0: no number of updates explains it
    return 0.0 if remaining >= 1.0 else math.log(remaining) / math.log(momentum)


def effective_variance_updates(moving_variance: float, variance: float, momentum: float) -> float | None:
    """The k for which s2 + (1 - s2) * m**k equals the observed moving variance; None when no k does."""
    if abs(1.0 - variance) < 1e-12:
        return None
    remaining = (moving_variance - variance) / (1.0 - variance)
    if remaining <= 0.0 or remaining > 1.0 + STALE_TOLERANCE:
        return None
    return 0.0 if remaining >= 1.0 else math.log(remaining) / math.log(momentum)


def fitting_momentum(moving_mean: float, moving_variance: float, data: BatchData,
                     steps: int) -> tuple[float, Correction] | None:
    """The momentum (and the batch variance) for which `steps` updates give both observed statistics, where one
    does: what a scenario that forgot to report its own momentum has."""
    if data.mean == 0.0:
        return None
    remaining = 1.0 - moving_mean / data.mean
    if not 0.0 < remaining < 1.0:
        return None
    momentum = remaining ** (1.0 / steps)
    for correction in CORRECTION_WORDS:
        if close(moving_variance, expected_statistics(data, momentum, steps, correction)[1]):
            return momentum, correction
    return None


def close(observed: float, expected: float, tolerance: float = REL_TOLERANCE) -> bool:
    return abs(observed - expected) <= tolerance * max(1.0, abs(expected))


@dataclass(frozen=True)
class LayerVerdict:
    """The judgement of one BN layer's moving statistics."""

    status: Status
    reason: str
    expected_moving_mean: float
    expected_moving_variance: float
    effective_updates: float | None
    effective_updates_variance: float | None
    variance_correction: Correction | None  # None when neither fits
    forward_statistics: str | None  # "batch" or "moving": what a training-mode forward pass used
    data: BatchData  # the batch the layer was judged against
    follows: str | None = None  # where the layer offers alternatives: "batch" (its own data) or the alternative's label

    @property
    def counts_the_batch(self) -> bool:
        """Whether its effective updates count updates towards the batch the layer was given (not when its statistics
        follow other data)."""
        return self.follows in (None, "batch")

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "reason": self.reason, "expected_moving_mean": self.expected_moving_mean,
                "expected_moving_variance": self.expected_moving_variance,
                "effective_updates": self.effective_updates,
                "effective_updates_variance": self.effective_updates_variance,
                "variance_correction": self.variance_correction, "forward_statistics": self.forward_statistics,
                **({"follows": self.follows} if self.follows is not None else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any], layer: dict[str, Any]) -> LayerVerdict:
        """A stored verdict (schema-checked) on `layer`, the observations it judged."""
        correction, forward = data.get("variance_correction"), data.get("forward_statistics")
        if correction not in (None, *CORRECTION_WORDS) or forward not in (None, "batch", "moving"):
            raise ValueError(f"a stored verdict: variance correction {correction!r}, forward statistics {forward!r}")
        return cls(Status(data["status"]), data["reason"], data["expected_moving_mean"],
                   data["expected_moving_variance"], data["effective_updates"], data["effective_updates_variance"],
                   correction, forward, BatchData.from_observation(layer["data"]), data.get("follows"))


def _variance_correction(moving_variance: float, data: BatchData, momentum: float,
                         updates: float) -> Correction | None:
    """Which batch variance the moving variance follows: the one whose implied number of updates is
    that of the mean (within half an update or 1%); None when neither, or when the statistics barely
    moved (then every variance fits)."""
    if updates < 0.5:
        return None
    fits: list[tuple[float, Correction]] = []
    for correction in CORRECTION_WORDS:
        implied = effective_variance_updates(moving_variance, data.variance(correction), momentum)
        if implied is not None and abs(implied - updates) <= max(0.5, 0.01 * updates):
            fits.append((abs(implied - updates), correction))
    return min(fits)[1] if fits else None


def _initial(moving_mean: float, moving_variance: float) -> bool:
    """The statistics never left their initial (0, 1)."""
    return abs(moving_mean) <= STALE_TOLERANCE and abs(moving_variance - 1.0) <= STALE_TOLERANCE


def _ratio(updates: float, steps: int) -> str:
    return f"{updates:.2f} effective updates for {steps} steps ({updates / steps:.2f}x)"


def forward_statistics(forward: dict[str, Any], data: BatchData) -> str | None:
    """Whether a training-mode forward pass normalised with the batch's statistics or the moving ones."""
    epsilon, gamma, beta = float(forward["epsilon"]), float(forward.get("gamma", 1.0)), float(forward.get("beta", 0.0))
    inputs, outputs = forward["inputs"], forward["outputs"]
    if not inputs or len(inputs) != len(outputs):
        return None
    candidates = {"batch": (data.mean, data.variance_biased),
                  "moving": (float(forward["moving_mean"]), float(forward["moving_variance"]))}

    def predicts(mean: float, variance: float) -> bool:
        expected = [gamma * (x - mean) / math.sqrt(variance + epsilon) + beta for x in inputs]
        return all(close(y, e, FORWARD_TOLERANCE) for y, e in zip(outputs, expected, strict=True))

    fits = [name for name, (mean, variance) in candidates.items() if predicts(mean, variance)]
    return fits[0] if len(fits) == 1 else None


def judge_layer(layer: dict[str, Any], steps: int, momentum: float, steps_ran: int | None = None) -> LayerVerdict:
    """The verdict on one layer's observed statistics against the closed form for `steps` updates; `steps_ran`, where
    the scenario counted them, is how many training steps really ran (the reason tells a layer that updated on every
    step that ran apart from one that updated on every other step)."""
    data = BatchData.from_observation(layer["data"])
    moving_mean, moving_variance = float(layer["moving_mean"]), float(layer["moving_variance"])
    if momentum == 0.0:
        return _judge_without_momentum(data, moving_mean, moving_variance, steps)
    mean_updates = effective_updates(moving_mean, data, momentum)
    reference = mean_updates if mean_updates is not None else float(steps)
    correction = _variance_correction(moving_variance, data, momentum, reference)
    variance_updates = effective_variance_updates(moving_variance, data.variance(correction or "biased"), momentum)
    expected_mean, expected_variance = expected_statistics(data, momentum, steps, correction or "biased")
    forward = forward_statistics(layer["forward"], data) if layer.get("forward") else None
    used = ""
    if layer.get("forward"):
        used = (f"; in training mode the forward pass used the {forward} statistics" if forward
                else "; the training-mode forward pass fits neither the batch nor the moving statistics")

    def verdict(status: Status, reason: str, follows: str | None = None) -> LayerVerdict:
        return LayerVerdict(status, reason + used, expected_mean, expected_variance, mean_updates, variance_updates,
                            correction, forward, data, follows)

    if _initial(moving_mean, moving_variance):
        return verdict(Status.STALE, "moving statistics still at their initial values (0, 1)")
    follows = f"moving variance follows {CORRECTION_WORDS[correction]}" if correction else (
        f"moving variance {moving_variance:.6g} follows neither the biased nor the unbiased batch variance")
    mean_ok = close(moving_mean, expected_mean)
    offered = layer.get("alternatives") or {}
    if mean_ok and correction is not None and close(moving_variance, expected_variance):
        return verdict(Status.UPDATED, f"matches the closed form for {steps} updates (within {REL_TOLERANCE:g}); "
                                       f"{follows}", "batch" if offered else None)
    for label, alternative in offered.items():
        other = BatchData.from_observation(alternative)
        for kind in CORRECTION_WORDS:
            mean, variance = expected_statistics(other, momentum, steps, kind)
            if close(moving_mean, mean) and close(moving_variance, variance):
                return verdict(Status.WRONG, f"the moving statistics follow {label} ({kind} variance) for {steps} "
                               "updates, not the batch the layer was given", label)
    if mean_updates is None:
        return verdict(Status.WRONG, f"moving mean {moving_mean:.6g} fits no number of updates "
                       f"(batch mean {data.mean:.6g}); {follows}")
    if steps_ran is not None and steps_ran != steps and correction is not None:
        ran_mean, ran_variance = expected_statistics(data, momentum, steps_ran, correction)
        if close(moving_mean, ran_mean) and close(moving_variance, ran_variance):
            return verdict(Status.WRONG, f"only {steps_ran} of the {steps} requested training steps ran, and the "
                                         f"statistics updated on each of them (the closed form for {steps_ran} "
                                         f"updates fits); {follows}")
    mean_part = (f"moving mean fits {steps} updates" if mean_ok else f"moving mean: {_ratio(mean_updates, steps)}")
    variance_part = follows
    if variance_updates is not None and not math.isclose(variance_updates, mean_updates, abs_tol=0.01):
        variance_part += f", {_ratio(variance_updates, steps)}"
    fit = fitting_momentum(moving_mean, moving_variance, data, steps)
    if fit is not None and not math.isclose(fit[0], momentum, rel_tol=1e-3):
        variance_part += (f"; the numbers fit {steps} updates with momentum {fit[0]:.4g} ({fit[1]} variance), not "
                          f"the {momentum:g} the scenario reported")
    ran = (f"; {steps_ran} of the {steps} requested training steps ran"
           if steps_ran is not None and steps_ran != steps else "")
    return verdict(Status.WRONG, f"{mean_part}; {variance_part}{ran}")


def _judge_without_momentum(data: BatchData, moving_mean: float, moving_variance: float, steps: int) -> LayerVerdict:
    """Momentum 0: every update replaces the statistics with the batch's, so the numbers tell whether they updated
    (and with which variance) but not how often."""
    fits = [c for c in CORRECTION_WORDS if close(moving_mean, data.mean) and close(moving_variance, data.variance(c))]
    correction = fits[0] if len(fits) == 1 else None

    def verdict(status: Status, reason: str) -> LayerVerdict:
        return LayerVerdict(status, reason, data.mean, data.variance(correction or "biased"), None, None, correction,
                            None, data)

    if _initial(moving_mean, moving_variance):
        return verdict(Status.STALE, "moving statistics still at their initial values (0, 1)")
    if correction is not None:
        return verdict(Status.UPDATED, f"momentum 0: the moving statistics equal the batch's (mean {data.mean:.6g}, "
                                       f"{CORRECTION_WORDS[correction]}), as any of the {steps} updates leaves them; "
                                       "how many updates ran cannot be told")
    return verdict(Status.WRONG, f"momentum 0: the moving statistics ({moving_mean:.6g}, {moving_variance:.6g}) are "
                                 f"not the batch's (mean {data.mean:.6g}, variance {data.variance_biased:.6g} biased "
                                 f"or {data.variance_unbiased:.6g} unbiased)")


def judge(observation: dict[str, Any]) -> tuple[Status, str, dict[str, LayerVerdict]]:
    """(status, reason, per judged layer verdict) of a schema-checked `observed` scenario result.

    Every layer that names its data is judged; when they disagree the scenario is `wrong` and the
    reason names each layer's verdict.
    """
    steps, momentum = int(observation["steps"]), float(observation["momentum"])
    steps_ran = observation.get("steps_ran")
    verdicts = {name: judge_layer(layer, steps, momentum, steps_ran)
                for name, layer in observation["layers"].items() if layer.get("data") is not None}
    if not verdicts:
        return Status.ERROR, "the scenario judged no layer: no layer in its result names the data it trained on", {}
    statuses = {v.status for v in verdicts.values()}
    if len(verdicts) == 1 or len(statuses) == 1:
        first = next(iter(verdicts.values()))
        if len(verdicts) == 1:
            return first.status, first.reason, verdicts
        return first.status, "; ".join(f"{name}: {v.reason}" for name, v in verdicts.items()), verdicts
    return Status.WRONG, "; ".join(f"{name}: {v.status.value} ({v.reason})" for name, v in verdicts.items()), verdicts


def _per_step(updates: float, steps: int) -> str:
    """Updates per step to the nearest 0.05, as a facet compares them: two update ops racing on one variable give
    200.07 to 200.58 updates in 100 steps from run to run, one facet value ("2.00"), not a change."""
    return f"{round(updates / steps * 20) / 20:.2f}"


# --- facets: every observable part of a verdict, and what a change between two versions is ---------------------

@dataclass(frozen=True)
class Facet:
    """One observable part of a verdict besides its status, judged from the numbers (None where they do not show it).
    `usual` is the value most results have: the short note leaves it out, the full text never does."""

    name: str
    meaning: str
    short: str  # how a value reads in a note: "{}" is the value
    usual: str | None = None
    quiet: bool = False  # its usual value goes unsaid even in the full text (unless it is what changed)


FACETS = (
    Facet("updates", "effective updates of the moving mean per requested step (to the nearest 0.05), where neither "
                     "every step nor none updated them (a wrong verdict)", "{}×"),
    Facet("variance_updates", "effective updates of the moving variance per requested step (to the nearest 0.05), "
                              "where a wrong verdict's differ from the mean's", "variance {}×"),
    Facet("steps_ran", "training steps that really ran of those requested, where the scenario counted them and "
                       "they differ", "{} steps ran"),
    Facet("variance_correction", "which batch variance the moving variance follows: biased (n) or unbiased (n-1)",
          "{} variance", usual="biased"),
    Facet("forward_statistics", "which statistics a training-mode forward pass normalised with: the batch's or the "
                                "moving ones", "forward: {}"),
    Facet("follows", "which data the statistics follow where the scenario offers alternatives: the batch the layer "
                     "was given, or the alternative's label", "follows {}", usual="batch", quiet=True),
    Facet("moving_dtype", "the dtype of the moving statistics, where the scenario read it", "{} statistics",
          usual="float32", quiet=True),
)
FACET_NAMES = tuple(f.name for f in FACETS)


@dataclass(frozen=True, eq=False)
class Finding:
    """A verdict as versions are compared: its status and the value of every facet the numbers show. A change point is
    two neighbouring versions whose findings differ; diff, history, bisect, results.json and the report all say so
    through this one comparison. Two findings are equal when their status and every facet both could observe agree:
    a facet whose observation a result lacks (a dtype, a step count, alternatives or a forward pass it did not
    report, as results stored before those existed) is no difference."""

    status: Status
    facets: tuple[tuple[str, str], ...] = ()  # (facet name, value), in FACETS order, only the facets with a value
    unobserved: frozenset[str] = frozenset()  # facets the result had no observation for

    def _compared(self, other: Finding) -> tuple[dict[str, str], dict[str, str]]:
        skip = self.unobserved | other.unobserved
        return ({k: v for k, v in self.facets if k not in skip}, {k: v for k, v in other.facets if k not in skip})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Finding):
            return NotImplemented
        mine, theirs = self._compared(other)
        return self.status == other.status and mine == theirs

    def __hash__(self) -> int:
        return hash(self.status)  # equal findings share their status

    @classmethod
    def of(cls, status: Status, verdict: LayerVerdict | None = None, steps: int | None = None,
           steps_ran: int | None = None, layer: dict[str, Any] | None = None) -> Finding:
        """The finding of a scenario's result: `verdict` is its first judged layer's (None without numbers), `layer`
        that layer's observations."""
        if verdict is None or status not in (Status.UPDATED, Status.STALE, Status.WRONG):
            return cls(status)
        layer = layer or {}
        dtype = layer.get("dtype")
        unobserved = frozenset(name for name, seen in (("moving_dtype", dtype is not None),
                                                      ("steps_ran", steps_ran is not None),
                                                      ("follows", bool(layer.get("alternatives"))),
                                                      ("forward_statistics", bool(layer.get("forward")))) if not seen)
        counted = steps if status is Status.WRONG and verdict.counts_the_batch else None
        updates = (_per_step(verdict.effective_updates, counted) if counted and verdict.effective_updates is not None
                   else None)
        variance = (_per_step(verdict.effective_updates_variance, counted) if counted
                    and verdict.effective_updates_variance is not None else None)
        values = {"updates": updates, "variance_updates": variance if variance != updates else None,
                  "steps_ran": f"{steps_ran}/{steps}" if steps_ran is not None and steps_ran != steps else None,
                  "variance_correction": verdict.variance_correction, "forward_statistics": verdict.forward_statistics,
                  "follows": verdict.follows, "moving_dtype": dtype}
        return cls(status, tuple((name, value) for name in FACET_NAMES if (value := values[name]) is not None),
                   unobserved)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        """From {"status": ..., facet: value, ...} (a stored probe's or change's); unknown facets are refused."""
        unknown = sorted(set(data) - {"status", *FACET_NAMES})
        if unknown:
            raise ValueError(f"a stored finding: unknown facets {', '.join(unknown)}; expected some of "
                             f"{', '.join(FACET_NAMES)}")
        return cls(Status(data["status"]), tuple((n, str(data[n])) for n in FACET_NAMES if data.get(n) is not None))

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, **dict(self.facets)}

    def note(self, full: bool = False, show: Collection[str] = ()) -> str:
        """The facets in a few words ("2.00×, forward: batch"); the usual values only when `full`, or for the facets
        named in `show`."""
        values = dict(self.facets)
        return ", ".join(f.short.format(values[f.name]) for f in FACETS if f.name in values and (
            values[f.name] != f.usual or f.name in show or (full and not f.quiet)))

    def differing(self, other: Finding) -> set[str]:
        """The facets whose values differ between the two (where both could observe them)."""
        mine, theirs = self._compared(other)
        return {name for name in FACET_NAMES if mine.get(name) != theirs.get(name)}

    def label(self, full: bool = False, show: Collection[str] = ()) -> str:
        """The status and its note: "stale (forward: batch)"; "updated (biased variance)" only when `full` (or
        `show` names variance_correction)."""
        note = self.note(full, show)
        return f"{self.status.word} ({note})" if note else self.status.word

    @property
    def text(self) -> str:
        """The status with every facet: "stale (forward: batch)", "updated (biased variance)"."""
        return self.label(full=True)

    def versus(self, newer: Finding) -> tuple[str, str]:
        """Both findings in words for a change: short, with the facets that changed even where they are the usual."""
        show = self.differing(newer) if self.status == newer.status else set()
        return self.label(show=show), newer.label(show=show)

    def differences(self, newer: Finding) -> list[str]:
        """What changed from this finding to `newer`, one phrase per part: "status changed from stale to updated",
        "forward_statistics changed from batch to moving"."""
        found = [f"status changed from {self.status.word} to {newer.status.word}"
                 ] if self.status != newer.status else []
        old, new = dict(self.facets), dict(newer.facets)
        for name in [n for n in FACET_NAMES if n in self.differing(newer)]:  # beside a new status: those both show
            if not found or (name in old and name in new):
                found.append(f"{name} changed from {old.get(name, 'none')} to {new.get(name, 'none')}")
        return found
