"""The one masking function for everything segloop prints, logs or writes about itself.

`redact(text)` hides, anywhere in a string:
- the password of a URL's userinfo, for any scheme (`postgresql://u:pw@h/db` -> `u:***@h`);
- the values of secret-like query or key=value parameters (`?token=...`, `&X-Amz-Signature=...`,
  `password=...` in a libpq DSN, `?api_key=`, Azure SAS `sig=`): any name `is_secret_key`;
- `Authorization:` header values;
- the literal values of secret environment variables (`CVAT_PASSWORD`, `AWS_SECRET_ACCESS_KEY`,
  any variable whose name `is_secret_key`), so a secret that reached a message another way is
  still hidden.

`redact_data(obj)` does the same through dicts and lists and also masks the values of keys that
name a credential (`cvat.password`, `secret_key`): for cfg.yaml, metrics and other JSON.

`install()` puts `redact` in front of every log record (a log record factory: every logger,
handler and library, urllib3's and tenacity's retry warnings included), every warning and every
uncaught traceback. SegloopError messages are masked by the class itself.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import traceback
import warnings
from typing import Any

MASK = "***"
# A name says its value is a secret when, split into lower-case words (at '_', '-', '.', and
# camelCase: `apiKey` -> `api_key`), it holds one of SECRET_WORDS not followed by a letter
# (`pgpassword`, `X-Amz-Signature`, `AWS_SECRET_ACCESS_KEY`, but not `max_tokens`, `tokenizer`),
# or one of SECRET_TOKENS as a whole word (`MYSQL_PWD`, `DB_PASS`, `sig`, `auth`, but not
# `bypass`, `author`).
SECRET_WORDS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "credential",
    "credentials",
    "access_key",
    "accesskey",
    "api_key",
    "apikey",
    "private_key",
    "privatekey",
    "signature",
    "authorization",
)
SECRET_TOKENS = ("pwd", "pw", "pass", "sig", "auth")
_SECRET_NAME = re.compile(
    rf"(?:{'|'.join(SECRET_WORDS)})(?![a-z])|(?<![a-z])(?:{'|'.join(SECRET_TOKENS)})(?![a-z])"
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
# Environment values shorter than this are not searched for: masking every "abc" in every
# message would garble output more than it protects (such a password is not one).
MIN_ENV_SECRET_LEN = 6
# Names that end so hold a reference (a file, a folder, an id), not the secret itself.
NOT_SECRET_SUFFIXES = ("_file", "_path", "_dir", "_id")  # AWS_ACCESS_KEY_ID is a name
# The shell's working directories: `PWD` reads as MYSQL_PWD's token, but masking its value hid
# every path under the current folder in every message.
SHELL_VARIABLES = ("PWD", "OLDPWD")

# scheme://user:password@ -- the password runs to the last '@' before a space or quote, so a
# raw '@' or '/' inside it is hidden too (SQLAlchemy accepts both). Bounded lengths and a match
# only at a word's start keep it linear on hostile text (an unbounded form took minutes).
URL_PASSWORD = re.compile(
    r"""(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s/?#@:'"<>]{0,256}:)"""
    r"""(?:[^\s'"<>@]{0,256}+@)++"""
)
PARAM = re.compile(r"""(?:(?<=[?&;\s,(])|^)([A-Za-z0-9_.-]+)=([^&#\s'"<>,;)]+)""")
AUTH_HEADER = re.compile(
    r"""(?i)\b((?:proxy-)?authorization['"]?\s*[:=]\s*['"]?)(?:(bearer|token|basic|digest)\s+)?[^\s'",;}]+"""
)
# A value shaped like a file path (`/var/run/secrets/key.json`, `~/.aws/credentials`): under a
# secret-like name (GOOGLE_APPLICATION_CREDENTIALS) it points at the secret, it is not one.
PATH_VALUE = re.compile(r"^(?:file://|~|\.{1,2})?/[\w.+@-]*(?:/[\w.+@-]*)*$")


