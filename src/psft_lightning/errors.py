"""Errors a user can act on. The CLI prints these as one paragraph, without a traceback."""


class PSFTError(Exception):
    """Base class for problems with the user's input, data or configuration."""


class DataError(PSFTError, ValueError):
    """A dataset file or row cannot be used; the message names the file, row and field."""


class ConfigError(PSFTError, ValueError):
    """A configuration value is unknown, out of range or inconsistent with another."""


# The ``psft`` command's exit statuses, the same for every subcommand (README: "Errors, resume and
# checkpoints"); scripts and schedulers tell the outcomes apart by them.
EXIT_OK = 0
EXIT_BUG = 1  # an internal error: a traceback and a line asking for a report
EXIT_USER_ERROR = 2  # bad input, setting or path
EXIT_DIVERGED = 3  # training diverged (non-finite loss or gradient)
EXIT_ENVIRONMENT = 4  # disk full, read-only file system, permission denied, missing optional package
EXIT_INTERRUPTED = 130  # SIGINT
EXIT_PREEMPTED = 143  # SIGTERM
