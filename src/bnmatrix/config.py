"""matrix.yaml -> a frozen `Matrix`, checked against matrix.schema.json with errors that name
the file, line, key, the value found and what was expected."""

from __future__ import annotations

import ast
import datetime
import difflib
import hashlib
import json
import re
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from bnmatrix.errors import BnMatrixError

PACKAGE_DIR = Path(__file__).resolve().parent
# What bnmatrix ships, each named once: beside the package (data_path: the wheel's _data/ or the checkout) ...
MATRIX_FILE = "matrix.yaml"
MATRIX_SCHEMA = "matrix.schema.json"
SCENARIOS_FOLDER = "scenarios"  # the built-in scenarios and the helper every scenario imports
REPORT_FOLDER = "report"  # the site's templates and assets
DOCKER_FOLDER = "docker"  # the cell image's install script; base/build.sh
# ... and in the package
SCHEMA_FILES = {"cell": "result.schema.json", "manifest": "manifest.schema.json", "bisect": "bisect.schema.json",
                "notes": "notes.schema.json", "observation": "scenario.schema.json"}
# Local image substitutions, next to matrix.yaml (docker/base/build.sh writes one).
IMAGE_MAP_FILE = "image-map.yaml"


def data_path(name: str) -> Path:
    """A file shipped beside the package (matrix.yaml, scenarios/, report/): in the wheel or the checkout."""
    packaged = PACKAGE_DIR / "_data" / name
    return packaged if packaged.exists() else PACKAGE_DIR.parents[1] / name


def base_image_script() -> str:
    """docker/base/build.sh as a path that exists here, in a checkout or in an installed wheel."""
    path = data_path(DOCKER_FOLDER) / "base" / "build.sh"
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def default_matrix_path() -> Path:
    local = Path(MATRIX_FILE)
    return local if local.exists() else data_path(MATRIX_FILE)


# What a value that reaches an install script, a command line or an environment may look like (whole match):
# no whitespace, so no newline can start another command.
IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*")
INDEX_URL = re.compile(r"(https?|file)://[^\s]+")
ENV_VALUE = re.compile(r"[^\s]*")
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000  # after alias expansion: a billion-laughs file stops here
HELPER_MODULE = "bnmatrix_scenario"
ZYGOTE_MODULE = "bnmatrix_zygote"  # beside the helper: imports TF once per cell and forks the scenarios
RELEASE_GRACE_DAYS = 7  # a cell's dependencies: as they were this long after its TF release (released:)
WARMUP_MODULE = "bnmatrix_warmup"  # beside the helper: a GPU cell's warm-up before its scenarios (no verdict)
DEFAULT_INDEX_URL = "https://pypi.org/simple"
# A scenario's folder comes first on the scenario's sys.path, so a script, helper or subfolder named like a module
# that Python, TensorFlow or their dependencies import (json.py, numpy/) would replace it for every scenario there.
SHADOWED_MODULES = frozenset(sys.stdlib_module_names) | {
    # standard modules of Pythons 3.6 to 3.11 that newer ones dropped
    "asynchat", "asyncore", "binhex", "distutils", "formatter", "imp", "macpath", "parser", "smtpd", "symbol",
    "dataclasses", "site", "sitecustomize", "usercustomize",
    # TensorFlow 1.x to 2.x, Keras and what they import
    "absl", "astor", "astunparse", "backports", "cachetools", "certifi", "chardet", "charset_normalizer", "clang",
    "dm_tree", "enum34", "flatbuffers", "futures", "gast", "google", "google_auth_oauthlib", "grpc", "h5py", "idna",
    "importlib_metadata", "jax", "jaxlib", "keras", "keras_applications", "keras_preprocessing", "libclang",
    "markdown", "markdown_it", "mdurl", "mock", "ml_dtypes", "namex", "numpy", "oauthlib", "opt_einsum", "optree",
    "packaging", "pbr", "pip", "pkg_resources", "protobuf", "pyasn1", "pyasn1_modules", "pygments", "requests",
    "requests_oauthlib", "rich", "rsa", "scipy", "setuptools", "six", "tensorboard", "tensorboard_data_server",
    "tensorboard_plugin_wit", "tensorflow", "tensorflow_core", "tensorflow_estimator", "tensorflow_io_gcs_filesystem",
    "termcolor", "tf_keras", "tree", "typing_extensions", "urllib3", "werkzeug", "wheel", "wrapt", "zipp",
}


