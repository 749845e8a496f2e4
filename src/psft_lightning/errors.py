"""Errors a user can act on. The CLI prints these as one paragraph, without a traceback."""


class PSFTError(Exception):
    """Base class for problems with the user's input, data or configuration."""


class DataError(PSFTError, ValueError):
    """A dataset file or row cannot be used; the message names the file, row and field."""


class ConfigError(PSFTError, ValueError):
    """A configuration value is unknown, out of range or inconsistent with another."""


# Exit codes of the ``psft`` command, one per kind of outcome, so a scheduler or a retry wrapper can
# tell them apart (README, "Errors, resume and checkpoints").
EXIT_OK = 0
EXIT_BUG = 1  # an internal bug: a traceback and a request to report it
EXIT_USER_ERROR = 2  # bad input, setting or path
EXIT_DIVERGED = 3  # the loss or the gradient norm became non-finite
EXIT_ENVIRONMENT = 4  # disk full, read-only file system, permission denied, missing optional package
EXIT_INTERRUPTED = 130  # 128 + SIGINT (Ctrl-C)
EXIT_PREEMPTED = 143  # 128 + SIGTERM


class Diverged(Exception):
    """Training produced a non-finite loss, gradient norm or weights; nothing non-finite was saved."""
