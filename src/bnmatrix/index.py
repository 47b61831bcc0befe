"""The package index, and the matrix kept in step with it.

The index client lists a package's releases with the Pythons they have a Linux wheel for (PEP 691 JSON, PEP 503
HTML, or a local folder): bisect searches them, and `bnmatrix sync` compares them with matrix.yaml. Sync proposes
the newest patch of every minor release from the matrix's oldest on (a newer patch replaces the listed one, a new
minor is added with its neighbour's pins and variants), on the newest Python the scenarios run on that the release
has a wheel for, follows `pre` entries (release candidates) to their final release, and records each minor's
Python range (`wheels:`). It edits the file's text, entry by entry, so that its comments and layout stay.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import json
import platform
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from bnmatrix.config import DEFAULT_INDEX_URL, INDEX_URL, PACKAGE_DIR, Matrix, read_user_text
from bnmatrix.errors import BnMatrixError
from bnmatrix.plan import all_cells
from bnmatrix.store.files import write_atomically

INDEX_TIMEOUT_S = 60
# The Pythons the scenario scripts are written and tested for (docs/scenarios.md): sync picks a cell's among them.
PYTHONS = tuple(f"3.{minor}" for minor in range(6, 14))
NIGHTLY_PACKAGE = "tf-nightly"  # what `sync --nightly` adds: TensorFlow built every night from its main branch
LINE_WIDTH = 120  # matrix.yaml's lines, as ruff keeps the code's
SYNC_MARK = "(bnmatrix sync):"  # begins the comment above the expect rules sync adds for a release
REGISTRY_URL = "https://hub.docker.com"  # where sync looks up the GPU images' tags (Docker Hub's API)


# --- the package index -------------------------------------------------------------------------------

class NotListed(BnMatrixError):
    """The index has no such project (HTTP 404, or no folder in a local index)."""


class _Links(HTMLParser):
    """The file links of a PEP 503 project page: (file name, yanked)."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[tuple[str, bool]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            name = urllib.parse.unquote(urllib.parse.urlsplit(values["href"] or "").path.rsplit("/", 1)[-1])
            self.files.append((name, "data-yanked" in values))


IndexFile = tuple[str, bool, str | None]  # (file name, yanked, when it was uploaded: RFC 3339, UTC)


