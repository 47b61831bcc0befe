"""The error family for a user's mistakes: each prints as one message and maps to an exit code; and the stops."""

import signal

EXIT_OK = 0
EXIT_CELL_FAILED = 1
EXIT_USAGE = 2


class BnMatrixError(Exception):
    """A mistake in the user's input (matrix, options, results dir): one clear message, exit 2."""

    exit_code = EXIT_USAGE


class Terminated(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP (CI cancelling a job, a closed terminal): the command stops cleanly."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Stop:
    """The stop signal this process received, as the CLI's handler records it before it raises Terminated. Python
    drops an exception that a handler raises while the main thread runs a `__del__` or a weakref callback (it only
    prints "Exception ignored in ..."): the loops that wait for cells call `check`, so that no stop is lost."""

    signum: int | None = None

    @classmethod
    def check(cls) -> None:
        if cls.signum is not None:
            raise Terminated(cls.signum)


class Cancelled(Exception):
    """Work that a stop (Ctrl-C, SIGTERM, SIGHUP, a store that cannot be written) cancelled before or while it ran:
    raised inside the backends and the runner to unwind a cell; the command reports the stop itself."""
