"""bnmatrix: which TensorFlow versions update BatchNormalization statistics, pattern by pattern."""

__version__ = "0.1.0"
__all__ = ["__version__"]