def shadowing(name: str) -> str | None:
    """Why a top-level name in a scenario folder would break the scenarios there, or None."""
    if name == HELPER_MODULE:
        return "it is bnmatrix's scenario helper"
    if name in SHADOWED_MODULES:
        return f"it would hide the module {name!r} that Python, TensorFlow or its dependencies import"
    return None
SCENARIO_NAME = re.compile(r"[a-z][a-z0-9_]*")
# decides: fragments of the code lines that decide the outcome (the report marks the lines holding one)
NOTE_KEYS = {"pattern": str, "why": str, "fix": str, "fix_code": str, "links": list, "decides": list}


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """A scenario script found in a scenario folder, with the notes beside it (<name>.yaml)."""

    name: str
    script: Path
    root: Path  # the scenario folder it came from (its subfolders and helper modules travel with it)
    notes: dict[str, Any] = field(default_factory=dict)


def scenario_files(directory: Path) -> Iterator[Path]:
    """Every file a scenario folder ships to a cell: scripts, helper modules, notes, data (no caches)."""
    for path in directory.rglob("*"):
        parts = path.relative_to(directory).parts
        if path.is_file() and not path.is_symlink() and not any(p.startswith(".") or p == "__pycache__"
                                                                  for p in parts):
            yield path


def file_digests(directory: Path) -> dict[str, str]:
    """The SHA-256 of every file a scenario folder ships (scenario_files), by its path in the folder, in order."""
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(scenario_files(directory))}


def discover_scenarios(directory: Path, origin: str) -> dict[str, Scenario]:
    """The scenarios of one folder: each top-level `<name>.py` but helpers (a leading `_`, or the
    bnmatrix helper), checked to be a scenario of that name; `origin` says where the folder was named."""
    if not directory.is_dir():
        why = "is not a directory" if directory.exists() else "does not exist"
        raise BnMatrixError(f"{origin}: {why}; expected a folder of scenario scripts")
    found = {}
    for entry in sorted(directory.iterdir()):  # modules and regular packages shadow; data folders do not
        module = entry.stem if entry.suffix == ".py" else entry.name if (entry / "__init__.py").is_file() else None
        shadows = shadowing(module) if module and module != HELPER_MODULE else None
        if shadows:
            raise BnMatrixError(f"{entry}: {shadows}; expected another name (rename it)")
    for script in sorted(directory.glob("*.py")):
        name = script.stem
        if name.startswith("_") or name in (HELPER_MODULE, ZYGOTE_MODULE, WARMUP_MODULE):
            continue
        if not SCENARIO_NAME.fullmatch(name):
            raise BnMatrixError(f"{script}: scenario name {name!r} is not a plain identifier; expected lower case "
                                "letters, digits and underscores, starting with a letter (rename the file), or a "
                                "leading '_' for a helper module")
        _check_scenario_script(script, name)
        found[name] = Scenario(name=name, script=script.resolve(), root=directory.resolve(),
                               notes=load_scenario_notes(script.with_suffix(".yaml")))
    return found


def _check_scenario_script(script: Path, name: str) -> None:
    """A scenario calls the helper's main() with its own name under `if __name__ == "__main__":`."""
    try:
        tree = ast.parse(read_user_text(script, "scenario script", 8 << 20), str(script))
    except SyntaxError as exc:
        raise BnMatrixError(f"{script}:{exc.lineno}: not a scenario: Python syntax error: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BnMatrixError(f"{script}: cannot read the scenario: {exc}") from None
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "main"
                and node.args and isinstance(node.args[0], ast.Constant)):
            if node.args[0].value == name:
                return
            raise BnMatrixError(f"{script}:{node.lineno}: main({node.args[0].value!r}, ...) names another "
                                f"scenario; expected main({name!r}, train) in {script.name}")
    raise BnMatrixError(f"{script}: not a scenario: found no main({name!r}, train) call; expected a script "
                        f"that ends with `{HELPER_MODULE}.main({name!r}, train)` (see docs/scenarios.md), or a "
                        "helper module named with a leading '_' or kept in a subfolder")


