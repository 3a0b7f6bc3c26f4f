"""A cvat-sdk client with segloop's credentials, bounded retries and errors in words.

Credentials come from the environment only: `CVAT_HOST` (or `cvat.host`), and
`CVAT_ACCESS_TOKEN` or `CVAT_USERNAME` + `CVAT_PASSWORD`. They are never logged or written.

Retries live in one place: the SDK's own urllib3 retries are switched off and `retrying()`
repeats a whole, idempotent unit of work (a login, an export, "make sure this task exists and
is complete") on connection errors and 5xx answers, with exponential backoff, then fails with
a message naming the host. A 413 answer becomes `RequestTooLarge` so callers can send smaller
pieces. Every request has a timeout, so a hung server cannot hang a pipeline.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from cvat_sdk.api_client import exceptions as api_exceptions
from cvat_sdk.api_client import rest
from cvat_sdk.core.client import AccessTokenCredentials, Client, Config
from cvat_sdk.core.exceptions import BackgroundRequestException, CvatSdkException
from cvat_sdk.core.helpers import make_request_headers
from cvat_sdk.core.uploading import DataUploader
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from components.core.config import CvatSettings
from components.core.errors import SegloopError
from components.core.redact import redact

log = logging.getLogger("segloop.cvat")
T = TypeVar("T")
MAX_BACKOFF_S = 30.0


class TransientCvatError(Exception):
    """The server could not be reached or answered 5xx (`status`): worth another try."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RequestTooLarge(SegloopError):
    """The server refused a request body as too large (HTTP 413)."""


class _TimedRestClient(rest.RESTClientObject):
    """The SDK's REST client with a default timeout on every request."""

    def __init__(self, configuration, timeout: urllib3.Timeout):
        super().__init__(configuration)
        self._default_timeout = timeout

    def request(self, method, url, *args, _request_timeout=None, **kwargs):
        timeout = _request_timeout or (
            self._default_timeout.connect_timeout,
            self._default_timeout.read_timeout,
        )
        return super().request(method, url, *args, _request_timeout=timeout, **kwargs)


def _detail(exc: api_exceptions.ApiException) -> str:
    body = exc.body if isinstance(exc.body, str) else (exc.body or b"").decode("utf-8", "replace")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, TypeError):
        return short_text(body) or (exc.reason or "").strip()
    if isinstance(data, dict) and set(data) == {"detail"}:
        return str(data["detail"])[:300]
    return json.dumps(data)[:300]


def short_text(body: str, limit: int = 200) -> str:
    """A text or HTML answer as one short line: an HTML page's title (else first heading, else
    its text without tags), whitespace collapsed. CVAT's error pages are whole HTML documents."""
    if re.search(r"<[A-Za-z!/]", body):
        found = re.search(r"<(title|h1)\b[^>]*>(.*?)</\1\s*>", body, re.I | re.S)
        body = found.group(2) if found else body
        body = re.sub(r"<[^>]*>", " ", body)
    return " ".join(html.unescape(body).split())[:limit]


def explain(exc: BaseException, host: str, what: str) -> BaseException:
    """The exception to raise for an SDK/urllib3 failure while doing `what`."""
    if isinstance(exc, SegloopError | TransientCvatError):
        return exc
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return TransientCvatError(
            f"no answer within the timeout, {type(exc).__name__}: {exc}; a slow server: raise "
            "cvat.request_timeout_s"
        )
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError):
        return TransientCvatError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, BackgroundRequestException):
        return SegloopError(f"CVAT at {host} could not {what}: {exc}")
    if isinstance(exc, api_exceptions.ApiException):
        status, detail = exc.status or 0, _detail(exc)
        if status >= 500:
            return TransientCvatError(f"HTTP {status}: {detail}", status=status)
        if status == 413:
            return RequestTooLarge(
                f"CVAT at {host} refused a request as too large while trying to {what}"
            )
        if status == 401:
            return SegloopError(
                f"CVAT at {host} rejected the credentials while trying to {what} (HTTP 401: {detail}); "
                "check CVAT_USERNAME / CVAT_PASSWORD or CVAT_ACCESS_TOKEN"
            )
        if status == 403:
            return SegloopError(
                f"CVAT at {host} does not allow this user to {what} (HTTP 403: {detail}); "
                "check the organization (cvat.organization) and the user's rights"
            )
        if status == 404:
            return SegloopError(
                f"CVAT at {host}: not found while trying to {what} (HTTP 404: {detail})"
            )
        return SegloopError(f"CVAT at {host} refused to {what} (HTTP {status}: {detail})")
    if isinstance(exc, CvatSdkException | api_exceptions.OpenApiException):
        return SegloopError(f"CVAT at {host}: unexpected answer while trying to {what}: {exc}")
    return exc


