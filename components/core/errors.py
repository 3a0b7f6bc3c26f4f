"""User-facing errors.

A `SegloopError` carries a message that names what is wrong and what to do; the CLI prints it
without a traceback and exits with status 2.
"""


class SegloopError(Exception):
    """An error caused by input, configuration or the environment, explained in words."""


class ConfigError(SegloopError):
    """The config file or an override is wrong."""


class StorageError(SegloopError):
    """An object store or file operation failed; the message names the URI and the cause."""