@functools.cache
def index_files(index_url: str, package: str) -> tuple[IndexFile, ...]:
    """Every file the index lists for `package`: (file name, yanked, upload time where the index says: PEP 700's
    upload-time of a JSON page; None on an HTML page or in a local folder, where uv sees none either, so that a
    cell's cutoff would leave it nothing to install)."""
    project = canonicalize_name(package)
    if not INDEX_URL.fullmatch(index_url):
        raise BnMatrixError(f"{index_url}: not a package index URL; expected an http(s):// or file:// URL such as "
                            f"{DEFAULT_INDEX_URL} (settings.index_url or --index-url)")
    if index_url.startswith("file://"):
        root = Path(urllib.request.url2pathname(urllib.parse.urlsplit(index_url).path))
        if not root.is_dir():
            raise BnMatrixError(f"{index_url}: no such folder ({root}); expected a local index: a folder with a folder "
                                "per project (settings.index_url or --index-url)")
        folder = root / project
        if (folder / "index.html").is_file():
            parser = _Links()
            parser.feed((folder / "index.html").read_text(encoding="utf-8", errors="replace"))
            return tuple((name, yanked, None) for name, yanked in parser.files)
        if folder.is_dir():
            return tuple((p.name, False, None) for p in sorted(folder.iterdir()) if p.is_file())
        raise NotListed(f"{index_url}: no project {project} in this local index (looked in {folder}); expected "
                        "the index the cells install from (settings.index_url or --index-url)")
    try:
        request = urllib.request.Request(f"{index_url.rstrip('/')}/{project}/", headers={
            "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1", "User-Agent": "bnmatrix"})
        with urllib.request.urlopen(request, timeout=INDEX_TIMEOUT_S) as response:
            kind = response.headers.get("Content-Type", "")
            body = response.read()
    except urllib.error.HTTPError as exc:
        error = NotListed if exc.code == 404 else BnMatrixError
        raise error(f"{index_url}: listing {project} answered HTTP {exc.code} {exc.reason}; expected the "
                    "index the cells install from (settings.index_url or --index-url)") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: a URL urllib cannot parse
        reason = getattr(exc, "reason", exc)
        raise BnMatrixError(f"{index_url}: cannot list the releases of {project}: {reason}; expected a reachable "
                            "package index (settings.index_url or --index-url)") from None
    if "json" in kind:
        try:
            data = json.loads(body)
            return tuple((f["filename"], bool(f.get("yanked")), f.get("upload-time") or None) for f in data["files"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BnMatrixError(f"{index_url}: the {project} page is not a PEP 691 project page ({type(exc).__name__}: "
                                f"{exc}); expected JSON with a 'files' list") from None
    parser = _Links()
    parser.feed(body.decode("utf-8", errors="replace"))
    return tuple((name, yanked, None) for name, yanked in parser.files)


@dataclass(frozen=True)
class Release:
    """A release on the index and the Pythons (X.Y) it has a wheel for on this machine's platform."""

    version: str
    pythons: tuple[str, ...]  # empty with `any_python`
    any_python: bool = False  # a pure-Python (py3) wheel: any Python serves it
    uploaded: str | None = None  # when its first file was uploaded (RFC 3339, UTC), where the index says

    def has_wheel_for(self, python: str) -> bool:
        return self.any_python or python in self.pythons


def _wheel_pythons(filename: str, machine: str) -> tuple[str | None, set[str]] | None:
    """(version, Pythons) a wheel serves on Linux `machine` ('*' in the set: any Python 3); None if it does not."""
    try:
        _, version, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return None
    pythons: set[str] = set()
    for tag in tags:  # the cells run glibc Linux: manylinux or linux wheels for this machine, or pure ones
        if tag.platform != "any" and not (tag.platform.startswith(("manylinux", "linux"))
                                          and tag.platform.endswith(machine)):
            continue
        match = re.fullmatch(r"cp3(\d+)", tag.interpreter)
        if match:
            pythons.add(f"3.{match[1]}")
        elif tag.interpreter in ("py3", "py30") or tag.interpreter.startswith("py3"):
            pythons.add("*")
    return (str(version), pythons) if pythons else None


def _utc(text: str) -> str | None:
    """An upload time as RFC 3339 in UTC to the second ("2024-06-28T18:50:15Z"); None if it is none."""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def list_releases(index_url: str, package: str, pre: bool = False,
                  dev: bool = False) -> tuple[list[Release], dict[str, str]]:
    """The releases of `package` with a Linux wheel for this machine, oldest first (release candidates and betas
    with `pre`, development releases, as nightlies are, with `dev`), and the releases left out with the reason
    (yanked, no wheel for this platform)."""
    machine = platform.machine() or "x86_64"
    wheels: dict[str, set[str]] = {}
    uploaded: dict[str, str] = {}
    seen: dict[str, str] = {}
    for filename, yanked, upload in index_files(index_url, package):
        match = re.match(r"[^-]+-([^-]+)-", filename)
        try:
            version = str(Version(match[1])) if match else None
        except InvalidVersion:
            continue
        if version is None:
            continue
        parsed = Version(version)
        if not (dev if parsed.is_devrelease else pre or not parsed.is_prerelease):
            continue
        if yanked:
            seen.setdefault(version, "yanked from the index")
            continue
        served = _wheel_pythons(filename, machine) if filename.endswith(".whl") else None
        if served is None:
            seen.setdefault(version, f"no wheel for Linux {machine}")
            continue
        wheels.setdefault(served[0] or version, set()).update(served[1])
        moment = _utc(upload) if upload else None  # compared in one form: the index's may carry microseconds
        if moment:
            uploaded[served[0] or version] = min(moment, uploaded.get(served[0] or version, moment))
    releases = [Release(v, tuple(sorted((p for p in pythons if p != "*"), key=minor_of)), "*" in pythons,
                        uploaded.get(v)) for v, pythons in wheels.items()]
    left_out = {v: why for v, why in seen.items() if v not in wheels}
    return sorted(releases, key=lambda r: Version(r.version)), left_out


def minor_of(python: str) -> int:
    return int(python.split(".")[1])


# --- bnmatrix sync ----------------------------------------------------------------------------------------

@dataclass
class Sync:
    """What `bnmatrix sync` found: the matrix text before and after, each change, and what it left out."""

    path: Path
    index_url: str
    package: str
    old: str
    new: str = ""
    changes: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # the GPU image each new or changed entry gets, and why
    latest_variants: tuple[str, ...] = ()  # the variants of today's dependencies, which nightlies do without
    set_up: dict[str, str] = field(default_factory=dict)  # a new or changed entry's release -> the one it follows

    @property
    def behind(self) -> bool:
        return self.new != self.old

    def diff(self) -> str:
        name = str(self.path)
        return "".join(difflib.unified_diff(self.old.splitlines(True), self.new.splitlines(True), name, name))

    def write(self) -> None:
        """Replace the file atomically, keeping its mode: a reader sees the old matrix or the new one. The matrix an
        installed bnmatrix ships is not rewritten: the next install would replace it."""
        if self.path.resolve().is_relative_to(PACKAGE_DIR):
            raise BnMatrixError(f"{self.path}: is the matrix this bnmatrix installation ships; expected your own: copy "
                                "it to ./matrix.yaml (or name one with --matrix) and sync that")
        write_atomically(self.path, self.new.encode("utf-8"), mode=self.path.stat().st_mode & 0o777)


def _release(version: str) -> tuple[int, int]:
    release = Version(version).release
    return release[0], release[1]


def _newest_python(release: Release) -> str | None:
    return max((p for p in release.pythons if p in PYTHONS), key=minor_of, default=None)


def _flow(value: Any, key: str = "") -> str:
    """A value in the flow style matrix.yaml's entries use: {tf: 2.21.0, python: "3.13", pins: ["numpy<2"]}."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v, k)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) or key == "tf":
        return str(value)
    return json.dumps(value)


def entry_text(spec: dict[str, Any], prefix: str) -> str:
    """A versions: entry as matrix.yaml writes it: one flow mapping after `prefix` ("  - "), wrapped before the
    key that would pass LINE_WIDTH, continued one column in from the brace."""
    parts = [f"{key}: {_flow(value, key)}" for key, value in spec.items()]
    lines, line = [], prefix + "{" + parts[0]
    for part in parts[1:]:
        if len(line) + len(part) + 3 > LINE_WIDTH:
            lines.append(line + ",")
            line = " " * (len(prefix) + 1) + part
        else:
            line += ", " + part
    return "\n".join([*lines, line + "}"])


def _moved_pins(pins: list[str], old: tuple[int, int], new: tuple[int, int], index_url: str,
                pre: bool) -> tuple[list[str], str]:
    """A variant's pins for a new minor release: a version that names the neighbour's minor names the new one
    (tf_keras~=2.21.0 -> tf_keras~=2.22.0). Returns them, and why the variant cannot follow ("" if it can)."""
    moved = []
    for pin in pins:
        name = Requirement(pin).name
        rest = pin[len(name):]
        pattern = rf"(?<![0-9.]){old[0]}\.{old[1]}(?=\.|$|[,;\s])"
        text = name + re.sub(pattern, f"{new[0]}.{new[1]}", rest)
        if text != pin:
            requirement = Requirement(text)
            try:
                releases, _ = list_releases(index_url, requirement.name, pre)
            except NotListed:
                releases = []
            if not any(requirement.specifier.contains(r.version, prereleases=pre) for r in releases):
                return [], f"no release of {requirement.name} on the index matches {text}"
        moved.append(text)
    return moved, ""


def _carried(spec: dict[str, Any], tf: str, python: str, index_url: str, pre: bool,
             notes: list[str]) -> dict[str, Any]:
    """The entry for release `tf` built from `spec`, the entry of its neighbour or of an older patch: its pins,
    devices, steps, templates and variants (with the variant pins moved to tf's minor); an image or package
    override that names the neighbour's own release stays with it when tf is another minor."""
    old, new = _release(spec["tf"]), _release(tf)
    entry: dict[str, Any] = {"tf": tf, "python": python}
    for key, value in spec.items():
        if key in ("tf", "python", "pre"):
            continue
        if key in ("package", "images") and old != new:
            value = {device: text for device, text in value.items() if spec["tf"] not in text}
            dropped = sorted(set(spec[key]) - set(value))
            if dropped:
                notes.append(f"{key} of {', '.join(dropped)}: the settings' template (the override named {spec['tf']})")
        elif key == "variants" and old != new:
            variants = {}
            for name, pins in value.items():
                moved, why = _moved_pins(pins, old, new, index_url, pre)
                if why:
                    notes.append(f"variant {name} left out: {why}")
                else:
                    variants[name] = moved
            value = variants
        if value:
            entry[key] = value
    return entry


def _wheel_ranges(releases: list[Release]) -> dict[str, str]:
    """TF minor -> the Pythons its final releases have a wheel for ("3.10-3.13"); a minor with only release
    candidates, theirs."""
    finals: dict[tuple[int, int], set[str]] = {}
    candidates: dict[tuple[int, int], set[str]] = {}
    for release in releases:
        target = candidates if Version(release.version).is_prerelease else finals
        target.setdefault(_release(release.version), set()).update(release.pythons)
    ranges = {}
    for minor in sorted(set(finals) | set(candidates)):
        pythons = sorted(finals.get(minor) or candidates[minor], key=minor_of)
        if pythons:
            low, high = pythons[0], pythons[-1]
            ranges[f"{minor[0]}.{minor[1]}"] = low if low == high else f"{low}-{high}"
    return ranges


def _mapping_value(root: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    return next(((k, v) for k, v in root.value if k.value == key), None)


def _line_start(text: str, index: int) -> int:
    return text.rfind("\n", 0, index) + 1


def _line_end(text: str, index: int) -> int:
    end = text.find("\n", index)
    return len(text) if end < 0 else end + 1


RELEASED_COMMENT = ("# When each listed TF version was uploaded to the package index, written by `bnmatrix sync`: a "
                    "cell installs\n# its dependencies as they were then, plus settings.release_grace_days (uv "
                    "--exclude-newer).\n")
WHEELS_COMMENT = ("# Python versions with a Linux x86_64 wheel of each TF minor release, from the package index: "
                  "written by\n# `bnmatrix sync` (a cell whose Python has no wheel for its release is refused).\n")


def _stable(spec: dict[str, Any]) -> bool:
    return not spec.get("pre") and not spec.get("nightly")


def _neighbour(specs: list[dict[str, Any]], minor: tuple[int, int]) -> dict[str, Any]:
    """The entry a release of `minor` is set up as: the newest stable entry of an older minor, else the oldest."""
    return max((s for s in specs if _stable(s) and _release(s["tf"]) < minor), key=lambda s: Version(s["tf"]),
               default=min(specs, key=lambda s: Version(s["tf"])))


def sync_matrix(path: Path, index_url: str | None = None, pre: bool = False, nightly: bool = False,
                registry: str = REGISTRY_URL) -> Sync:
    """Compare `path` with the index; the returned Sync holds the proposed text (unwritten). `pre` adds a release
    candidate, `nightly` a nightly entry, where the matrix has none; the GPU images of new and changed entries are
    looked up on `registry` (Docker Hub's API)."""
    text = read_user_text(path, "matrix file")
    matrix = Matrix.from_text(text, path)
    raw = yaml.safe_load(text)
    url = index_url or matrix.index_url
    if not re.fullmatch(r"https?://\S+", registry):
        raise BnMatrixError(f"--registry-url {registry}: expected an http(s):// URL of Docker Hub's API, such as "
                            f"{REGISTRY_URL}")
    template = raw.get("settings", {}).get("package", {}).get("cpu", "tensorflow=={tf}")
    package = Requirement(template.format(tf="0", python="3")).name
    sync = Sync(path=path, index_url=url, package=package, old=text,
                latest_variants=tuple(name for name, variant in matrix.variants.items() if variant.latest))
    releases, left_out = list_releases(url, package, pre=True)
    if not any(r.pythons for r in releases):
        raise BnMatrixError(f"{url}: lists no release of {package} with a Linux {platform.machine()} wheel; expected "
                            "the index the cells install from (settings.index_url or --index-url)")
    specs: list[dict[str, Any]] = raw["versions"]
    oldest = min(_release(s["tf"]) for s in specs)
    edits: dict[int, dict[str, Any] | None] = {}  # entry index -> its new spec (None: removed)
    added: list[dict[str, Any]] = []
    by_minor: dict[tuple[int, int], list[Release]] = {}
    for release in releases:
        by_minor.setdefault(_release(release.version), []).append(release)
    newest_final_minor = max(m for m, rs in by_minor.items() if any(not Version(r.version).is_prerelease for r in rs))
    for minor, found in sorted(by_minor.items()):
        if minor < oldest:
            continue
        stable = [i for i, s in enumerate(specs) if _release(s["tf"]) == minor and _stable(s)]
        pres = [i for i, s in enumerate(specs) if _release(s["tf"]) == minor and s.get("pre")]
        listed = max((Version(specs[i]["tf"]) for i in stable), default=None)
        usable = [(r, p) for r in reversed(found) if (p := _newest_python(r))]
        final = next(((r, p) for r, p in usable if not Version(r.version).is_prerelease), None)
        for release in reversed(found):
            newer = listed is None or Version(release.version) > listed
            if newer and not _newest_python(release) and not Version(release.version).is_prerelease:
                have = ", ".join(release.pythons) or "none"
                sync.left_out.append(f"{release.version}: wheels for Python {have}, none of "
                                     f"{PYTHONS[0]} to {PYTHONS[-1]} (the scenarios' Pythons)")
        for version, why in left_out.items():
            if _release(version) == minor and (listed is None or Version(version) > listed):
                sync.left_out.append(f"{version}: {why}")
        if final:
            release, python = final
            if listed is not None and Version(release.version) > listed:
                index = next(i for i in stable if Version(specs[i]["tf"]) == listed)
                notes: list[str] = []
                edits[index] = _carried(specs[index], release.version, python, url, pre, notes)
                sync.set_up[release.version] = specs[index]["tf"]
                sync.changes.append(f"~ {specs[index]['tf']} -> {release.version} on Python {python}: a newer patch"
                                    + "".join(f"; {n}" for n in notes))
            for number, index in enumerate(pres):
                if stable or number:
                    edits[index] = None
                    sync.changes.append(f"- {specs[index]['tf']}: the release candidate of {release.version}, "
                                        "which is listed")
                else:  # set up anew from the stable neighbour: a variant the candidate could not have may follow now
                    notes = []
                    neighbour = _neighbour(specs, minor)
                    edits[index] = _carried(neighbour, release.version, python, url, pre, notes)
                    sync.set_up[release.version] = neighbour["tf"]
                    sync.changes.append(f"~ {specs[index]['tf']} -> {release.version} on Python {python}: the final "
                                        f"release of a release candidate, set up as {neighbour['tf']}"
                                        + "".join(f"; {n}" for n in notes))
            if not stable and not pres:
                neighbour = _neighbour(specs, minor)
                notes = []
                added.append(_carried(neighbour, release.version, python, url, pre, notes))
                sync.set_up[release.version] = neighbour["tf"]
                sync.changes.append(f"+ {release.version} on Python {python}: a new minor release, set up as "
                                    f"{neighbour['tf']}" + "".join(f"; {n}" for n in notes))
            continue
        candidate = next(((r, p) for r, p in usable if Version(r.version).is_prerelease), None)
        if candidate is None:
            continue
        release, python = candidate
        if pres:
            current = max(pres, key=lambda i: Version(specs[i]["tf"]))
            if Version(release.version) > Version(specs[current]["tf"]):
                notes = []
                neighbour = _neighbour(specs, minor)
                edits[current] = {**_carried(neighbour, release.version, python, url, True, notes), "pre": True}
                sync.set_up[release.version] = neighbour["tf"]
                sync.changes.append(f"~ {specs[current]['tf']} -> {release.version} on Python {python}: a newer "
                                    "release candidate" + "".join(f"; {n}" for n in notes))
        elif minor > newest_final_minor and pre:
            neighbour = _neighbour(specs, minor)
            notes = []
            added.append({**_carried(neighbour, release.version, python, url, True, notes), "pre": True})
            sync.set_up[release.version] = neighbour["tf"]
            sync.changes.append(f"+ {release.version} on Python {python}: a release candidate (pre), set up as "
                                f"{neighbour['tf']}" + "".join(f"; {n}" for n in notes))
        elif minor > newest_final_minor:
            sync.left_out.append(f"{release.version}: a release candidate (--pre adds it as a `pre` entry)")
    _follow_nightlies(sync, specs, edits, added, nightly)
    _place_images(sync, raw.get("settings", {}), [s for s in [*edits.values(), *added] if s and not s.get("nightly")],
                  releases, registry)
    before: dict[str, str] = raw.get("wheels") or {}
    found_ranges = _wheel_ranges(releases)  # a minor the index no longer lists (a mirror of recent ones) keeps its
    wheels = dict(sorted({**before, **found_ranges}.items(), key=lambda item: _release(item[0] + ".0")))
    if before != wheels:
        moved = [f"{m} {r}" + (f" (was {before[m]})" if m in before else " (new)")
                 for m, r in wheels.items() if before.get(m) != r]
        count = f"{len(wheels)} minor release{'s' if len(wheels) != 1 else ''}"
        sync.changes.append("~ wheels: " + (f"the Python range of {count}, from the index" if not before
                                            else ", ".join(moved)))
    versions_now = [spec["tf"] for index, spec in enumerate(specs) if edits.get(index, spec) is spec] + [
        spec["tf"] for spec in [*edits.values(), *added] if spec]
    dates: dict[str, str] = {r.version: r.uploaded for r in releases if r.uploaded}
    was: dict[str, str] = raw.get("released") or {}
    released = {v: dates.get(v) or was[v] for v in sorted(versions_now, key=Version, reverse=True)
                if v in dates or v in was}
    if released != was:
        fresh = [v for v in released if was.get(v) != released[v]]
        dropped = [v for v in was if v not in released]
        parts = [f"the upload time of {len(fresh)} version{'s' if len(fresh) != 1 else ''} from the index "
                 f"({', '.join(fresh[:4])}{', ...' if len(fresh) > 4 else ''})"] if fresh else []
        parts += [f"{', '.join(dropped)} dropped (no longer listed)"] if dropped else []
        sync.changes.append("~ released: " + "; ".join(parts))
    edited = _edited(text, edits, added, wheels if before != wheels else None,
                     released if released != was else None)
    gone = {specs[index]["tf"] for index in edits}  # entries replaced or removed: their own expect rules go
    sync.new = _expected(edited, matrix, Matrix.from_text(edited, path), sync, gone)
    Matrix.from_text(sync.new, path)  # what --write would write loads like any matrix
    return sync


def _follow_nightlies(sync: Sync, specs: list[dict[str, Any]], edits: dict[int, dict[str, Any] | None],
                      added: list[dict[str, Any]], add: bool) -> None:
    """Each `nightly` entry moves to its package's newest development release (a nightly's exact version, as
    tf-nightly 2.23.0.dev20261026); with `add` and none in the matrix, a CPU nightly entry of NIGHTLY_PACKAGE is added,
    set up as the newest stable entry."""
    nightlies = [i for i, s in enumerate(specs) if s.get("nightly")]
    wanted = [(i, Requirement(specs[i]["package"]["cpu"].format(tf="0", python="3")).name)
              for i in nightlies if "cpu" in specs[i].get("package", {})]
    if add and not nightlies:
        wanted.append((-1, NIGHTLY_PACKAGE))
    for index, package in wanted:
        releases, _ = list_releases(sync.index_url, package, dev=True)
        newest = next(((r, p) for r in reversed(releases) if (p := _newest_python(r))
                       and Version(r.version).is_devrelease), None)
        if newest is None:
            sync.left_out.append(f"{package}: no development release with a wheel for Python {PYTHONS[0]} to "
                                 f"{PYTHONS[-1]} on the index")
            continue
        release, python = newest
        spec = specs[index] if index >= 0 else _neighbour(specs, _release(release.version))
        # a nightly installs today's dependencies anyway: a variant of today's (dependencies: latest) would repeat it
        spec = {**spec, "variants": {name: pins for name, pins in spec.get("variants", {}).items()
                                     if name not in sync.latest_variants}}
        if not spec["variants"]:
            spec.pop("variants")
        notes: list[str] = []
        if index < 0:
            entry = {**_carried(spec, release.version, python, sync.index_url, True, notes), "devices": ["cpu"],
                     "package": {"cpu": f"{package}=={{tf}}"}, "nightly": True}
            entry.pop("images", None)
            added.append(entry)
            sync.set_up[release.version] = spec["tf"]
            sync.changes.append(f"+ {release.version} on Python {python}: {package}'s newest nightly (CPU), set up "
                                f"as {spec['tf']}" + "".join(f"; {n}" for n in notes))
        elif Version(release.version) > Version(spec["tf"]):
            edits[index] = _carried(spec, release.version, python, sync.index_url, True, notes) | {"nightly": True}
            sync.set_up[release.version] = spec["tf"]
            sync.changes.append(f"~ {spec['tf']} -> {release.version} on Python {python}: {package}'s newest nightly"
                                + "".join(f"; {n}" for n in notes))


class RegistryUnreachable(BnMatrixError):
    """The registry did not answer a tag lookup (a network that does not reach it)."""


@functools.cache
def image_exists(image: str, registry: str) -> bool | None:
    """Whether Docker Hub has `image` (name:tag), from its API's tag endpoint; None for an image of another registry
    (not looked up). Raises RegistryUnreachable when it does not answer."""
    name, _, tag = image.rpartition(":")
    parts = name.split("/")
    if not name or len(parts) > 2 or "." in parts[0] and len(parts) == 2:
        return None
    namespace, repository = parts if len(parts) == 2 else ("library", parts[0])
    url = f"{registry.rstrip('/')}/v2/namespaces/{namespace}/repositories/{repository}/tags/{tag}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "bnmatrix"}),
                                    timeout=INDEX_TIMEOUT_S):
            return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise RegistryUnreachable(f"{registry}: looking up {image} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: a URL urllib cannot parse
        raise RegistryUnreachable(f"{registry}: cannot look up {image}: {getattr(exc, 'reason', exc)}") from None


def _place_images(sync: Sync, settings: dict[str, Any], specs: list[dict[str, Any]], releases: list[Release],
                  registry: str) -> None:
    """The GPU image of each new or changed entry, by the matrix's rule: the version's own tag (the template) where
    the registry has it, else the nearest older patch of its minor that has one, recorded as the entry's override.
    Where the registry does not answer, entries keep what they carried over, and the output says so."""
    template = {"gpu": "tensorflow/tensorflow:{tf}-gpu", **settings.get("images", {})}["gpu"]
    for spec in specs:
        if "gpu" not in spec.get("devices", settings.get("devices", ["cpu", "gpu"])):
            continue
        override = spec.get("images", {}).get("gpu")
        rule = override if override and "{" in override else template
        older = sorted((r.version for r in releases if _release(r.version) == _release(spec["tf"])
                        and Version(r.version) < Version(spec["tf"]) and not Version(r.version).is_prerelease),
                       key=Version, reverse=True)
        try:
            for version in [spec["tf"], *older]:
                image = rule.format(tf=version, python=spec["python"])
                found = image_exists(image, registry)
                if found is None:
                    sync.images.append(f"{spec['tf']}: GPU image {image} is on another registry: not looked up")
                    break
                if found:
                    images = {key: value for key, value in spec.pop("images", {}).items() if key != "gpu"}
                    if version != spec["tf"] or rule != template:  # an older patch's tag, or the entry's own rule
                        images["gpu"] = image if version != spec["tf"] else rule
                    if images:
                        spec["images"] = images
                    how = "its own tag" if version == spec["tf"] else \
                        f"no {rule.format(tf=spec['tf'], python=spec['python'])}: the nearest older patch's"
                    sync.images.append(f"{spec['tf']}: GPU image {image} ({how})")
                    break
            else:
                sync.images.append(f"{spec['tf']}: no GPU image of {rule} for {spec['tf']} or an older patch on "
                                   f"{registry}: its GPU cells cannot start")
        except RegistryUnreachable as exc:
            sync.images.append(f"GPU images not looked up ({exc}): each entry keeps the image it carried over")
            return


def _edited(text: str, edits: dict[int, dict[str, Any] | None], added: list[dict[str, Any]],
            wheels: dict[str, str] | None, released: dict[str, str] | None = None) -> str:
    """`text` with entries replaced, removed and inserted (newest first, as the list is) and `wheels:` and
    `released:` rewritten (unless None); everything else, comments included, as it was."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    assert isinstance(root, yaml.MappingNode)
    versions = _mapping_value(root, "versions")
    assert versions is not None and isinstance(versions[1], yaml.SequenceNode)
    items = versions[1].value
    splices: list[tuple[int, int, str]] = []  # (start, end, replacement) in the old text
    first = items[0].start_mark.index
    prefix = text[_line_start(text, first):first]
    for index, spec in edits.items():
        node = items[index]
        if spec is None:
            splices.append((_line_start(text, node.start_mark.index), _line_end(text, node.end_mark.index), ""))
        else:
            splices.append((node.start_mark.index, node.end_mark.index, entry_text(spec, prefix)[len(prefix):]))
    for spec in added:
        after = next((n for n in items if Version(_tf(n)) < Version(spec["tf"])), None)
        at = _line_start(text, after.start_mark.index) if after else _line_end(text, items[-1].end_mark.index)
        splices.append((at, at, entry_text(spec, prefix) + "\n"))
    if released is not None:  # before wheels: two blocks inserted at one place come out wheels first
        block = "released:\n" + "".join(f'  "{version}": "{moment}"\n' for version, moment in released.items())
        splices.append(_block_splice(text, root, "released", block, RELEASED_COMMENT))
    if wheels is not None:
        block = "wheels:\n" + "".join(f'  "{minor}": "{span}"\n' for minor, span in wheels.items())
        splices.append(_block_splice(text, root, "wheels", block, WHEELS_COMMENT))
    # From the end back, so that each splice's place still holds; two entries added at one place (oldest first in
    # `added`) keep the list newest first, as sorted() is stable.
    for start, end, replacement in sorted(splices, key=lambda s: (s[0], s[1]), reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _block_splice(text: str, root: yaml.MappingNode, key: str, block: str, comment: str) -> tuple[int, int, str]:
    """A top-level block (`wheels:`, `released:`) in place of the old one, or before `expect:` and its comment, or
    at the end."""
    current = _mapping_value(root, key)
    if current:
        start, value = current
        last = value.value[-1][1] if isinstance(value, yaml.MappingNode) and value.value else value
        return _line_start(text, start.start_mark.index), _line_end(text, last.end_mark.index), block
    expect = _mapping_value(root, "expect")
    if expect:
        at = _line_start(text, _comment_start(text, expect[0].start_mark.index))
        return at, at, comment + block + "\n"
    return len(text), len(text), ("" if text.endswith("\n") else "\n") + "\n" + comment + block


def _expected(text: str, old: Matrix, new: Matrix, sync: Sync, gone: set[str]) -> str:
    """`text` with `expect:` following the new and changed entries: each new release expects, cell by cell, what the
    release it was set up as expected (where the rules would say otherwise, explicit rules for it are appended:
    the last matching rule wins), until a run and an edit of the rules say otherwise; the rules that name a
    release no longer listed go."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    found = _mapping_value(root, "expect") if isinstance(root, yaml.MappingNode) else None
    if not found or not isinstance(found[1], yaml.SequenceNode) or not found[1].value:
        return text
    rules = found[1].value
    before = {cell.id: cell for cell in all_cells(old)}
    after = all_cells(new)
    lines = []
    for version, source in sync.set_up.items():
        wanted: dict[tuple[str, str], list[str]] = {}
        runs: dict[str, list[str]] = {}
        for cell in (c for c in after if c.tf == version):
            previous = before.get(f"tf-{source}-" + cell.id.removeprefix(f"tf-{version}-"))
            for name in cell.scenarios:
                runs.setdefault(name, []).append(cell.id)
                status = previous.expect.get(name) if previous else None
                if status and status != cell.expect.get(name):
                    wanted.setdefault((name, status), []).append(cell.id)
        if wanted:
            lines.append(f"  # {version} {SYNC_MARK} what {source} expects, until a run says otherwise")
            for (name, status), ids in wanted.items():
                patterns = [f"tf-{version}-*"] if ids == runs[name] else ids
                lines += [f'  - {{cells: "{p}", scenario: {name}, status: {status}}}' for p in patterns]
            sync.changes.append(f"~ expect: {version} expects what {source} does "
                                f"({len(wanted)} scenario{'s' if len(wanted) != 1 else ''} where the rules differ)")
    stale = [node for node in rules if isinstance(node, yaml.MappingNode) and any(
        str(v.value).startswith(f"tf-{tf}-") or str(v.value) == f"tf-{tf}*"
        for k, v in node.value if k.value == "cells" for tf in gone)]
    if stale:
        sync.changes.append(f"- expect: {len(stale)} rule{'s' if len(stale) != 1 else ''} of "
                            f"{', '.join(sorted(gone))}, no longer listed")
    splices = [(_line_start(text, n.start_mark.index), _line_end(text, n.end_mark.index), "") for n in stale]
    splices += [(m.start(), _line_end(text, m.start()), "") for tf in gone  # the comment sync wrote above them
                for m in re.finditer(rf"^  # {re.escape(tf)} {re.escape(SYNC_MARK)} ", text, re.M)]
    if lines:
        at = _line_end(text, rules[-1].end_mark.index)
        splices.append((at, at, "\n".join(lines) + "\n"))
    for start, end, replacement in sorted(splices, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _tf(node: yaml.Node) -> str:
    return str(next(v.value for k, v in node.value if k.value == "tf"))


def _comment_start(text: str, index: int) -> int:
    """The start of the comment lines right above the line at `index` (that comment belongs to it)."""
    start = _line_start(text, index)
    while start > 0:
        previous = _line_start(text, start - 1)
        if not text[previous:start].lstrip().startswith("#"):
            break
        start = previous
    return start
