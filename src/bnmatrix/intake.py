"""The one way in to a results root: every file a run, `import`, `merge` or `report` takes from disk or
from an archive is checked here before anything else reads it.

- JSON: a regular file (never a link), at most MAX_JSON_BYTES, nesting at most MAX_DEPTH deep, finite
  numbers only (NaN, Infinity and 1e400 are refused), and its schema (cell results, run manifests,
  bisect conclusions, scenario notes); a schema's `$` means the end of the text, as in ECMA-262 (a
  trailing newline does not pass an id or name pattern).
- Folders: a results root holds run folders named like a run id or a plain lower-case name (RUN_FOLDER)
  that are real folders; a run holds regular files (64 MiB at most) and folders only, nothing behind a link.
- Text a user names (a matrix, notes) is read by config.read_user_text: a regular file, bounded, UTF-8.
- Archives: unpacked by this module, not by tarfile's filters (which some Python releases get wrong):
  members checked one by one (names inside their run folder, regular files, folders, and hard links
  to a file of the same archive only), bounded in count, size and total, in bounded memory.
- Staging folders carry their owner's pid and start time, so that the next command removes those
  of a killed one.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import re
import secrets
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any

import jsonschema

from bnmatrix.config import PACKAGE_DIR, SCHEMA_FILES
from bnmatrix.errors import BnMatrixError

MAX_JSON_BYTES = 64 << 20  # a cell of 40 scenarios with 1 MiB result lines each fits
MAX_DEPTH = 64  # bnmatrix writes at most 10 levels; a scenario's `extra` may add some
MAX_TEXT_BYTES = 8 << 20  # a kept scenario script
FUTURE_SLACK = timedelta(hours=1)  # clocks of CI hosts disagree by seconds, not by an hour
# Archives (`bnmatrix import`): a results root of 50 runs of the default matrix has about 75,000 files
# and 300 MB; a log is at most 8 MiB plus a 64 KiB tail.
MAX_MEMBERS = 200_000
MAX_MEMBER_BYTES = 64 << 20
MAX_ARCHIVE_BYTES = 4 << 30
# ... and at most this many times its own size (results compress about 10:1; a decompression bomb 1000:1).
MAX_EXPANSION, MIN_ARCHIVE_ALLOWANCE = 200, 256 << 20
MAX_READ_BYTES = 16 << 20  # no header, long name or PAX record is read whole beyond this

RUN_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}")  # a run this host started (bnmatrix run, bisect)
# A run folder of a results root: a run id, a merged run added by CI (`<time>Z-ci<job>`), or a plain name
# (`run`, `baseline`, `latest-copy-0a1b2c`: lower case, starting with a letter), never `latest` itself.
RUN_FOLDER = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-z]{1,40}|(?!latest\Z)[a-z][a-z0-9-]{0,39}")
STAGING_PREFIX = ".bnmatrix-"  # + <what>-<pid>-<start ticks>-<random>: staging folders of a command


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-finite number {name}")


def parse_json(content: bytes, origin: str) -> Any:
    """JSON from bytes, refusing NaN, infinities, numbers that overflow and nesting deeper than MAX_DEPTH."""
    try:
        data = json.loads(content.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise BnMatrixError(f"{origin}: not UTF-8 ({exc.reason}); expected JSON") from None
    except json.JSONDecodeError as exc:
        raise BnMatrixError(f"{origin}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except ValueError as exc:
        raise BnMatrixError(f"{origin}: {exc}; expected finite numbers") from None
    except RecursionError:
        raise BnMatrixError(f"{origin}: nested deeper than Python can parse; expected at most {MAX_DEPTH} "
                            "levels") from None
    problem = shape_problem(data)
    if problem:
        raise BnMatrixError(f"{origin}: {problem}")
    return data


def shape_problem(data: Any) -> str | None:
    """Why `data` is no bounded, finite JSON value (without recursion), or None."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return f"{where or '(top level)'}: the number overflows ({value}); expected finite numbers"
        if isinstance(value, dict) and any(_not_text(key) for key in value):
            return f"{where or '(top level)'}: a key holds a lone surrogate (\\ud800...); expected text"
        if isinstance(value, str) and _not_text(value):
            return f"{where or '(top level)'}: a lone surrogate (\\ud800...); expected text"
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                return f"{where}: nested more than {MAX_DEPTH} levels deep; expected at most {MAX_DEPTH}"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((item, depth + 1, f"{where}.{key}" if where else str(key)) for key, item in items)
    return None