def load_scenario_notes(path: Path) -> dict[str, Any]:
    """The notes beside a scenario (pattern, why, links, fix, fix_code), checked; none if absent."""
    if not path.exists():
        return {}
    raw, lines = _parse_yaml(read_user_text(path, "scenario notes file"), path)
    where = _Locator(path, lines)
    if not isinstance(raw, dict):
        raise where.error((), f"found {_describe(raw)}, expected a mapping with keys {', '.join(NOTE_KEYS)}")
    for key, value in raw.items():
        if key not in NOTE_KEYS:
            hint = difflib.get_close_matches(str(key), list(NOTE_KEYS), n=1)
            perhaps = f" Perhaps you meant '{hint[0]}'?" if hint else ""
            raise where.error((key,), f"unknown key '{key}'; expected one of {', '.join(NOTE_KEYS)}.{perhaps}")
        if not isinstance(value, NOTE_KEYS[key]):
            raise where.error((key,), f"found {_describe(value)}, expected a {NOTE_KEYS[key].__name__}")
    for index, fragment in enumerate(raw.get("decides", [])):
        if not (isinstance(fragment, str) and fragment.strip()):
            raise where.error(("decides", index), f"found {_describe(fragment)}, expected a fragment of a code line "
                              "(text)")
    for index, link in enumerate(raw.get("links", [])):
        if not (isinstance(link, dict) and isinstance(link.get("title"), str) and isinstance(link.get("url"), str)):
            raise where.error(("links", index), f"found {_describe(link)}, expected {{title: ..., url: https://...}}")
        if not re.fullmatch(r"https?://[^\s]+", link["url"]):
            raise where.error(("links", index, "url"), f"found {link['url']!r}, expected an http:// or https:// "
                              "address")
    return raw


def unknown_scenario(name: str, known: Sequence[str], origin: str) -> BnMatrixError:
    """The error for a scenario name the matrix does not know: the known ones, and where a script of that name
    lies in a folder below this one (`scenario new` writes one there), with the --scenarios that takes it."""
    found = None
    for path in sorted(Path.cwd().glob(f"*/{name}.py")) + sorted(Path.cwd().glob(f"*/*/{name}.py")):
        if not any(part.startswith(".") or part in ("venv", "site-packages", "node_modules")
                   for part in path.relative_to(Path.cwd()).parts[:-1]):
            found = path.relative_to(Path.cwd())
            break
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = (f"; perhaps you meant {close[0]!r}?" if close else f"; {found} is one: add --scenarios {found.parent}"
            if found else "; a scenario of your own needs --scenarios DIR, its folder")
    return BnMatrixError(f"--scenario {name}: unknown scenario; expected one of {', '.join(known)} ({origin}){hint}")


def merge_scenarios(catalog: dict[str, Scenario], more: dict[str, Scenario]) -> dict[str, Scenario]:
    """`catalog` with `more` added; one name in two folders is an error naming both files."""
    for name, scenario in more.items():
        if name in catalog and catalog[name].script != scenario.script:
            raise BnMatrixError(f"two scenarios named {name!r}: {catalog[name].script} and {scenario.script}; "
                                "expected each scenario name once (rename one)")
    return {**catalog, **more}


@dataclass(frozen=True, kw_only=True)
class Variant:
    name: str
    description: str
    env: dict[str, str] = field(default_factory=dict)
    scenarios: tuple[str, ...] = ()  # only these run in its cells; () means every scenario of the matrix
    latest: bool = False  # its cells resolve their dependencies as of today, not as of their TF release


@dataclass(frozen=True, kw_only=True)
class TFVersion:
    tf: str
    python: str
    pins: tuple[str, ...]
    devices: tuple[str, ...]
    steps: int
    packages: dict[str, str]
    images: dict[str, str]
    variants: dict[str, tuple[str, ...]]
    templates: dict[str, dict[str, str]] = field(default_factory=dict)  # "package"/"images" -> device -> template

    def at(self, tf: str, python: str) -> TFVersion:
        """This entry's settings (pins, steps, variants, templates) for another release: what bisect runs."""
        def fill(key: str) -> dict[str, str]:
            return {device: self.templates[key][device].format(tf=tf, python=python) for device in self.devices}
        return replace(self, tf=tf, python=python, packages=fill("package"), images=fill("images"))


@dataclass(frozen=True, kw_only=True)
class ContainerSettings:
    """How the container backend runs a cell: hardened by default (matrix.yaml settings.container)."""

    network: str = "none"
    read_only: bool = True
    user: str = "65534:65534"
    memory: str = "6g"
    pids: int = 1024
    tmpfs_size: str = "2g"
    no_new_privileges: bool = True
    drop_capabilities: bool = True
    cpus: float | None = None  # None: as many as the host has
    nofile: int = 4096  # open files (ulimit -n)
    nproc: int = 4096  # processes of the container's user (ulimit -u)


