"""Errors a user can act on. The CLI prints these as one paragraph, without a traceback."""


class PSFTError(Exception):
    """Base class for problems with the user's input, data or configuration."""


class DataError(PSFTError, ValueError):
    """A dataset file or row cannot be used; the message names the file, row and field."""


class ConfigError(PSFTError, ValueError):
    """A configuration value is unknown, out of range or inconsistent with another."""
