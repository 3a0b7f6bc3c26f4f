"""One interface over local paths (`file://` or plain) and `s3://bucket/key` URIs.

S3 goes through boto3 with the endpoint, credentials and region from the environment
(`AWS_ENDPOINT_URL` or `S3_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_REGION`), connect and read timeouts and standard-mode retries (bounded, set in
`components.core.timeouts`), multipart transfers for large objects and a few parallel
transfers for folders. Local writes are atomic (temp name, then rename) so an interrupted stage
never leaves a half file that a re-run trusts. Failures raise `StorageError` naming the URI and
the cause in words.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

from components.core import timeouts
from components.core.errors import StorageError

log = logging.getLogger("segloop.storage")

MB = 1024 * 1024
MULTIPART_BYTES = 16 * MB  # larger objects go as multipart transfers, in parts of this size
FOLDER_WORKERS = 8
# What may not stand in a file name made from an id (a record id, a task name).
UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


# ---------------------------------------------------------------- URIs


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


SUPPORTED_LOCATIONS = "local paths, file:// and s3:// URIs"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def unsupported_scheme(uri: str | Path) -> str | None:
    """The scheme of a URI this module cannot read (`http`, `gs` ...), else None."""
    m = _SCHEME.match(str(uri))
    return m[1] if m and m[1].lower() not in ("s3", "file") else None


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: an S3 URI needs a bucket, like s3://my-bucket/path")
    return bucket, key


def local_path(uri: str | Path) -> Path:
    """A local URI (`file://...` or a plain path) as a Path."""
    text = str(uri)
    if is_s3(text):
        raise StorageError(f"{text} is an S3 URI, not a local path")
    if text.startswith("file://"):
        text = text[len("file://") :]
    return Path(text)


def join(base: str | Path, *parts: str) -> str:
    """Join path parts onto a local path or an S3 URI with '/'."""
    out = str(base)
    for part in parts:
        part = str(part).strip("/")
        if not part:
            continue
        out = out.rstrip("/") + "/" + part if out else part
    return out


def name(uri: str) -> str:
    """The last path component of a URI."""
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


# ---------------------------------------------------------------- S3 client and errors


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL") or None


# boto3 is imported where S3 is used, not at the top: it is a tenth of a second of start-up
# that local-only commands (and `segloop --help`) need not pay.


@lru_cache(maxsize=1)
def transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES, max_concurrency=8
    )


@lru_cache(maxsize=8)
def _client(endpoint: str | None, credentials_key: str, region: str | None, limits: tuple):
    import boto3
    from botocore.config import Config

    # `credentials_key` only makes the cache notice changed credentials; boto3 reads the env.
    connect_s, read_s, max_attempts = limits
    config = Config(
        # total_max_attempts counts the first try; botocore's max_attempts counts retries only.
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_s,
        read_timeout=read_s,
        max_pool_connections=32,
        s3={"addressing_style": "path"} if endpoint else None,
    )
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=region or "us-east-1", config=config
    )
    client.meta.events.register("needs-retry.s3", _warn_failed_attempt)
    return client


def _warn_failed_attempt(attempts: int, caught_exception=None, response=None, **_: Any) -> None:
    """A warning per failed S3 attempt, so a slow failure is not minutes of silence (botocore
    retries quietly). Returns None: the retry decision stays botocore's."""
    status = (response or (None, {}))[1].get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if caught_exception is None and status < 500:
        return
    why = type(caught_exception).__name__ if caught_exception is not None else f"HTTP {status}"
    log.warning("S3 at %s: attempt %d failed (%s)", endpoint_url() or "AWS", attempts, why)


def s3_client():
    """A boto3 S3 client for the current environment (cached per endpoint and credentials)."""
    # Keyed on a digest of the whole credential set: a changed secret must not reuse an old client.
    creds = "\0".join(
        os.environ.get(k, "")
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    )
    return _client(
        endpoint_url(),
        hashlib.sha256(creds.encode()).hexdigest(),
        os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        s3_limits(),
    )