@dataclass(frozen=True, kw_only=True)
class Matrix:
    path: Path
    digest: str
    scenarios: tuple[str, ...]  # what every cell runs
    catalog: dict[str, Scenario]  # every scenario found, by name
    scenario_dirs: tuple[Path, ...]  # the built-in folder first, then scenario_paths and --scenarios
    timeout_s: float
    index_url: str
    container: ContainerSettings
    runners: dict[str, tuple[tuple[SpecifierSet | None, str | list[str]], ...]]  # device -> (releases, runs-on)
    image_map: dict[str, str]
    variants: dict[str, Variant]
    versions: tuple[TFVersion, ...]
    expect: tuple[tuple[str, str, str], ...] = ()  # (cell glob, scenario, status), last match wins
    keep_runs: int = 50  # runs a results root keeps (settings.keep_runs); see results.prune
    released: dict[str, str] = field(default_factory=dict)  # TF version -> its upload time (matrix.yaml released:)
    release_grace_days: int = RELEASE_GRACE_DAYS

    def exclude_newer(self, tf: str) -> str | None:
        """The time a cell of `tf` resolves its dependencies as of (uv --exclude-newer): its release's upload plus
        the grace, so that what was released with it counts; None where the matrix has no date for it."""
        uploaded = self.released.get(tf)
        return None if uploaded is None else self.after_grace(uploaded)

    def after_grace(self, uploaded: str) -> str:
        """An upload time ("2024-06-28T18:50:50Z") plus settings.release_grace_days, in the same form."""
        moment = datetime.datetime.strptime(uploaded, "%Y-%m-%dT%H:%M:%SZ") + datetime.timedelta(
            days=self.release_grace_days)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def runs_on(self, device: str, tf: str) -> str | list[str]:
        """The GitHub Actions runner of a cell (settings.runners: its device's, or the first rule for its release)."""
        for releases, labels in self.runners[device]:
            if releases is None or releases.contains(Version(tf), prereleases=True):
                return labels
        raise BnMatrixError(f"{self.path}: settings.runners.{device} has no rule for TF {tf}; expected a last rule "
                            "without tf:, which takes every release")

    @classmethod
    def from_file(cls, path: Path) -> Matrix:
        """Load and check `path`; raises BnMatrixError naming file, line, key and value."""
        return cls.from_text(read_user_text(path, "matrix file"), path)

    @classmethod
    def from_text(cls, text: str, path: Path) -> Matrix:
        raw, lines = _parse_yaml(text, path)
        where = _Locator(path, lines)
        if raw is None:
            raise BnMatrixError(f"{path}: the matrix file is empty; expected a mapping with 'versions'")
        _check_schema(raw, where)
        settings = raw.get("settings", {})
        scenario_dirs = [data_path(SCENARIOS_FOLDER).resolve()]
        catalog = discover_scenarios(scenario_dirs[0], f"the built-in scenarios ({scenario_dirs[0]})")
        for index, entry in enumerate(raw.get("scenario_paths", [])):
            directory = (path.parent / entry).resolve()
            if not directory.is_dir():
                raise where.error(("scenario_paths", index), f"found {entry!r} ({directory}), expected a folder "
                                  "of scenario scripts (relative to the matrix file)")
            if directory not in scenario_dirs:
                scenario_dirs.append(directory)
                found = discover_scenarios(directory, f"{where(('scenario_paths', index))}: {directory}")
                catalog = merge_scenarios(catalog, found)
        variants = {
            name: Variant(name=name, description=spec["description"], env=dict(spec.get("env", {})),
                          scenarios=tuple(spec.get("scenarios", ())), latest=spec.get("dependencies") == "latest")
            for name, spec in raw.get("variants", {}).items()
        }
        for name, variant in variants.items():
            for index, scenario in enumerate(variant.scenarios):
                if scenario not in raw["scenarios"]:
                    raise where.error(("variants", name, "scenarios", index), f"found '{scenario}', expected one of "
                                      f"the matrix's scenarios ({', '.join(raw['scenarios'])})")
        _check_scenarios(raw["scenarios"], catalog, where)
        index_url = settings.get("index_url", DEFAULT_INDEX_URL)
        if not INDEX_URL.fullmatch(index_url):
            raise where.error(("settings", "index_url"), f"found {index_url!r}, expected an http(s):// or file:// URL "
                              "without whitespace")
        for name, spec in raw.get("variants", {}).items():
            for key, value in spec.get("env", {}).items():
                if not ENV_VALUE.fullmatch(value) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                    raise where.error(("variants", name, "env", key), f"found {key}={value!r}, expected a variable "
                                      "name and a value without whitespace")
        for index, rule in enumerate(raw.get("expect", [])):
            if rule["scenario"] not in catalog:
                raise where.error(("expect", index, "scenario"), f"unknown scenario '{rule['scenario']}'; expected "
                                  f"one of {', '.join(raw['scenarios'])}")
        first_index: dict[str, int] = {}
        for index, spec in enumerate(raw["versions"]):
            if spec["tf"] in first_index:
                raise where.error(("versions", index, "tf"), f"duplicate version '{spec['tf']}' (also "
                                  f"versions[{first_index[spec['tf']]}]); expected each TF version once")
            first_index[spec["tf"]] = index
        wheels = _wheel_pythons(raw.get("wheels", {}))
        versions = tuple(_version(i, spec, settings, variants, wheels, where) for i, spec in enumerate(raw["versions"]))
        return cls(
            path=path,
            digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            scenarios=tuple(raw["scenarios"]),
            catalog=catalog,
            scenario_dirs=tuple(scenario_dirs),
            timeout_s=float(settings.get("scenario_timeout_s", 900)),
            index_url=index_url,
            container=ContainerSettings(**settings.get("container", {})),
            runners=_runners(settings.get("runners", {}), where),
            image_map=load_image_map(path.parent / IMAGE_MAP_FILE),
            variants=variants,
            versions=versions,
            expect=tuple((r["cells"], r["scenario"], r["status"]) for r in raw.get("expect", [])),
            keep_runs=int(settings.get("keep_runs", 50)),
            released=dict(raw.get("released", {})),
            release_grace_days=int(settings.get("release_grace_days", RELEASE_GRACE_DAYS)),
        )


    def with_scenario_dirs(self, directories: Sequence[Path]) -> Matrix:
        """This matrix with the scenarios of more folders (--scenarios DIR), each added to what cells run."""
        catalog, dirs, names = self.catalog, list(self.scenario_dirs), list(self.scenarios)
        for directory in directories:
            resolved = directory.resolve()
            found = discover_scenarios(resolved, f"--scenarios {directory}")
            if resolved not in dirs:
                dirs.append(resolved)
                catalog = merge_scenarios(catalog, found)
            names += [name for name in found if name not in names]
        return replace(self, catalog=catalog, scenario_dirs=tuple(dirs), scenarios=tuple(names))


