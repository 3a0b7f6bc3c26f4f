"""User-facing errors.

A `SegloopError` carries a message that names what is wrong and what to do; the CLI prints it
without a traceback and exits with status 2. Its message is masked when it is made
(`components.core.redact`), so no password in an address reaches a user, a log or a pod log.
"""

from components.core.redact import redact


class SegloopError(Exception):
    """An error caused by input, configuration or the environment, explained in words."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(SegloopError):
    """The config file or an override is wrong."""


class StorageError(SegloopError):
    """An object store or file operation failed; the message names the URI and the cause."""
