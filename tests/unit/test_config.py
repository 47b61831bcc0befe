"""matrix.yaml loading: the shipped matrix is valid, and every mistake names file, line, key, value."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnmatrix.config import Matrix
from bnmatrix.errors import BnMatrixError

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
schema_version: 1
settings:
  steps: 100
scenarios: [keras_bn_custom_estimator, layers_bn_session]
variants:
  tfkeras: {description: legacy Keras, env: {TF_USE_LEGACY_KERAS: "1"}}
versions:
  - {tf: 2.16.2, python: "3.12", variants: {tfkeras: ["tf_keras~=2.16.0"]}}
  - tf: 1.15.5
    python: "3.7"
    pins: ["numpy<1.19"]
wheels: {"1.15": "3.6-3.7", "2.16": "3.9-3.12"}
"""


def load(text: str, tmp_path: Path) -> Matrix:
    path = tmp_path / "matrix.yaml"
    path.write_text(text)
    return Matrix.from_file(path)


def error_of(text: str, tmp_path: Path) -> str:
    with pytest.raises(BnMatrixError) as caught:
        load(text, tmp_path)
    assert caught.value.exit_code == 2
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "matrix.yaml")), message
    return message


def test_shipped_matrix_covers_1x_and_2x_with_both_devices() -> None:
    matrix = Matrix.from_file(REPO / "matrix.yaml")
    versions = [v.tf for v in matrix.versions]
    assert "1.15.5" in versions and "2.15.1" in versions
    assert any(v.startswith("1.8") for v in versions) and any(v.startswith("1.9") for v in versions)
    assert all(v.devices == ("cpu", "gpu") for v in matrix.versions)
    keras3 = [v for v in matrix.versions if tuple(map(int, v.tf.split(".")[:2])) >= (2, 16)]
    assert keras3 and all("tfkeras" in v.variants for v in keras3)
    tf115 = next(v for v in matrix.versions if v.tf == "1.15.5")
    assert tf115.packages == {"cpu": "tensorflow==1.15.5", "gpu": "tensorflow-gpu==1.15.5"}
    assert tf115.images["gpu"] == "tensorflow/tensorflow:1.15.5-gpu-py3"


def test_good_matrix_loads_with_defaults_filled_in(tmp_path: Path) -> None:
    matrix = load(GOOD, tmp_path)
    assert matrix.scenarios == ("keras_bn_custom_estimator", "layers_bn_session")
    assert matrix.versions[1].pins == ("numpy<1.19",)
    assert matrix.versions[1].images == {"cpu": "python:3.7-slim", "gpu": "tensorflow/tensorflow:1.15.5-gpu"}
    assert matrix.variants["tfkeras"].env == {"TF_USE_LEGACY_KERAS": "1"}


@pytest.mark.parametrize(
    ("bad", "good", "expected"),
    [
        # wrong type: YAML reads 3.10 as a number
        ('python: "3.7"', "python: 3.7",
         [":10:", "versions[1].python", "3.7 (a number)", "expected a string", "quote it"]),
        # unknown key, with a suggestion
        ('python: "3.7"', 'pyhton: "3.7"', [":10:", "unknown key 'pyhton'", "Perhaps you meant 'python'?"]),
        # unknown scenario, with a suggestion
        ("layers_bn_session]", "layers_bn_sesion]", [":4:", "scenarios[1]", "unknown scenario 'layers_bn_sesion'",
                                                    "Perhaps you meant 'layers_bn_session'?"]),
        # duplicate version
        ("tf: 1.15.5", "tf: 2.16.2", [":9:", "versions[1].tf", "duplicate version '2.16.2'", "versions[0]"]),
        # a Python that version has no wheel for
        ('python: "3.7"', 'python: "3.8"', [":10:", "versions[1].python", "found '3.8'", "3.6 to 3.7",
                                            'wheels: "1.15"']),
        # a Python range that is none
        ('"1.15": "3.6-3.7"', '"1.15": "3.6 to 3.7"', [":12:", "wheels.1.15", "'3.6 to 3.7'"]),
        # YAML syntax error
        ("steps: 100", "steps: [100", [":4:", "YAML syntax error"]),
        # steps of the wrong type
        ("steps: 100", "steps: many", [":3:", "settings.steps", "'many'", "expected an integer"]),
        # steps out of range
        ("steps: 100", "steps: 0", [":3:", "settings.steps", "found 0"]),
        # tf not an exact release
        ("tf: 1.15.5", "tf: '1.15'", [":9:", "versions[1].tf", "'1.15'", "an exact TF release"]),
        # an invalid pin
        ('pins: ["numpy<1.19"]', 'pins: ["numpy<<1.19"]', [":11:", "versions[1].pins[0]", "'numpy<<1.19'",
                                                           "PEP 508"]),
        # pins not a list
        ('pins: ["numpy<1.19"]', 'pins: "numpy<1.19"', [":11:", "versions[1].pins", "expected an array"]),
        # unknown device
        ("steps: 100", "devices: [cpu, tpu]", [":3:", "settings.devices[1]", "'tpu'"]),
        # unknown variant on a version
        ("variants: {tfkeras:", "variants: {tfkears:", [":8:", "unknown variant 'tfkears'",
                                                        "Perhaps you meant 'tfkeras'?"]),
        # duplicate key
        ("  steps: 100\n", "  steps: 100\n  steps: 200\n", [":4:", "duplicate key 'steps'", "first at line 3"]),
        # missing required key
        ('  - tf: 1.15.5\n    python: "3.7"\n', "  - tf: 1.15.5\n", [":9:", "versions[1]", "'python' is a required"]),
        # unknown top-level key
        ("schema_version: 1", "schema_version: 1\nversion: 2", [":2:", "unknown key 'version'"]),
        # wrong schema_version
        ("schema_version: 1", "schema_version: 2", [":1:", "schema_version", "found 2"]),
        # an expectation for a scenario the matrix does not run
        ("versions:\n", "expect: [{cells: 'tf-*', scenario: layers_bn_sesion, status: stale}]\nversions:\n",
         [":7:", "expect[0].scenario", "unknown scenario 'layers_bn_sesion'"]),
        # an expectation with a status that does not exist
        ("versions:\n", "expect: [{cells: 'tf-*', scenario: layers_bn_session, status: fine}]\nversions:\n",
         [":7:", "expect[0].status", "'fine'"]),
        # a template with an unknown placeholder
        ("  steps: 100", "  steps: 100\n  images: {cpu: 'python:{py}-slim'}", [":4:", "settings.images.cpu",
                                                                               "only {tf} and {python}"]),
    ],
)
def test_bad_input_names_file_line_key_value_and_expectation(tmp_path: Path, bad: str, good: str,
                                                             expected: list[str]) -> None:
    assert bad in GOOD
    message = error_of(GOOD.replace(bad, good, 1), tmp_path)
    for part in expected:
        assert part in message, (part, message)