class _Locator:
    """Turns a path into the data (('versions', 3, 'python')) into 'file:line: versions[3].python'."""

    def __init__(self, path: Path, lines: dict[tuple[Any, ...], int]):
        self.path = path
        self.lines = lines

    def __call__(self, keys: tuple[Any, ...]) -> str:
        probe = tuple(keys)
        while probe not in self.lines and probe:
            probe = probe[:-1]
        line = self.lines.get(probe)
        dotted = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")
        prefix = f"{self.path}:{line}" if line else f"{self.path}"
        return f"{prefix}: {dotted}" if dotted else prefix

    def error(self, keys: tuple[Any, ...], message: str) -> BnMatrixError:
        return BnMatrixError(f"{self(keys)}: {message}")


def read_user_text(path: Path, what: str, limit: int = MAX_YAML_BYTES) -> str:
    """A file a user names or keeps beside the matrix, as text: a regular file (a link to one is fine; a FIFO, a
    device or a folder is not read), refused beyond `limit` before reading, UTF-8."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise BnMatrixError(f"{path}: is no regular file; expected a {what}")
        if info.st_size > limit:
            raise BnMatrixError(f"{path}: the file is {info.st_size} bytes; expected at most {limit} for a {what}")
        with open(path, "rb") as handle:
            return handle.read(limit + 1)[:limit].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BnMatrixError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}); expected a {what} in UTF-8") \
            from None
    except OSError as exc:
        raise BnMatrixError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def _parse_yaml(text: str, path: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """The data and the 1-based line of every key and item, parsed once; duplicate keys, a file over
    1 MiB and aliases that expand past MAX_YAML_VALUES values are errors."""
    size = len(text.encode("utf-8"))
    if size > MAX_YAML_BYTES:
        raise BnMatrixError(f"{path}: the file is {size} bytes; expected at most {MAX_YAML_BYTES} (1 MiB)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)  # libyaml where PyYAML has it: 4x faster
    try:
        root = loader.get_single_node()
        if root is not None:
            _check_expansion(root, path)
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise BnMatrixError(f"{path}{line}: YAML syntax error: {problem}") from None
    finally:
        loader.dispose()
    lines: dict[tuple[Any, ...], int] = {}

    def walk(node: yaml.Node, keys: tuple[Any, ...]) -> None:
        lines[keys] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    raise BnMatrixError(
                        f"{path}:{key_node.start_mark.line + 1}: duplicate key '{key}' "
                        f"(first at line {seen[key]}); expected each key once")
                seen[key] = key_node.start_mark.line + 1
                walk(value_node, keys + (key,))
                lines[keys + (key,)] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, keys + (index,))

    if root is not None:
        walk(root, ())
    return data, lines


def _check_expansion(root: yaml.Node, path: Path) -> None:
    """Count the values the document holds once aliases are expanded, without expanding them."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 1  # a recursive alias counts once
            children: list[yaml.Node] = []
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            sizes[id(node)] = min(MAX_YAML_VALUES + 1, 1 + sum(size(child) for child in children))
        return sizes[id(node)]

    if size(root) > MAX_YAML_VALUES:
        raise BnMatrixError(f"{path}: its aliases (*name) expand to more than {MAX_YAML_VALUES} values; expected a "
                            "matrix without nested alias expansion")


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(data_path(MATRIX_SCHEMA).read_text(encoding="utf-8"))
    return schema


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"{value!r} (a boolean)"
    if isinstance(value, (int, float)):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        return repr(value)
    return f"a {type(value).__name__}"