@dataclass
class CvatConnection:
    client: Client
    host: str
    settings: CvatSettings
    user: str

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One attempt; failures are translated (transient ones raise TransientCvatError)."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            translated = explain(exc, self.host, what)
            if translated is exc:
                raise
            raise translated from exc

    def retrying(self, what: str, fn: Callable[[], T]) -> T:
        """Run an idempotent unit of work, again after transient failures, with backoff."""
        return retrying(self.host, self.settings, what, lambda: self.call(what, fn))

    def wait(self, rq_id: str, what: str) -> Any:
        request, _ = self.call(
            what,
            self.client.wait_for_completion,
            rq_id,
            status_check_period=self.settings.status_check_period_s,
        )
        return request

    def patch_annotations(self, task_id: int, action: str, body: dict[str, Any]) -> None:
        """PATCH a task's annotations with a plain JSON body.

        Why not the generated API: its model classes type-check every coordinate of every
        shape, which costs more than the upload itself for mask shapes.
        """
        api_client = self.client.api_client
        url = self.client.api_map.make_endpoint_url(
            api_client.tasks_api.partial_update_annotations_endpoint.path,
            kwsub={"id": task_id},
            query_params={"action": action},
        )
        headers = {**make_request_headers(api_client), "Content-Type": "application/json"}
        api_client.rest_client.PATCH(url, headers=headers, body=body)

    def upload_images(
        self,
        task_id: int,
        paths: list[Path],
        params: dict[str, Any],
        max_request_bytes: int,
        pbar=None,
    ) -> None:
        """`Task.upload_data` for local files with a given request size limit, then wait."""
        url = self.client.api_map.make_endpoint_url(
            self.client.api_client.tasks_api.create_data_endpoint.path, kwsub={"id": task_id}
        )
        uploader = DataUploader(self.client, max_request_size=max_request_bytes)
        response = self.call(
            f"upload images to task {task_id}",
            uploader.upload_files,
            url,
            paths,
            pbar=pbar,
            **params,
        )
        rq_id = json.loads(response.data).get("rq_id")
        if not rq_id:
            raise SegloopError(
                f"CVAT at {self.host} did not start processing the images of task {task_id}"
            )
        self.wait(rq_id, f"process the images of task {task_id}")


def retrying(host: str, settings: CvatSettings, what: str, fn: Callable[[], T]) -> T:
    """`fn` again after transient failures: `settings.retries` retries, backoff doubling from
    `settings.backoff_s` (at most MAX_BACKOFF_S), then a SegloopError naming the host."""
    # tenacity, not urllib3's Retry: a retry repeats a whole unit of work, not one request.
    attempts = settings.retries + 1

    def warn(state: RetryCallState) -> None:
        log.warning(
            "CVAT at %s: %s failed (%s); retry %d/%d in %.1f s",
            host,
            what,
            state.outcome.exception() if state.outcome else None,
            state.attempt_number,
            attempts - 1,
            state.next_action.sleep if state.next_action else 0.0,
        )

    try:
        return Retrying(
            retry=retry_if_exception_type(TransientCvatError),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=settings.backoff_s, max=MAX_BACKOFF_S),
            before_sleep=warn,
            reraise=True,
        )(fn)
    except TransientCvatError as exc:
        if exc.status:  # it answered: up, but failing
            raise SegloopError(
                f"CVAT at {host} failed to {what}: {exc} ({attempts} attempts); the server is "
                "up but failing: see the CVAT server's logs, then run again"
            ) from None
        raise SegloopError(
            f"CVAT at {host} is unreachable or failing: could not {what} after {attempts} "
            f"attempts (last: {exc}); check that the server is up and CVAT_HOST is right"
        ) from None


def cvat_host(settings: CvatSettings) -> str:
    host = settings.host or os.environ.get("CVAT_HOST")
    if not host:
        raise SegloopError(
            "no CVAT server given: set CVAT_HOST (or cvat.host), e.g. http://localhost:8080"
        )
    return host.rstrip("/")


@contextlib.contextmanager
def connect(settings: CvatSettings) -> Iterator[CvatConnection]:
    """A logged-in client for `settings` and the environment's credentials."""
    host = cvat_host(settings)
    token = os.environ.get("CVAT_ACCESS_TOKEN")
    username, password = os.environ.get("CVAT_USERNAME"), os.environ.get("CVAT_PASSWORD")
    if not token and not (username and password):
        raise SegloopError(
            "no CVAT credentials: set CVAT_USERNAME and CVAT_PASSWORD, or CVAT_ACCESS_TOKEN"
        )
    try:
        client = Client(
            host,
            config=Config(
                status_check_period=settings.status_check_period_s, verify_ssl=settings.verify_ssl
            ),
            check_server_version=False,
        )
    except CvatSdkException as exc:
        raise SegloopError(f"CVAT_HOST {host!r} is not a usable server address: {exc}") from exc
    configuration = client.api_client.configuration
    configuration.retries = False  # retries are ours (see `retrying`), not urllib3's
    client.api_client.rest_client = _TimedRestClient(
        configuration,
        urllib3.Timeout(
            connect=min(30.0, settings.request_timeout_s), read=settings.request_timeout_s
        ),
    )
    # The host as shown and written (messages, tasks.json, provenance): a password in CVAT_HOST
    # masked. The client keeps the address it was made with.
    conn = CvatConnection(client, redact(host), settings, user=username or "<token>")
    try:
        conn.retrying("reach the server", client.get_server_version)
        if token:
            client.login(AccessTokenCredentials(token))
        else:
            conn.retrying("log in", lambda: _login(conn, username, password))
        user = conn.retrying("check the credentials", client.users.retrieve_current_user)
        conn.user = user.username
        if settings.organization:
            client.organization_slug = settings.organization
            found = conn.retrying(
                "look up the organization",
                lambda: (
                    client.api_client.organizations_api.list(slug=settings.organization)[0].results
                ),
            )
            if not found:
                raise SegloopError(
                    f"CVAT at {host} has no organization {settings.organization!r} that user {conn.user!r} "
                    "belongs to; fix cvat.organization"
                )
        log.info("CVAT at %s: logged in as %s", host, conn.user)
        yield conn
    finally:
        with contextlib.suppress(Exception):
            client.close()


def _login(conn: CvatConnection, username: str, password: str) -> None:
    try:
        conn.client.login((username, password))
    except api_exceptions.ApiException as exc:
        if exc.status in (400, 401, 403):
            raise SegloopError(
                f"CVAT at {conn.host} rejected the login of user {username!r} (HTTP {exc.status}: "
                f"{_detail(exc)}); check CVAT_USERNAME and CVAT_PASSWORD"
            ) from None
        raise
