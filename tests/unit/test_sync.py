"""bnmatrix sync against local package indexes: what it proposes, what it leaves out and why, what --write and
--check do to the matrix file, and the one clear error of an index it cannot read. The real command runs; the index
is a folder of wheel files (their names are what sync reads) or a local HTTP server."""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bnmatrix.cli import main
from bnmatrix.config import Matrix, data_path
from bnmatrix.index import entry_text, index_files
from bnmatrix.plan import plan

MATRIX = data_path("matrix.yaml")
NO_REGISTRY = "http://127.0.0.1:9"  # nothing listens there
CP = ("cp310", "cp311", "cp312", "cp313")


def wheel_names(version: str, pythons: tuple[str, ...] = CP) -> list[str]:
    return [f"tensorflow-{version}-{tag}-{tag}-manylinux_2_17_x86_64.manylinux2014_x86_64.whl" for tag in pythons]


def write_index(root: Path, packages: dict[str, list[str]], yanked: tuple[str, ...] = ()) -> str:
    """A PEP 503 index of empty files with these names (data-yanked on the versions in `yanked`)."""
    index_files.cache_clear()
    for package, names in packages.items():
        folder = root / package
        folder.mkdir(parents=True, exist_ok=True)
        links = []
        for name in names:
            (folder / name).write_bytes(b"")
            flag = " data-yanked" if any(f"-{v}-" in name for v in yanked) else ""
            links.append(f'<a href="{name}#sha256=00"{flag}>{name}</a>')
        (folder / "index.html").write_text("<html><body>" + "\n".join(links) + "</body></html>")
    return root.as_uri()


@pytest.fixture
def matrix(tmp_path: Path) -> Path:
    """A copy of the shipped matrix.yaml."""
    path = tmp_path / "matrix.yaml"
    path.write_text(MATRIX.read_text())
    return path