def _check_schema(raw: Any, where: _Locator) -> None:
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return
    error = errors[0]
    keys = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = [str(k) for k in error.instance if k not in allowed]
        if unknown and allowed:
            suggestion = difflib.get_close_matches(unknown[0], allowed, n=1)
            perhaps = f" Perhaps you meant '{suggestion[0]}'?" if suggestion else ""
            raise where.error(keys + (unknown[0],), f"unknown key '{unknown[0]}'; expected one of "
                              f"{', '.join(allowed)}.{perhaps}")
    if error.validator == "required":
        raise where.error(keys, f"{error.message}; found keys: {', '.join(map(str, error.instance)) or 'none'}")
    if error.validator == "type":
        expected = error.schema["type"]
        hint = ""
        if expected == "string" and isinstance(error.instance, (int, float)) and not isinstance(error.instance, bool):
            hint = f" (quote it: \"{error.instance}\"; YAML reads 3.10 as the number 3.1)"
        article = "an" if str(expected)[0] in "aeiou" else "a"
        raise where.error(keys, f"found {_describe(error.instance)}, expected {article} {expected}{hint}")
    if error.validator == "pattern":
        described = error.schema.get("description", f"a value matching {error.schema['pattern']}")
        raise where.error(keys, f"found {_describe(error.instance)}, expected {described[0].lower()}{described[1:]}")
    if error.validator == "minItems" and not error.instance:
        raise where.error(keys, "is empty; expected at least one entry")
    raise where.error(keys, f"found {_describe(error.instance)}: {error.message}")


def load_image_map(path: Path) -> dict[str, str]:
    """Image substitutions from `path` (FROM: TO per line), or none where the file is absent."""
    if not path.exists():
        return {}
    raw, lines = _parse_yaml(read_user_text(path, "image map"), path)
    if raw is None:
        return {}
    where = _Locator(path, lines)
    if not isinstance(raw, dict):
        raise where.error((), f"found {_describe(raw)}, expected a mapping 'image: replacement image'")
    for key, value in raw.items():
        for found in (key, value):
            if not (isinstance(found, str) and IMAGE_NAME.fullmatch(found)):
                raise where.error((key,), f"found {_describe(found)}, expected an image name such as "
                                  "bnmatrix-local/python:3.7 (letters, digits and ._/:@-, no whitespace)")
    return dict(raw)


def parse_image_map(entries: Sequence[str]) -> dict[str, str]:
    """--image-map FROM=TO options as a mapping."""
    mapping = {}
    for entry in entries:
        source, sep, target = entry.partition("=")
        if not sep or not IMAGE_NAME.fullmatch(source) or not IMAGE_NAME.fullmatch(target):
            raise BnMatrixError(f"--image-map {entry!r}: expected FROM=TO, e.g. "
                                "python:3.7-slim=bnmatrix-local/python:3.7")
        mapping[source] = target
    return mapping


