"""The error family for a user's mistakes: each prints as one message and maps to an exit code."""

EXIT_OK = 0
EXIT_CELL_FAILED = 1
EXIT_USAGE = 2


class BnMatrixError(Exception):
    """A mistake in the user's input (matrix, options, results dir): one clear message, exit 2."""

    exit_code = EXIT_USAGE


class Cancelled(Exception):
    """Work that a stop (Ctrl-C, SIGTERM, SIGHUP, a store that cannot be written) cancelled before or while it ran:
    raised inside the backends and the runner to unwind a cell; the command reports the stop itself."""
