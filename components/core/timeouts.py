"""Connect and read timeouts and retry counts of every network client, in one place.

Each is an environment variable with a default that keeps a dead or silent server from hanging
a command (a server that accepts connections and never answers fails within about
attempts x (connect + read) seconds, with the endpoint named); raise one where a slow but
working server needs longer. The CVAT client's are config settings (`cvat.request_timeout_s`,
`cvat.retries`, `cvat.backoff_s`), as it already had them.

| variable | default | client |
|---|---|---|
| SEGLOOP_S3_CONNECT_TIMEOUT_S | 5 | S3 (boto3): TCP connect |
| SEGLOOP_S3_READ_TIMEOUT_S | 60 | S3: wait for each answer (not the whole transfer) |
| SEGLOOP_S3_MAX_ATTEMPTS | 3 | S3: attempts per request, boto3's standard retry mode |
| SEGLOOP_DB_TIMEOUT_S | 10 | PostgreSQL connect_timeout and keepalive idle; SQLite busy timeout |
| SEGLOOP_DB_STATEMENT_TIMEOUT_S | 300 | PostgreSQL statement_timeout (running or waiting on a lock) |
| MLFLOW_HTTP_REQUEST_TIMEOUT | 60 | MLflow REST calls (MLflow's own variable; its default is 120) |
| MLFLOW_HTTP_REQUEST_MAX_RETRIES | 3 | MLflow REST retries (MLflow's own; its default 7 takes minutes) |

MLflow's own S3 artifact client (boto3 inside MLflow, used where the tracking server hands out
`s3://` artifact locations) gets the three SEGLOOP_S3_* settings too (`mlflow_defaults`); it
would otherwise keep botocore's 60 s connect and read timeouts with legacy retries.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

from components.core.errors import SegloopError

S3_CONNECT_TIMEOUT_S = ("SEGLOOP_S3_CONNECT_TIMEOUT_S", 5.0)
S3_READ_TIMEOUT_S = ("SEGLOOP_S3_READ_TIMEOUT_S", 60.0)
S3_MAX_ATTEMPTS = ("SEGLOOP_S3_MAX_ATTEMPTS", 3)
DB_TIMEOUT_S = ("SEGLOOP_DB_TIMEOUT_S", 10.0)
DB_STATEMENT_TIMEOUT_S = ("SEGLOOP_DB_STATEMENT_TIMEOUT_S", 300.0)
# MLflow reads these itself on every request; segloop only gives them shorter defaults.
MLFLOW_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "60", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3"}


def seconds(setting: tuple[str, float]) -> float:
    """The setting's value from the environment (a positive number of seconds), else its default."""
    name, default = setting
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise SegloopError(f"{name}={text!r} is not a positive number of seconds; fix or unset it")
    return value


def attempts(setting: tuple[str, int]) -> int:
    """The setting's value from the environment (a whole number >= 1), else its default."""
    name, default = setting
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise SegloopError(
            f"{name}={text!r} is not a whole number of attempts >= 1; fix or unset it"
        )
    return int(text)


def mlflow_defaults() -> None:
    """Give MLflow's HTTP client segloop's shorter timeout and retries, unless the user set them,
    and its S3 artifact client segloop's S3 limits (`bound_default_boto3_session`)."""
    for name, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)
    bound_default_boto3_session()


def bound_default_boto3_session() -> None:
    """Make boto3's default session give every client it creates the SEGLOOP_S3_* connect and
    read timeouts and bounded standard-mode retries.

    MLflow makes its S3 client with `boto3.client("s3", config=Config(signature_version=...,
    s3=...))`: that is the default session, and botocore merges the client's own Config over the
    session's default client config, so MLflow's settings stay and ours fill in the rest. (No
    environment variable sets botocore's read timeout.) segloop's own S3 client is made apart
    (components.core.storage) and is not touched.
    """
    limits = (seconds(S3_CONNECT_TIMEOUT_S), seconds(S3_READ_TIMEOUT_S), attempts(S3_MAX_ATTEMPTS))
    _install_boto3_defaults(limits)


@lru_cache(maxsize=4)
def _install_boto3_defaults(limits: tuple[float, float, int]) -> None:
    import boto3
    import botocore.session
    from botocore.config import Config

    connect_s, read_s, max_attempts = limits
    session = botocore.session.get_session()
    session.set_default_client_config(
        Config(
            connect_timeout=connect_s,
            read_timeout=read_s,
            retries={"mode": "standard", "total_max_attempts": max_attempts},  # first try included
        )
    )
    boto3.setup_default_session(botocore_session=session)