def _check_scenarios(names: list[str], catalog: dict[str, Scenario], where: _Locator) -> None:
    for index, name in enumerate(names):
        if name not in catalog:
            hint = difflib.get_close_matches(name, list(catalog), n=1)
            perhaps = f" Perhaps you meant '{hint[0]}'?" if hint else ""
            raise where.error(("scenarios", index), f"unknown scenario '{name}'; expected one of "
                              f"{', '.join(sorted(catalog))} (scripts in the built-in folder and scenario_paths)."
                              f"{perhaps}")


def _wheel_pythons(wheels: dict[str, str]) -> dict[str, tuple[int, int]]:
    """TF minor -> (lowest, highest) Python minor with a wheel, from the matrix's `wheels:` ("3.10-3.13")."""
    result = {}
    for minor, span in wheels.items():
        low, _, high = span.partition("-")
        result[minor] = (int(low.split(".")[1]), int((high or low).split(".")[1]))
    return result


def _runners(given: dict[str, Any], where: _Locator) -> dict[str, tuple[tuple[SpecifierSet | None, Any], ...]]:
    """settings.runners as rules per device: a plain runs-on takes every release."""
    found: dict[str, tuple[tuple[SpecifierSet | None, Any], ...]] = {}
    for device, value in {"cpu": "ubuntu-latest", "gpu": ["self-hosted", "gpu"], **given}.items():
        if not (isinstance(value, list) and value and isinstance(value[0], dict)):
            found[device] = ((None, value),)
            continue
        rules = []
        for index, rule in enumerate(value):
            try:
                rules.append((SpecifierSet(rule["tf"]) if "tf" in rule else None, rule["runs-on"]))
            except InvalidSpecifier:
                raise where.error(("settings", "runners", device, index, "tf"), f"found {rule['tf']!r}, expected a "
                                  "PEP 440 version specifier such as '<2.4' or '>=2.12,<2.16'") from None
        found[device] = tuple(rules)
    return found


def _check_requirements(requirements: list[str], keys: tuple[Any, ...], where: _Locator) -> tuple[str, ...]:
    for index, text in enumerate(requirements):
        try:
            Requirement(text)
        except InvalidRequirement as exc:
            raise where.error(keys + (index,), f"found {text!r}, expected a PEP 508 requirement "
                              f"such as 'numpy<2' ({exc})") from None
    return tuple(requirements)


def _version(index: int, spec: dict[str, Any], settings: dict[str, Any], variants: dict[str, Variant],
             wheels: dict[str, tuple[int, int]], where: _Locator) -> TFVersion:
    keys: tuple[Any, ...] = ("versions", index)
    tf, python = spec["tf"], spec["python"]
    minor = ".".join(tf.split(".")[:2])
    span = wheels.get(minor)
    python_minor = int(python.split(".")[1])
    if span and not span[0] <= python_minor <= span[1]:
        raise where.error(keys + ("python",), f"found '{python}', but TF {tf} has Linux wheels only for "
                          f"Python 3.{span[0]} to 3.{span[1]} (wheels: \"{minor}\", from the index by bnmatrix sync); "
                          "expected one of those")
    for name in spec.get("variants", {}):
        if name not in variants:
            hint = difflib.get_close_matches(name, list(variants), n=1)
            perhaps = f" Perhaps you meant '{hint[0]}'?" if hint else ""
            raise where.error(keys + ("variants", name), f"unknown variant '{name}'; expected one of "
                              f"{', '.join(variants) or '(none defined under variants:)'}.{perhaps}")
    default_packages = {"cpu": "tensorflow=={tf}", "gpu": "tensorflow=={tf}", **settings.get("package", {})}
    default_images = {"cpu": "python:{python}-slim", "gpu": "tensorflow/tensorflow:{tf}-gpu",
                      **settings.get("images", {})}
    devices = tuple(spec.get("devices", settings.get("devices", ["cpu", "gpu"])))

    templates: dict[str, dict[str, str]] = {}

    def fill(key: str, defaults: dict[str, str]) -> dict[str, str]:
        templates[key] = {**defaults, **spec.get(key, {})}
        filled = {}
        for device in devices:
            try:
                filled[device] = templates[key][device].format(tf=tf, python=python)
            except (KeyError, IndexError, ValueError) as exc:
                origin = keys + (key, device) if device in spec.get(key, {}) else ("settings", key, device)
                raise where.error(origin, f"found {templates[key][device]!r}, expected a template "
                                  f"using only {{tf}} and {{python}} ({type(exc).__name__}: {exc})") from None
        return filled

    packages = fill("package", default_packages)
    images = fill("images", default_images)
    for device, image in images.items():
        if not IMAGE_NAME.fullmatch(image):
            origin = keys + ("images", device) if device in spec.get("images", {}) else ("settings", "images", device)
            raise where.error(origin, f"found {image!r}, expected an image name such as python:3.11-slim (letters, "
                              "digits and ._/:@-, no whitespace)")
    _check_requirements(list(packages.values()), keys + ("package",), where)
    return TFVersion(
        tf=tf,
        python=python,
        pins=_check_requirements(spec.get("pins", []), keys + ("pins",), where),
        devices=devices,
        steps=int(spec.get("steps", settings.get("steps", 100))),
        packages=packages,
        images=images,
        variants={name: _check_requirements(pins, keys + ("variants", name), where)
                  for name, pins in spec.get("variants", {}).items()},
        templates=templates,
    )