def s3_limits() -> tuple[float, float, int]:
    """(connect timeout s, read timeout s, attempts) of S3 requests (see components.core.timeouts)."""
    return (
        timeouts.seconds(timeouts.S3_CONNECT_TIMEOUT_S),
        timeouts.seconds(timeouts.S3_READ_TIMEOUT_S),
        timeouts.attempts(timeouts.S3_MAX_ATTEMPTS),
    )


def _explain(
    uri: str,
    exc: Exception,
    action: str,
    where: str | None = None,
    endpoint_var: str = "AWS_ENDPOINT_URL",
) -> StorageError:
    """Turn a boto3/botocore error into words that name the URI and what to do (`where`: the
    endpoint, default AWS_ENDPOINT_URL's; `endpoint_var`: the variable that sets it)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    where = where or endpoint_url() or "AWS S3"
    inner = exc.__cause__ or exc.__context__
    if isinstance(exc, Boto3Error) and isinstance(inner, ClientError | BotoCoreError):
        # boto3's managed transfers wrap the real cause (S3UploadFailedError etc.).
        exc = inner
    if isinstance(exc, NoCredentialsError):
        why = "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or run `segloop up` and `source .segloop/stack.env`)"
    elif isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
        connect_s, read_s, tries = s3_limits()
        waited = read_s if isinstance(exc, ReadTimeoutError) else connect_s
        why = (
            f"endpoint {where} did not answer within {waited:g} s ({tries} attempts): is the "
            f"object store running and healthy, and {endpoint_var} right? (a slow one: raise "
            "SEGLOOP_S3_READ_TIMEOUT_S / SEGLOOP_S3_CONNECT_TIMEOUT_S)"
        )
    elif isinstance(exc, EndpointConnectionError):
        why = f"endpoint {where} is unreachable: is the object store running (`segloop up`) and AWS_ENDPOINT_URL right?"
    elif isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            why = f"no such bucket at {where}: create it or fix the URI"
        elif code in ("NoSuchKey", "404", "NotFound"):
            why = "no such object"
        elif code in (
            "AccessDenied",
            "403",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "Forbidden",
        ):
            why = f"access denied by {where} ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        else:
            why = f"{code}: {exc.response.get('Error', {}).get('Message', exc)}"
    else:
        why = str(exc) or type(exc).__name__
    return StorageError(f"cannot {action} {uri}: {why}")


def library_s3_failure(exc: BaseException) -> StorageError | None:
    """An S3 error that MLflow's own boto3 client raised (its S3 artifact store) in words,
    naming the endpoint it failed on; None when `exc` did not come from boto3.

    botocore's errors carry the request URL (`endpoint_url`), boto3's transfer errors wrap one.
    """
    from urllib.parse import urlsplit

    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    if not isinstance(exc, BotoCoreError | ClientError | Boto3Error):
        return None
    inner = exc.__cause__ or exc.__context__
    url = str(getattr(exc, "kwargs", {}).get("endpoint_url") or "")
    url = url or str(getattr(inner, "kwargs", {}).get("endpoint_url") or "")
    parts = urlsplit(url)
    where = (
        f"{parts.scheme}://{parts.netloc}"
        if parts.netloc
        else os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    )
    return _explain(url or "an S3 object", exc, "reach", where, "MLFLOW_S3_ENDPOINT_URL")


@contextlib.contextmanager
def _s3_errors(uri: str, action: str) -> Iterator[None]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError, Boto3Error) as exc:
        raise _explain(uri, exc, action) from exc


@contextlib.contextmanager
def _local_errors(uri: str | Path, action: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError as exc:
        raise StorageError(f"cannot {action} {uri}: no such file or folder") from exc
    except PermissionError as exc:
        raise StorageError(f"cannot {action} {uri}: permission denied") from exc
    except IsADirectoryError as exc:
        raise StorageError(f"cannot {action} {uri}: it is a folder, not a file") from exc


# ---------------------------------------------------------------- atomic local writes


@contextlib.contextmanager
def atomic_path(path: str | Path, private: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds.

    The file gets the usual mode under the umask (0644 under umask 022), so other users, web
    servers and pods with another UID can read outputs. `private=True` creates it 0600 from the
    first byte, for files that hold secrets.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: it always creates 0600. O_EXCL with a random name is just as safe.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.part"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_private_text(path: str | Path, text: str) -> None:
    """Write a local file that holds secrets: mode 0600 from its first byte, atomically."""
    with atomic_path(path, private=True) as tmp:
        tmp.write_text(text)


# ---------------------------------------------------------------- bytes, text, json


def read_bytes(uri: str | Path) -> bytes:
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "read"):
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    with _local_errors(uri, "read"):
        return local_path(uri).read_bytes()


def write_bytes(uri: str | Path, data: bytes) -> None:
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "write"):
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    with _local_errors(uri, "write"), atomic_path(local_path(uri)) as tmp:
        tmp.write_bytes(data)


def read_text(uri: str | Path) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str | Path, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str | Path) -> Any:
    try:
        return json.loads(read_text(uri))
    except json.JSONDecodeError as exc:
        raise StorageError(f"{uri} is not valid JSON: {exc}") from exc


def write_json(uri: str | Path, data: Any) -> None:
    write_text(uri, json.dumps(data, indent=2, default=str) + "\n")


# ---------------------------------------------------------------- existence and listing


def exists(uri: str | Path) -> bool:
    uri = str(uri)
    if not is_s3(uri):
        return local_path(uri).exists()
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        if not key:
            s3_client().head_bucket(Bucket=bucket)
        else:
            s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _explain(uri, exc, "check") from exc
    except BotoCoreError as exc:
        raise _explain(uri, exc, "check") from exc


def list_files(prefix: str | Path) -> list[str]:
    """Every file under a folder or S3 prefix (recursive), as URIs, sorted. Paginates."""
    prefix = str(prefix)
    if not is_s3(prefix):
        root = local_path(prefix)
        if not root.exists():
            return []
        if root.is_file():
            return [str(root)]
        return sorted(str(p) for p in root.rglob("*") if p.is_file())
    bucket, key = split_s3(prefix)
    if key and not key.endswith("/"):
        key += "/"
    out: list[str] = []
    with _s3_errors(prefix, "list"):
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        for page in pages:
            out.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
    return sorted(u for u in out if not u.endswith("/"))


def is_dir(uri: str | Path) -> bool:
    """A local folder, or an S3 prefix with at least one object under it."""
    uri = str(uri)
    if not is_s3(uri):
        return local_path(uri).is_dir()
    return bool(list_files(uri))


# ---------------------------------------------------------------- transfers


def upload_file(local: str | Path, uri: str) -> None:
    bucket, key = split_s3(uri)
    with _s3_errors(uri, "upload to"), _local_errors(local, "upload"):
        path = Path(local)
        if path.stat().st_size < MULTIPART_BYTES:
            # One PUT: a managed transfer would start its own thread pool for every small file.
            with path.open("rb") as body:
                s3_client().put_object(Bucket=bucket, Key=key, Body=body)
        else:
            s3_client().upload_file(str(path), bucket, key, Config=transfer_config())


def remove(uris: list[str]) -> None:
    """Delete these files or objects; one that is already gone is fine (S3: DeleteObjects,
    a thousand keys a request)."""
    by_bucket: dict[str, list[str]] = {}
    for uri in uris:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            by_bucket.setdefault(bucket, []).append(key)
        else:
            with _local_errors(uri, "remove"):
                local_path(uri).unlink(missing_ok=True)
    for bucket, keys in by_bucket.items():
        for start in range(0, len(keys), 1000):
            objects = [{"Key": key} for key in keys[start : start + 1000]]
            with _s3_errors(f"s3://{bucket}/{objects[0]['Key']}", "remove"):
                done = s3_client().delete_objects(
                    Bucket=bucket, Delete={"Objects": objects, "Quiet": True}
                )
            if done.get("Errors"):
                first = done["Errors"][0]
                raise StorageError(
                    f"cannot remove s3://{bucket}/{first.get('Key')}: {first.get('Code')} "
                    f"({len(done['Errors'])} objects not removed)"
                )


def download_file(uri: str, local: str | Path) -> Path:
    """Download an object to a local path atomically."""
    bucket, key = split_s3(uri)
    with _s3_errors(uri, "download"), atomic_path(local) as tmp:
        s3_client().download_file(bucket, key, str(tmp), Config=transfer_config())
    return Path(local)


def copy(src: str | Path, dst: str | Path) -> None:
    """Copy one file between any two locations (local or S3)."""
    src, dst = str(src), str(dst)
    if is_s3(src) and is_s3(dst):
        sb, sk = split_s3(src)
        db, dk = split_s3(dst)
        with _s3_errors(src, f"copy to {dst}"):
            s3_client().copy({"Bucket": sb, "Key": sk}, db, dk, Config=transfer_config())
    elif is_s3(src):
        download_file(src, local_path(dst))
    elif is_s3(dst):
        upload_file(local_path(src), dst)
    else:
        # The destination named when it cannot be written (a read-only --out), the source
        # when it cannot be read.
        with _local_errors(dst, "write"), atomic_path(local_path(dst)) as tmp:
            with _local_errors(src, "copy"):
                shutil.copyfile(local_path(src), tmp)


def _parallel(jobs: list[tuple[str, str]], workers: int) -> None:
    if not jobs:
        return
    # Not `with ThreadPoolExecutor`: its exit waits for running copies, and after a failure,
    # Ctrl-C or SIGTERM a copy hung on a silent server would hold the clean-up until its timeout.
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs))))
    try:
        for future in [pool.submit(copy, s, d) for s, d in jobs]:
            future.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # start no more copies
        raise
    pool.shutdown()


def upload_dir(local: str | Path, uri: str, workers: int = FOLDER_WORKERS) -> int:
    """Copy a local folder tree to a folder or prefix; returns the number of files."""
    root = local_path(local)
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".part")]
    _parallel([(str(p), join(uri, p.relative_to(root).as_posix())) for p in files], workers)
    return len(files)


def download_dir(uri: str, local: str | Path, workers: int = FOLDER_WORKERS) -> int:
    """Copy every file under a folder or prefix into a local folder; returns the count."""
    root = Path(local)
    base = str(uri).rstrip("/") + "/"
    if not is_s3(uri):
        base = str(local_path(uri)).rstrip("/") + "/"
    files = list_files(uri)
    _parallel([(f, str(root / f[len(base) :])) for f in files], workers)
    return len(files)


# ---------------------------------------------------------------- local views of any URI


@contextlib.contextmanager
def local_input(uri: str | Path) -> Iterator[Path]:
    """A local path for reading `uri`: the path itself, or a temporary downloaded copy."""
    uri = str(uri)
    if not is_s3(uri):
        path = local_path(uri)
        if not path.exists():
            raise StorageError(f"{uri}: no such file or folder")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="segloop-in-") as tmp:
        if exists(uri):
            yield download_file(uri, Path(tmp) / name(uri))
        elif download_dir(uri, tmp):
            yield Path(tmp)
        else:
            raise StorageError(f"{uri}: no such object or prefix")


@contextlib.contextmanager
def output_dir(uri: str | Path, resume: bool = True) -> Iterator[Path]:
    """A local folder to write a stage's outputs into, synced to `uri` when it is on S3.

    With `resume`, what is already at an S3 `uri` is downloaded first so that a re-run can skip
    finished work. The upload also happens when the block fails, so finished items are kept.
    """
    uri = str(uri)
    if not is_s3(uri):
        path = local_path(uri)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="segloop-out-") as tmp:
        if resume:
            download_dir(uri, tmp)
        try:
            yield Path(tmp)
        finally:
            upload_dir(tmp, uri)
