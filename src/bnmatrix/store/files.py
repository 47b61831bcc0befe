"""The store's files: atomic JSON writes (every file another process or a later run reads), the error of a store that
cannot be written, this host's key with which a run vouches for the cell files it checked, and stored times."""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bnmatrix.config import PACKAGE_DIR, SCHEMA_FILES
from bnmatrix.errors import BnMatrixError
from bnmatrix.intake import UMASK, parse_time, read_bytes, read_json


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")  # two runs within a second keep their order


class StoreError(BnMatrixError):
    """A file of the results could not be written (a full disk, a folder without permission): the run stops."""


def write_json(path: Path, data: Any, durable: bool = True) -> str:
    """Write atomically (write_atomically); returns the file's SHA-256."""
    return write_atomically(path, (json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n").encode(),
                            durable)


def write_atomically(path: Path, content: bytes, durable: bool = True, mode: int = 0o666 & ~UMASK) -> str:
    """Write atomically: a reader sees the old file or the new one, never half of one; `durable`: on disk
    before the rename, so that even a power cut leaves one of the two. `mode`: by default what the umask lets
    everyone read (mkstemp makes 0600: results are for colleagues and web servers too). Returns the SHA-256."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        if temporary:
            Path(temporary).unlink(missing_ok=True)
        raise StoreError(f"{path}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        if temporary:
            Path(temporary).unlink(missing_ok=True)
        raise
    return hashlib.sha256(content).hexdigest()


@functools.cache
def _host_key() -> bytes | None:
    """This host's secret (~/.config/bnmatrix/host-key, this user's only), with which a run vouches for the cell
    files it wrote and checked (`checked` in its manifest); None where it cannot be kept: then every earlier cell
    file is checked and judged again, as one from another host is."""
    path = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "bnmatrix" / "host-key"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
        key = read_bytes(path, 64, "host key")
        return key if len(key) == 32 and path.stat().st_uid == os.getuid() else None
    except (OSError, BnMatrixError):
        return None


def vouch(record: dict[str, Any]) -> str | None:
    """The MAC of a `checked` record under this host's key: no other host, and nobody without the key, can make
    one that this host takes."""
    key = _host_key()
    if key is None:
        return None
    return hmac.new(key, json.dumps(record, sort_keys=True).encode(), hashlib.sha256).hexdigest()


@functools.cache
def schema_digest() -> str:
    """What a run's list of checked cell files is valid for: a changed schema trusts none of them."""
    return hashlib.sha256((PACKAGE_DIR / SCHEMA_FILES["cell"]).read_bytes()).hexdigest()


def moment(text: Any) -> datetime:
    """A stored time (ISO 8601, any zone) as a point in time, so that times in different zones order right; the
    earliest possible for one that is none."""
    parsed = parse_time(text) if isinstance(text, str) else None
    return parsed or datetime.min.replace(tzinfo=timezone.utc)


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path` (bounded, finite); {} when the file is missing, damaged or holds no object."""
    try:
        data = read_json(path)
    except BnMatrixError:
        return {}
    return data if isinstance(data, dict) else {}


def known_fields(record: type | Iterable[str], data: dict[str, Any], what: str,
                 legacy: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of `record` (a dataclass, or the names of a stored format's fields) in `data`; a key that is neither
    one of them nor `schema` (nor a `legacy` name) is refused, never dropped (the schemas refuse them first: this
    guards a record that outgrew its schema)."""
    names = {f.name for f in fields(record)} if isinstance(record, type) else set(record)
    unknown = sorted(set(data) - names - {"schema", *legacy})
    if unknown:
        raise BnMatrixError(f"{what}: unknown field {unknown[0]!r}; expected only {', '.join(sorted(names))}")
    return {k: v for k, v in data.items() if k in names}