SKELETON = '''"""{name}: describe the pattern in one line (what builds the BN layer, what trains it).

A bnmatrix scenario: it observes, bnmatrix judges. See docs/scenarios.md for the contract.
Keep to Python 3.6 syntax and to the standard library, NumPy and TensorFlow.
"""
import bnmatrix_scenario as bns


def train(tf, cfg, scratch):
    """Build the pattern, train cfg.steps steps on the constant batch, return what you observed."""
    import numpy as np
    keras = tf.keras
    bn = keras.layers.BatchNormalization()  # momentum 0.99, as bns.MOMENTUM says
    inputs = keras.Input(shape=(1,))
    model = keras.Model(inputs=inputs, outputs=keras.layers.Dense(1)(bn(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(bns.LEARNING_RATE), loss="mse")
    x = np.array(bns.FEATURES, dtype=np.float32)
    y = np.array(bns.LABELS, dtype=np.float32)
    history = model.fit(x, y, batch_size=len(x), epochs=cfg.steps, shuffle=False, verbose=0)
    return bns.observations(
        # The layer's statistics after training, and the batch it normalised: bnmatrix judges these.
        {{"bn": bns.layer(bns.read_variable(tf, bn.moving_mean), bns.read_variable(tf, bn.moving_variance),
                         bns.feature_values())}},
        train_loss=float(history.history["loss"][-1]),
        extra={{"note": "any other numbers you want on the cell page"}})


if __name__ == "__main__":
    bns.main("{name}", train)
'''

SKELETON_NOTES = '''# Notes shown on the scenario's page of the report (all optional).
pattern: >-
  What the code does, in a sentence or two.
why: >-
  Why the statistics update (or not) with this pattern, with the upstream issues below.
links:
  - {{title: "tensorflow/tensorflow#16102", url: "https://github.com/tensorflow/tensorflow/issues/16102"}}
fix: >-
  What to change where the statistics do not update.
'''


def new_scenario(name: str, directory: Path) -> Path:
    """Write a working scenario skeleton `<directory>/<name>.py` and its notes; returns the script."""
    if not SCENARIO_NAME.fullmatch(name):
        raise BnMatrixError(f"scenario new {name!r}: expected a plain identifier (lower case letters, digits and "
                            f"underscores, starting with a letter), e.g. my_keras_fit")
    why = shadowing(name)
    if why:
        raise BnMatrixError(f"scenario new {name!r}: {why}; expected another name, e.g. my_{name} (nothing was "
                            "written)")
    builtin = data_path(SCENARIOS_FOLDER) / f"{name}.py"
    if builtin.exists():
        raise BnMatrixError(f"scenario new {name!r}: a built-in scenario has that name ({builtin}); expected a "
                            "new name (nothing was written)")
    script, notes = directory / f"{name}.py", directory / f"{name}.yaml"
    for path in (script, notes):
        if path.exists():
            raise BnMatrixError(f"{path}: exists already; expected a new scenario name (nothing was written)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        script.write_text(SKELETON.format(name=name), encoding="utf-8")
        notes.write_text(SKELETON_NOTES.format(), encoding="utf-8")
    except OSError as exc:
        raise BnMatrixError(f"--dir {directory}: cannot write the scenario: {exc.strerror}") from None
    return script