def words_of(name: str) -> str:
    """`name` in lower case with its words joined by '_' (`X-Amz-Signature` -> x_amz_signature)."""
    return re.sub(r"[^a-z0-9]+", "_", _CAMEL.sub("_", name).lower())


def is_secret_key(name: str) -> bool:
    """Whether a key's, variable's or parameter's name says it holds a credential (password,
    secret, token, api key, signature, pwd, pass, sig, auth, ...); names ending in _file, _path,
    _dir or _id hold a reference, not the secret."""
    words = words_of(name)
    return bool(_SECRET_NAME.search(words)) and not words.endswith(NOT_SECRET_SUFFIXES)


def is_reference(value: str) -> bool:
    """Whether `value` is shaped like a file path: under a secret name it points at the secret."""
    return bool(PATH_VALUE.match(value.strip()))


def _is_port(password: str) -> bool:
    # `host:8080/path@x`: the "password" the pattern found is a port and a path.
    return bool(re.match(r"\d+(/|$)", password))


def secret_shapes(text: str) -> list[str]:
    """What secrets `text` shows, by kind and name, never the value: what `redact` masks
    (a URL's password anywhere in the text, a secret-named query or key=value parameter, an
    Authorization header). The shared definition behind `redact` and the compile-time check."""
    found: list[str] = []
    for m in URL_PASSWORD.finditer(text):
        password = m.group(0)[len(m.group(1)) :].rsplit("@", 1)[0]
        if password and not _is_port(password):
            found.append("a password inside a URL")
    names = sorted({m.group(1) for m in PARAM.finditer(text) if is_secret_key(m.group(1))})
    if names:
        found.append(f"a secret parameter ({', '.join(names)})")
    if AUTH_HEADER.search(text):
        found.append("an Authorization header")
    return found


def _param(match: re.Match) -> str:
    name = match.group(1)
    return f"{name}={MASK}" if is_secret_key(name) else match.group(0)


def env_secrets() -> list[str]:
    """The values of secret environment variables, longest first (read now: tests change env)."""
    values = {
        value
        for name, value in os.environ.items()
        if len(value) >= MIN_ENV_SECRET_LEN and is_secret_key(name) and name not in SHELL_VARIABLES
    }
    return sorted(values, key=len, reverse=True)


def redact(text: Any) -> str:
    """`text` (made a string) with every secret it shows replaced by `***`."""
    text = str(text)
    text = URL_PASSWORD.sub(rf"\1{MASK}@", text)
    text = PARAM.sub(_param, text)
    text = AUTH_HEADER.sub(
        lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{MASK}", text
    )
    for value in env_secrets():
        if value in text:
            text = text.replace(value, MASK)
    return text


def redact_data(data: Any) -> Any:
    """`data` with secrets masked: values of credential-named keys, and `redact` on strings."""
    if isinstance(data, dict):
        return {k: MASK if is_secret_key(str(k)) and v else redact_data(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact_data(v) for v in data]
    if isinstance(data, str):
        return redact(data)
    return data


# ---------------------------------------------------------------- guards for logs and tracebacks


def _scrub_record(record: logging.LogRecord) -> None:
    """Format the record's message now, masked; and its traceback, masked."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it when the record is emitted
        return
    record.msg, record.args = redact(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def _showwarning(message, category, filename, lineno, file=None, line=None) -> None:
    _original_showwarning(redact(message), category, filename, lineno, file, line)


def _excepthook(exc_type, exc, tb) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))


class RedactingStream(io.TextIOBase):
    """A text stream that writes through `redact` (each write is masked whole: loggers, click
    and tqdm write a message in one call). No `buffer`: nothing may write around it."""

    def __init__(self, stream: Any):
        self.stream = stream

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.stream.write(redact(text) if text else text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.stream, "errors", None)


def guard_streams() -> None:
    """Mask everything this process prints on stdout and stderr (the CLI's entry point calls it)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))


_original_showwarning = warnings.showwarning
_installed = False


def install() -> None:
    """Mask every log record, warning and uncaught traceback of this process (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        _scrub_record(record)
        return record

    logging.setLogRecordFactory(factory)
    warnings.showwarning = _showwarning
    sys.excepthook = _excepthook
