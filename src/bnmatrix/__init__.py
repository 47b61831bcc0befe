"""bnmatrix: which TensorFlow versions update BatchNormalization statistics, pattern by pattern."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bnmatrix")  # the git tag it was built from (pyproject.toml)
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.1.0"
__all__ = ["__version__"]