def test_empty_file_and_empty_versions(tmp_path: Path) -> None:
    assert "is empty" in error_of("", tmp_path)
    message = error_of("schema_version: 1\nscenarios: [layers_bn_session]\nversions: []\n", tmp_path)
    assert ":3: versions: is empty; expected at least one entry" in message


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BnMatrixError, match="cannot read the matrix file"):
        Matrix.from_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("line", "key", "expected"), [
    ('settings: {index_url: "https://pypi.org/simple\\nRUN curl evil"}', "settings.index_url",
     "expected an http(s):// or file:// URL without whitespace"),
    ('settings: {images: {cpu: "python:3.11-slim\\nRUN curl evil"}}', "settings.images.cpu",
     "expected an image name such as python:3.11-slim"),
    ('settings: {steps: 100}\nvariants: {x: {description: d, env: {A: "1\\nRUN curl evil"}}}', "variants.x.env.A",
     "expected a variable name and a value without whitespace"),
])
def test_nothing_from_the_matrix_can_add_a_script_line(tmp_path: Path, line: str, key: str,
                                                            expected: str) -> None:
    text = GOOD.replace("settings:\n  steps: 100\n", line + "\n")
    if "variants: {x" in line:
        text = text.replace('variants:\n  tfkeras: {description: legacy Keras, env: {TF_USE_LEGACY_KERAS: "1"}}\n',
                            "")
        text = text.replace(', variants: {tfkeras: ["tf_keras~=2.16.0"]}', "")
    message = error_of(text, tmp_path)
    assert f": {key}: found " in message and expected in message


def test_image_maps_refuse_whitespace(tmp_path: Path) -> None:
    from bnmatrix.config import load_image_map, parse_image_map

    with pytest.raises(BnMatrixError, match="expected FROM=TO"):
        parse_image_map(["python:3.7-slim=evil\nRUN x"])
    (tmp_path / "image-map.yaml").write_text('python:3.7-slim: "local/py:3.7\\nRUN curl evil"\n')
    with pytest.raises(BnMatrixError, match=r"image-map.yaml:1: python:3.7-slim: found 'local/py:3.7\\nRUN curl evil'"):
        load_image_map(tmp_path / "image-map.yaml")


def test_a_billion_laughs_file_stops_at_a_bound(tmp_path: Path) -> None:
    import resource

    levels = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for index in range(1, 9):
        previous = chr(ord("a") + index - 1)
        levels.append(f"{chr(ord('a') + index)}: &{chr(ord('a') + index)} [{', '.join(['*' + previous] * 9)}]")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    message = error_of("\n".join(levels) + "\n", tmp_path)
    assert "aliases (*name) expand to more than 100000 values" in message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: well under 200 MB


def test_a_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    size = len(GOOD) + (2 << 20)
    assert f"the file is {size} bytes; expected at most 1048576 for a matrix file" in error_of(GOOD + "#" * (2 << 20),
                                                                                             tmp_path)