def _not_text(value: str) -> bool:
    """A JSON string with a lone surrogate (\\ud800): no UTF-8 page or file can hold it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def regular_file(path: Path, what: str = "file") -> os.stat_result:
    """lstat of `path` if it is a regular file (not a link, a device, a folder); else a BnMatrixError."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise BnMatrixError(f"{path}: missing; expected a {what}") from None
    except OSError as exc:
        raise BnMatrixError(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise BnMatrixError(f"{path}: is {_kind(info.st_mode)}; expected a {what} (a regular file)")
    return info


def _kind(mode: int) -> str:
    return ("a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a pipe" if stat.S_ISFIFO(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "no regular file")


def read_bytes(path: Path, limit: int, what: str = "file") -> bytes:
    """A regular file's bytes, refused beyond `limit` before reading them."""
    info = regular_file(path, what)
    if info.st_size > limit:
        raise BnMatrixError(f"{path}: {info.st_size} bytes; expected at most {limit} for a {what}")
    try:
        with open(path, "rb") as handle:
            return handle.read(limit + 1)[:limit]
    except OSError as exc:
        raise BnMatrixError(f"{path}: cannot read: {exc.strerror}") from None


def read_json(path: Path, kind: str | None = None) -> Any:
    """A JSON file, bounded and finite; with `kind` ("cell", "manifest", "bisect", "notes"), checked against
    that schema too."""
    data = parse_json(read_bytes(path, MAX_JSON_BYTES, "JSON file"), str(path))
    return check(data, kind, str(path)) if kind else data


def read_text(path: Path) -> str:
    """A text file kept in a run (a scenario's script), bounded; undecodable bytes replaced."""
    return read_bytes(path, MAX_TEXT_BYTES, "text file").decode("utf-8", "replace")


# --- schemas -----------------------------------------------------------------------------------------

SCHEMA_NAMES = {"cell": "bnmatrix.cell/2", "manifest": "bnmatrix.run/1", "bisect": "bnmatrix.bisect/1",
                "notes": "scenario notes", "observation": "bnmatrix.scenario/2"}


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    """`pattern` with ECMA-262's `$` (the end of the text), where Python's `$` also passes a trailing newline."""
    if isinstance(instance, str) and not re.search(_python_pattern(pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache
def _python_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern)


_Validator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with each (non-recursive) "$ref": "#/$defs/X" replaced by X: twice as fast to check."""
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, list):
            return [inline(item) for item in node]
        if not isinstance(node, dict):
            return node
        rest = {key: inline(value) for key, value in node.items() if key != "$ref"}
        if "$ref" in node:
            return {**inline(definitions[node["$ref"].removeprefix("#/$defs/")]), **rest}
        return rest

    return inline(schema)  # type: ignore[no-any-return]


@functools.cache
def validator(kind: str) -> Any:
    """The validator of one kind of file (see SCHEMA_FILES); "layer": one BN layer's observations."""
    if kind == "layer":
        schema = json.loads((PACKAGE_DIR / SCHEMA_FILES["observation"]).read_text(encoding="utf-8"))
        return _Validator({"$defs": schema["$defs"], "$ref": "#/$defs/layer"})
    schema = json.loads((PACKAGE_DIR / SCHEMA_FILES[kind]).read_text(encoding="utf-8"))
    return _Validator(_inline(schema))


def schema_problem(data: Any, kind: str) -> str | None:
    """Where and how `data` breaks the schema of `kind`, or None."""
    error = jsonschema.exceptions.best_match(validator(kind).iter_errors(data))
    if error is None:
        return None
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if len(error.message) > 300:  # the message quotes the value: say which rule it breaks instead
        return f"{where}: {error.message[:100]}... breaks {error.validator} {error.validator_value!r}"
    return f"{where}: {error.message}"


def check(data: Any, kind: str, origin: str) -> Any:
    """`data` if it is a valid file of `kind` (dates no later than this host's clock allows); else one
    BnMatrixError naming `origin`, the field, what was found and what was expected."""
    problem = schema_problem(data, kind)
    if problem is None and kind in ("cell", "manifest"):
        problem = _future(data.get("started"))
    if problem is None and kind == "bisect":
        problem = _versions_problem([(f"searches.{i}", v) for i, search in enumerate(data["searches"]) for v in (
            search["good"]["version"], search["bad"]["version"], *search["candidates"],
            *(search[key] for key in ("changed_in", "last_before") if key in search))]) or _span_problem(data)
    if problem is None and kind == "cell":
        problem = _versions_problem([("cell.tf", data["cell"]["tf"])])
    if problem is not None:
        raise BnMatrixError(f"{origin}: {problem}; expected a {SCHEMA_NAMES[kind]} file")
    return data


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 time with its zone (a time without one counts as UTC); None for anything else."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _future(started: Any) -> str | None:
    moment = parse_time(started) if isinstance(started, str) else None
    if moment is None:
        return f"started: {started!r} is no ISO 8601 time"
    if moment > datetime.now(timezone.utc) + FUTURE_SLACK:
        return (f"started: {started} is in the future (this host's clock says "
                f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)")
    return None


def _span_problem(data: dict[str, Any]) -> str | None:
    """A search's releases all lie in its own span: its ends, probes and changes are among its candidates."""
    for index, search in enumerate(data["searches"]):
        candidates = set(search["candidates"])
        named = [search["good"]["version"], search["bad"]["version"], *(p["version"] for p in search["probes"]),
                 *(c[key] for c in search["changes"] for key in ("before", "after")),
                 *(search[key] for key in ("changed_in", "last_before") if key in search)]
        stray = next((v for v in named if v not in candidates), None)
        if stray is not None:
            return (f"searches.{index}: {stray!r} is not among the search's candidates "
                    f"({', '.join(search['candidates'])})")
    return None


def _versions_problem(versions: list[tuple[str, str]]) -> str | None:
    """Release numbers are PEP 440 versions (they are sorted as such): (where, version) pairs."""
    from packaging.version import InvalidVersion, Version

    for where, version in versions:
        try:
            Version(version)
        except InvalidVersion:
            return f"{where}: {version!r} is no PEP 440 version"
    return None


# --- folders ----------------------------------------------------------------------------------------

def run_folders(root: Path) -> list[Path]:
    """The run folders of a results root: real folders (no links) named like a run id."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise BnMatrixError(f"{root}: cannot read the results root: {exc.strerror}") from None
    return sorted(Path(e.path) for e in entries if RUN_FOLDER.fullmatch(e.name) and e.is_dir(follow_symlinks=False))


def copy_tree(source: Path, target: Path, copy: Callable[[str, str], Any] = shutil.copyfile) -> None:
    """Copy a folder of a run (its logs, its scenarios) with `copy`: regular files and folders only; a link or a
    device in it is refused, never followed."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            copy_tree(path, target / entry.name, copy)
        else:
            regular_file(path, "file of a run")
            copy(str(path), str(target / entry.name))


def owner_tag() -> str:
    """<pid>-<start ticks> of this process: who a staging folder belongs to."""
    return f"{os.getpid()}-{start_ticks(os.getpid()) or 0}"


def start_ticks(pid: int) -> int | None:
    """When a process started (clock ticks since boot): tells a live pid from a reused one."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def staging_name(what: str) -> str:
    return f"{STAGING_PREFIX}{what}-{owner_tag()}-{secrets.token_hex(3)}"


_STAGING = re.compile(re.escape(STAGING_PREFIX) + r"[a-z-]+?-([0-9]+)-([0-9]+)-[0-9a-f]{6}(\.[a-z]+)?")


def sweep_staging(folder: Path) -> list[str]:
    """Remove the staging folders (and files) in `folder` whose owner process is gone, after putting back what a
    killed replace_folder had moved aside; their names."""
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _STAGING.fullmatch(entry.name)
            if match is None or _owner_alive(int(match[1]), int(match[2])):
                continue
            if entry.is_dir(follow_symlinks=False):
                if entry.name.startswith(f"{STAGING_PREFIX}aside-"):
                    for kept in Path(entry.path).iterdir():
                        if not os.path.lexists(folder / kept.name):
                            kept.rename(folder / kept.name)
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                Path(entry.path).unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _current_umask()  # read once: os.umask can only be read by setting it


@contextmanager
def staged_folder(out: Path, what: str, kept: str) -> Iterator[Path]:
    """A staging folder beside `out` to fill; when the block ends it takes `out`'s place (replace_folder), readable
    by all the umask allows (mkdtemp would make it 0700; a web server reads a site). A failure to write (a full
    disk) is one BnMatrixError saying what is `kept`; the staging folder goes in every case, and what a killed
    command left beside `out` goes at the start."""
    out = out.absolute()
    if out == Path.cwd() or Path.cwd().is_relative_to(out):
        raise BnMatrixError(f"--out {out}: is this folder or holds it; expected a folder of its own, e.g. --out public")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        sweep_staging(parent)
        staging = parent / staging_name(what)
        staging.mkdir()
    except OSError as exc:
        raise BnMatrixError(f"--out {out}: cannot write there: {exc.strerror}") from None
    try:
        yield staging
        for folder in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
            folder.chmod(0o777 & ~UMASK)
        replace_folder(staging, out)
    except OSError as exc:
        raise BnMatrixError(f"--out {out}: cannot write the {what}: {exc.strerror or exc} ({kept})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_folder(staging: Path, target: Path) -> None:
    """Put the folder `staging` in `target`'s place: the old one renamed aside (into a staging holder), the new one
    renamed in, the old one deleted. Killed at any point, `target` is whole, or its old self waits in the holder,
    which the next sweep_staging of the folder puts back."""
    if not os.path.lexists(target):
        staging.rename(target)
        return
    holder = target.parent / staging_name("aside")
    holder.mkdir()
    target.rename(holder / target.name)
    try:
        staging.rename(target)
    except OSError:
        (holder / target.name).rename(target)
        holder.rmdir()
        raise
    shutil.rmtree(holder, ignore_errors=True)


def _owner_alive(pid: int, ticks: int) -> bool:
    if pid == os.getpid():
        return True
    found = start_ticks(pid)
    return found is not None and (ticks == 0 or found == ticks)


# --- archives ---------------------------------------------------------------------------------------

class _Bounded:
    """The decompressed archive, as tarfile reads it: refuses a single read beyond MAX_READ_BYTES (a header
    that claims a 2 GB long name) and any position beyond `limit` (a decompression bomb)."""

    def __init__(self, stream: IO[bytes], origin: str, limit: int):
        self.stream = stream
        self.origin = origin
        self.limit = limit

    def _beyond(self) -> BnMatrixError:
        return BnMatrixError(f"{self.origin}: unpacks to more than {self.limit} bytes; expected at most "
                             f"{MAX_EXPANSION} times its size (and {MAX_ARCHIVE_BYTES} bytes in all)")

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > MAX_READ_BYTES:
            raise BnMatrixError(f"{self.origin}: a member header asks to read {size} bytes at once; expected "
                                f"at most {MAX_READ_BYTES}")
        if self.stream.tell() + size > self.limit + MAX_READ_BYTES:
            raise self._beyond()
        return self.stream.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self.stream.tell() + offset if whence == 1 else -1
        if whence == 2 or target > self.limit + MAX_READ_BYTES:
            raise self._beyond()
        return self.stream.seek(target)

    def tell(self) -> int:
        return self.stream.tell()


def _member_path(name: str, origin: str) -> PurePosixPath:
    """A member's name as a relative path that stays inside the staging folder."""
    path = PurePosixPath(name)
    parts = [p for p in path.parts if p != "."]
    if (not parts or path.is_absolute() or any(p == ".." for p in parts) or "\\" in name
            or any(ord(c) < 32 for c in name)):
        raise BnMatrixError(f"{origin}: member {name!r}: expected a relative path inside its run folder")
    return PurePosixPath(*parts)


def extract_archive(archive: Path, staging: Path, index_name: str, schema: str) -> tuple[dict[str, Any], list[str]]:
    """Unpack a gzip'd (or plain) tar whose first member is the JSON index `index_name` (of format `schema`) into
    `staging`, keeping only the run folders the index lists. Returns the index and the folders unpacked.

    Only regular files, folders, and hard links to a regular file unpacked before them are taken; every
    other member (a symbolic link, a device, a FIFO, a name leaving its folder, a second member of one
    name) refuses the archive. Counts, sizes and the total are bounded."""
    origin = str(archive)
    regular_file(archive, "results archive (.tar.gz)")
    try:
        raw = open(archive, "rb")  # noqa: SIM115 (closed below, after tarfile)
    except OSError as exc:
        raise BnMatrixError(f"{archive}: cannot read: {exc.strerror}") from None
    try:
        magic = raw.read(2)
        raw.seek(0)
        stream: Any = gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw
        limit = min(MAX_ARCHIVE_BYTES, max(MIN_ARCHIVE_ALLOWANCE, MAX_EXPANSION * os.fstat(raw.fileno()).st_size))
        with tarfile.open(fileobj=_Bounded(stream, origin, limit), mode="r:") as tar:  # type: ignore[call-overload]
            return _extract(tar, staging, index_name, schema, origin, limit)
    except BnMatrixError:
        raise
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BnMatrixError(f"{archive}: cannot unpack the archive ({first}); expected a whole gzip'd tar") from None
    except OSError as exc:
        raise BnMatrixError(f"{archive}: cannot unpack the archive: {exc.strerror or exc}") from None
    finally:
        raw.close()


def _extract(tar: tarfile.TarFile, staging: Path, index_name: str, schema: str, origin: str,
             limit: int) -> tuple[dict[str, Any], list[str]]:
    first = tar.next()
    if first is None or first.name != index_name or not first.isreg():
        found = "an empty archive" if first is None else f"{first.name!r} first"
        raise BnMatrixError(f"{origin}: found {found}; expected a {schema} archive, {index_name} first (written by "
                            "'bnmatrix report' as results-archive.tar.gz)")
    if first.size > MAX_JSON_BYTES:
        raise BnMatrixError(f"{origin}: {index_name} holds {first.size} bytes; expected at most {MAX_JSON_BYTES}")
    handle = tar.extractfile(first)
    assert handle is not None
    index = parse_json(handle.read(), f"{origin}: {index_name}")
    if not isinstance(index, dict) or index.get("schema") != schema:
        named = index.get("schema") if isinstance(index, dict) else index
        raise BnMatrixError(f"{origin}: {index_name}: found schema {named!r}, expected a {schema} archive (written "
                            "by 'bnmatrix report' as results-archive.tar.gz)")
    if not isinstance(index.get("runs"), list):
        raise BnMatrixError(f"{origin}: {index_name}: runs: found {index.get('runs')!r}, expected a list of runs")
    folders = set()
    for entry in index["runs"]:
        folder = entry.get("folder") if isinstance(entry, dict) else None
        if not (isinstance(folder, str) and RUN_FOLDER.fullmatch(folder)):
            raise BnMatrixError(f"{origin}: {index_name}: run folder {folder!r}: expected a run id such as "
                                "20261127T143212Z-e4bdcd")
        folders.add(folder)
    seen: dict[PurePosixPath, bool] = {}  # name -> is a regular file
    count, total = 1, first.size
    while (member := tar.next()) is not None:
        tar.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every header; we keep our own record
        count += 1
        total += member.size
        if count > MAX_MEMBERS:
            raise BnMatrixError(f"{origin}: more than {MAX_MEMBERS} members; expected at most that")
        if member.size > MAX_MEMBER_BYTES:
            raise BnMatrixError(f"{origin}: member {member.name!r} holds {member.size} bytes; expected at most "
                                f"{MAX_MEMBER_BYTES}")
        if total > limit:
            raise BnMatrixError(f"{origin}: unpacks to more than {limit} bytes; expected at most {MAX_EXPANSION} "
                                f"times its size (and {MAX_ARCHIVE_BYTES} bytes in all)")
        path = _member_path(member.name, origin)
        if path.parts[0] not in folders:
            continue  # not a run the index lists
        if path in seen:
            raise BnMatrixError(f"{origin}: member {member.name!r} appears twice; expected each name once")
        target = staging.joinpath(*path.parts)
        for parent in reversed(path.parents[:-1]):
            if seen.get(parent):
                raise BnMatrixError(f"{origin}: member {member.name!r} lies inside the file {str(parent)!r}")
            seen.setdefault(parent, False)
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            seen[path] = False
        elif member.isreg():
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with open(target, "xb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            seen[path] = True
        elif member.islnk():
            linked = _member_path(member.linkname, origin)
            if not seen.get(linked):
                raise BnMatrixError(f"{origin}: member {member.name!r} links to {member.linkname!r}, which is no "
                                    "file unpacked before it; expected hard links between files of the archive only")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(staging.joinpath(*linked.parts), target)
            seen[path] = True
        else:
            kind = "a symbolic link" if member.issym() else "a device" if member.isdev() else "no file or folder"
            raise BnMatrixError(f"{origin}: member {member.name!r} is {kind}; expected regular files and folders "
                                "only")
    return index, sorted(folders)