def sync(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`bnmatrix sync ARGS`: exit code and output; GPU images are looked up where the test says (by default nowhere,
    so that no test depends on what Docker Hub holds today)."""
    code = main(["sync", *args, *(() if "--registry-url" in args else ("--registry-url", NO_REGISTRY))])
    out, err = capsys.readouterr()
    return code, out + err


def entry_of(path: Path, tf: str) -> dict[str, object]:
    return next(e for e in yaml.safe_load(path.read_text())["versions"] if e["tf"] == tf)


def test_sync_proposes_a_new_minor_on_the_newest_python_the_scenarios_run_on_and_not_its_candidate(
        tmp_path: Path, matrix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = write_index(tmp_path / "index", {
        "tensorflow": wheel_names("2.21.0") + wheel_names("2.22.0rc1") + wheel_names("2.22.1", (*CP, "cp314")),
        "tf-keras": ["tf_keras-2.22.0-py3-none-any.whl"]})
    before = matrix.read_bytes()
    code, out = sync(capsys, "--matrix", str(matrix), "--index-url", url)
    assert code == 0
    assert "+ 2.22.1 on Python 3.13: a new minor release, set up as 2.21.0" in out
    assert "2.22.0rc1" not in out  # the final release is out: its candidate is no entry and no news
    # 2.22.1 has a 3.14 wheel too, but the scenarios run on 3.6 to 3.13
    assert ('+  - {tf: 2.22.1, python: "3.13", variants: {tfkeras: ["tf_keras~=2.22.0"], jax: ["jax"], latest: []}}'
            in out)
    assert matrix.read_bytes() == before  # without --write nothing is written


def test_check_fails_until_write_brings_the_matrix_up_to_date_keeping_its_comments_and_layout(
        tmp_path: Path, matrix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = write_index(tmp_path / "index", {
        "tensorflow": wheel_names("2.21.0") + wheel_names("2.22.0rc1") + wheel_names("2.22.1")
        + wheel_names("2.19.1", ("cp312",)) + wheel_names("2.19.2", ("cp39", "cp312"))
        + wheel_names("2.18.1", ("cp312",)) + wheel_names("2.18.2", ("cp312",)),
        "tf-keras": ["tf_keras-2.22.0-py3-none-any.whl"]})
    old = matrix.read_text()
    assert sync(capsys, "--matrix", str(matrix), "--index-url", url, "--check")[0] == 1
    code, out = sync(capsys, "--matrix", str(matrix), "--index-url", url, "--write", "--registry-url", NO_REGISTRY)
    assert code == 0 and "rewritten: 6 changes" in out, out
    # a local index has no upload times (nor does uv see any there): the versions it lists get none, and the
    # dates of those it no longer lists go (a cutoff on such an index would leave a cell nothing to install)
    assert "~ released: 2.19.1, 2.18.1 dropped (no longer listed)" in out
    assert set(Matrix.from_file(matrix).released) == set(yaml.safe_load(old)["released"]) - {
        "2.18.1", "2.19.1"}  # replaced by 2.18.2 and 2.19.2, which have no date
    assert "~ expect: 2.22.1 expects what 2.21.0 does (17 scenarios where the rules differ)" in out
    assert f"· GPU images not looked up ({NO_REGISTRY}: cannot look up tensorflow/tensorflow:" in out
    new = matrix.read_text()
    comments = [line for line in old.splitlines() if line.lstrip().startswith("#")]
    assert all(line in new.splitlines() for line in comments)
    # only the entries it replaced, the wheels it found (this index has fewer) and the upload times changed
    removed = set(old.splitlines()) - set(new.splitlines())
    assert {line for line in removed if not re.fullmatch(r'  "2\.(18|19|21|22)": "3\.[0-9]+-3\.[0-9]+"', line)
            and not re.fullmatch(r'  "2\.(18|19|21)\.[0-9]+": "[0-9T:-]+Z"', line)} == {
        '  - {tf: 2.19.1, python: "3.12", variants: {tfkeras: ["tf_keras~=2.19.0"], jax: ["jax"]}}',
        '  - {tf: 2.18.1, python: "3.12", variants: {tfkeras: ["tf_keras~=2.18.0"], jax: ["jax"]},'}
    lines = new.splitlines()
    first = lines.index('  - {tf: 2.22.1, python: "3.13", variants: {tfkeras: ["tf_keras~=2.22.0"], jax: ["jax"], '
                        'latest: []}}')
    assert lines[first + 1].startswith("  - {tf: 2.21.0,")  # newest first, as the list was
    assert '  - {tf: 2.19.2, python: "3.12", variants: {tfkeras: ["tf_keras~=2.19.0"], jax: ["jax"]}}' in lines
    # without an answer from the registry, a newer patch keeps the minor's image override (an older patch's tag)
    assert entry_of(matrix, "2.18.2")["images"] == {"gpu": "tensorflow/tensorflow:2.18.0-gpu"}
    assert sync(capsys, "--matrix", str(matrix), "--index-url", url, "--check") == (
        0, f"{matrix} against {url} (tensorflow):\n{matrix} is up to date with the index.\n")
    planned = main(["plan", "--matrix", str(matrix), "--json", "--select", "tf-2.22*"])
    cells = json.loads(capsys.readouterr().out)
    assert planned == 0 and sorted(c["id"] for c in cells) == [
        "tf-2.22.1-cpu", "tf-2.22.1-cpu-jax", "tf-2.22.1-cpu-latest", "tf-2.22.1-cpu-tfkeras", "tf-2.22.1-gpu",
        "tf-2.22.1-gpu-jax", "tf-2.22.1-gpu-latest", "tf-2.22.1-gpu-tfkeras"]
    gpu = next(c for c in cells if c["id"] == "tf-2.22.1-gpu")
    assert gpu["image"] == "tensorflow/tensorflow:2.22.1-gpu" and gpu["python"] == "3.13"
    # each cell of the new release expects what its 2.21.0 counterpart does, not what `tf-*` says of 2.0 to 2.15
    expected = {c.id: c.expect for c in plan(Matrix.from_file(matrix))}
    assert all(expected[cell_id] == expected[cell_id.replace("2.22.1", "2.21.0")] for cell_id in expected
               if cell_id.startswith("tf-2.22.1-"))
    assert expected["tf-2.22.1-cpu"]["keras_bn_custom_estimator"] == "unsupported"


def test_pre_adds_the_candidate_follows_it_and_gives_way_to_the_final_release(
        tmp_path: Path, matrix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "index"
    url = write_index(root, {"tensorflow": wheel_names("2.21.0") + wheel_names("2.22.0rc1")})
    code, out = sync(capsys, "--matrix", str(matrix), "--index-url", url, "--pre", "--write")
    assert code == 0, out
    # no tf_keras 2.22 on the index: the variant cannot follow, and says so
    assert "variant tfkeras left out: no release of tf_keras on the index matches tf_keras~=2.22.0" in out
    assert entry_of(matrix, "2.22.0rc1") == {"tf": "2.22.0rc1", "python": "3.13",
                                             "variants": {"jax": ["jax"], "latest": []},
                                             "pre": True}
    url = write_index(root, {"tensorflow": wheel_names("2.21.0") + wheel_names("2.22.0rc1") + wheel_names("2.22.0rc2")})
    code, out = sync(capsys, "--matrix", str(matrix), "--index-url", url, "--check")  # no --pre: followed anyway
    assert code == 1 and "~ 2.22.0rc1 -> 2.22.0rc2 on Python 3.13: a newer release candidate" in out
    sync(capsys, "--matrix", str(matrix), "--index-url", url, "--write")
    url = write_index(root, {"tensorflow": wheel_names("2.21.0") + wheel_names("2.22.0rc2") + wheel_names("2.22.0")})
    code, out = sync(capsys, "--matrix", str(matrix), "--index-url", url, "--pre", "--write")
    assert "~ 2.22.0rc2 -> 2.22.0 on Python 3.13: the final release of a release candidate" in out
    versions = [e["tf"] for e in yaml.safe_load(matrix.read_text())["versions"]]
    assert versions[:2] == ["2.22.0", "2.21.0"] and "2.22.0rc2" not in versions
    assert "pre" not in entry_of(matrix, "2.22.0")
    # the candidate's expect rules went with it; the final release has its own
    assert "2.22.0rc" not in matrix.read_text() and "- expect: 21 rules of 2.22.0rc2, no longer listed" in out
    assert plan(Matrix.from_file(matrix), select=["tf-2.22.0-cpu"])[0].expect == \
        plan(Matrix.from_file(matrix), select=["tf-2.21.0-cpu"])[0].expect


def test_yanked_releases_and_releases_without_a_wheel_for_the_scenarios_pythons_are_left_out_with_why(
        tmp_path: Path, matrix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = write_index(tmp_path / "index", {
        "tensorflow": wheel_names("2.21.0") + wheel_names("2.22.1") + wheel_names("2.22.2")
        + wheel_names("2.22.3", ("cp314",)), "tf-keras": ["tf_keras-2.22.0-py3-none-any.whl"]}, yanked=("2.22.2",))
    code, out = sync(capsys, "--matrix", str(matrix), "--index-url", url)
    assert code == 0
    assert "+ 2.22.1 on Python 3.13" in out
    assert "left out 2.22.2: yanked from the index" in out
    assert "left out 2.22.3: wheels for Python 3.14, none of 3.6 to 3.13 (the scenarios' Pythons)" in out


class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's `status`, `kind` and `body`."""

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        server = self.server
        self.send_response(server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Type", server.kind)  # type: ignore[attr-defined]
        self.end_headers()
        self.wfile.write(server.body)  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


@pytest.mark.parametrize(("status", "kind", "body", "message"), [
    (404, "text/html", b"not found", r"listing tensorflow answered HTTP 404"),
    (200, "application/vnd.pypi.simple.v1+json", b"{not json", r"the tensorflow page is not a PEP 691 project page"),
    (200, "text/html", b"<html>maintenance</html>", r"lists no release of tensorflow with a Linux \w+ wheel"),
    (503, "text/html", b"busy", r"listing tensorflow answered HTTP 503"),
])
def test_an_index_that_answers_an_error_or_garbage_is_one_clear_error_and_nothing_is_written(
        server: http.server.HTTPServer, matrix: Path, capsys: pytest.CaptureFixture[str], status: int, kind: str,
        body: bytes, message: str) -> None:
    index_files.cache_clear()
    server.status, server.kind, server.body = status, kind, body  # type: ignore[attr-defined]
    before = matrix.read_bytes()
    code, out = sync(capsys, "--matrix", str(matrix), "--index-url", f"http://127.0.0.1:{server.server_port}/simple",
                     "--write")
    assert code == 2 and re.search(message, out) and "Traceback" not in out, out
    assert out.startswith("bnmatrix: http://127.0.0.1:") and matrix.read_bytes() == before


def test_an_unreachable_index_is_one_clear_error(matrix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index_files.cache_clear()
    code, out = sync(capsys, "--matrix", str(matrix), "--index-url", "http://127.0.0.1:9/simple", "--check")
    assert code == 2 and "cannot list the releases of tensorflow" in out and "expected a reachable package index" in out


def test_each_entry_is_written_back_as_the_matrix_writes_it() -> None:
    """The entries sync writes have the layout of the ones it leaves: every one-line entry of the shipped matrix
    comes out of entry_text as it is in the file."""
    text = MATRIX.read_text()
    specs = yaml.safe_load(text)["versions"]
    lines = [line for line in text.splitlines() if line.startswith("  - {tf:") and line.endswith("}")]
    assert len(lines) > 15
    written = {entry_text(spec, "  - ") for spec in specs}
    assert set(lines) <= written


def test_a_python_without_a_wheel_for_its_release_is_refused_from_the_wheels_the_index_has(
        matrix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    matrix.write_text(matrix.read_text().replace('{tf: 1.15.5, python: "3.7"', '{tf: 1.15.5, python: "3.8"'))
    code = main(["plan", "--matrix", str(matrix)])
    err = capsys.readouterr().err
    assert code == 2 and "python: found '3.8', but TF 1.15.5 has Linux wheels only for Python 3.5 to 3.7" in err


def test_nightly_adds_a_cpu_entry_of_the_newest_nightly_and_follows_it_night_by_night(
        tmp_path: Path, matrix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nightly = [f"tf_nightly-2.23.0.dev2026112{day}-cp313-cp313-manylinux_2_27_x86_64.whl" for day in (7, 8)]
    root = tmp_path / "index"
    url = write_index(root, {"tensorflow": wheel_names("2.21.0"), "tf-nightly": nightly})
    assert "tf-nightly" not in sync(capsys, "--matrix", str(matrix), "--index-url", url)[1]  # only when asked for
    code, out = sync(capsys, "--matrix", str(matrix), "--index-url", url, "--nightly", "--write")
    assert code == 0 and "+ 2.23.0.dev20261128 on Python 3.13: tf-nightly's newest nightly (CPU), set up as " \
                         "2.21.0; variant tfkeras left out" in out, out
    assert entry_of(matrix, "2.23.0.dev20261128") == {
        "tf": "2.23.0.dev20261128", "python": "3.13", "variants": {"jax": ["jax"]}, "devices": ["cpu"],
        "package": {"cpu": "tf-nightly=={tf}"}, "nightly": True}
    assert main(["plan", "--matrix", str(matrix), "--json", "--select", "tf-2.23*"]) == 0
    cells = json.loads(capsys.readouterr().out)
    assert [(c["id"], c["requirements"][0]) for c in cells] == [
        ("tf-2.23.0.dev20261128-cpu", "tf-nightly==2.23.0.dev20261128"),
        ("tf-2.23.0.dev20261128-cpu-jax", "tf-nightly==2.23.0.dev20261128")]
    url = write_index(root, {"tensorflow": wheel_names("2.21.0"),
                             "tf-nightly": [*nightly, nightly[-1].replace("20261128", "20261129")]})
    code, out = sync(capsys, "--matrix", str(matrix), "--index-url", url, "--write")  # followed without --nightly
    assert "~ 2.23.0.dev20261128 -> 2.23.0.dev20261129 on Python 3.13: tf-nightly's newest nightly" in out
    assert [e["tf"] for e in yaml.safe_load(matrix.read_text())["versions"]][:2] == ["2.23.0.dev20261129", "2.21.0"]


class _Registry(http.server.BaseHTTPRequestHandler):
    """Docker Hub's tag endpoint for the server's `tags` of tensorflow/tensorflow: 200 or 404."""

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        prefix = "/v2/namespaces/tensorflow/repositories/tensorflow/tags/"
        found = self.path.startswith(prefix) and self.path[len(prefix):] in self.server.tags  # type: ignore[attr-defined]
        self.send_response(200 if found else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_gpu_images_take_the_versions_own_tag_or_the_nearest_older_patchs_that_the_registry_has(
        tmp_path: Path, matrix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = write_index(tmp_path / "index", {
        "tensorflow": wheel_names("2.21.0") + wheel_names("2.22.0") + wheel_names("2.22.1")
        + wheel_names("2.19.1", ("cp312",)) + wheel_names("2.19.2", ("cp312",))
        + wheel_names("2.18.1", ("cp312",)) + wheel_names("2.18.2", ("cp312",)),
        "tf-keras": ["tf_keras-2.22.0-py3-none-any.whl"]})
    registry = http.server.HTTPServer(("127.0.0.1", 0), _Registry)
    registry.tags = {"2.21.0-gpu", "2.22.0-gpu", "2.19.1-gpu", "2.18.2-gpu"}  # type: ignore[attr-defined]
    threading.Thread(target=registry.serve_forever, daemon=True).start()
    try:
        code, out = sync(capsys, "--matrix", str(matrix), "--index-url", url, "--write", "--registry-url",
                         f"http://127.0.0.1:{registry.server_port}")
    finally:
        registry.shutdown()
    assert code == 0, out
    assert "· 2.22.1: GPU image tensorflow/tensorflow:2.22.0-gpu (no tensorflow/tensorflow:2.22.1-gpu: the nearest " \
           "older patch's)" in out
    assert "· 2.18.2: GPU image tensorflow/tensorflow:2.18.2-gpu (its own tag)" in out
    assert entry_of(matrix, "2.22.1")["images"] == {"gpu": "tensorflow/tensorflow:2.22.0-gpu"}
    assert entry_of(matrix, "2.19.2")["images"] == {"gpu": "tensorflow/tensorflow:2.19.1-gpu"}
    assert "images" not in entry_of(matrix, "2.18.2")  # its own tag exists: the override of 2.18.0-gpu goes
    assert main(["plan", "--matrix", str(matrix), "--json", "--select", "tf-2.18.2-gpu"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["image"] == "tensorflow/tensorflow:2.18.2-gpu"


@pytest.mark.parametrize(("url", "message"), [
    ("notaurl", "notaurl: not a package index URL; expected an http(s):// or file:// URL such as https://pypi.org/simple"),
    ("/tmp", "/tmp: not a package index URL"),
    ("http://[::1", "cannot list the releases of tensorflow: Invalid IPv6 URL"),
    ("file:///nonexistent", "file:///nonexistent: no such folder (/nonexistent); expected a local index"),
])
def test_an_index_url_that_is_none_is_one_clear_error(matrix: Path, capsys: pytest.CaptureFixture[str], url: str,
                                                      message: str) -> None:
    index_files.cache_clear()
    code, out = sync(capsys, "--matrix", str(matrix), "--index-url", url, "--write")
    assert code == 2 and message in out and "Traceback" not in out, out
    assert sync(capsys, "--matrix", str(matrix), "--registry-url", "notaurl")[1].startswith(
        "bnmatrix: --registry-url notaurl: expected an http(s):// URL of Docker Hub's API")


def test_the_matrix_an_installed_bnmatrix_ships_is_never_rewritten(tmp_path: Path) -> None:
    from bnmatrix.config import PACKAGE_DIR
    from bnmatrix.errors import BnMatrixError
    from bnmatrix.index import Sync

    shipped = PACKAGE_DIR / "_data" / "matrix.yaml"  # where a wheel keeps it (tox installs one; a checkout has none)
    before = shipped.read_bytes() if shipped.exists() else None
    with pytest.raises(BnMatrixError, match=r"is the matrix this bnmatrix installation ships; expected your own: copy"):
        Sync(path=shipped, index_url="", package="tensorflow", old="", new="changed").write()
    assert (shipped.read_bytes() if shipped.exists() else None) == before
