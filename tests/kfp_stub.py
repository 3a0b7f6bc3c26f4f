"""A small HTTP stub of the Kubeflow Pipelines v2beta1 REST endpoints that `segloop submit` and
`segloop runs` call (through the real `kfp.Client` / `kfp_server_api`).

It exists because no KFP API server can run here (it needs Kubernetes, Argo and MySQL). It keeps
pipelines, versions, experiments and runs in memory, answers with the v2beta1 JSON shapes, and
records every request (method, path, query, headers, JSON body or uploaded file) so tests can
assert what the client sent. It is not a KFP emulator: runs go PENDING -> RUNNING -> SUCCEEDED
(or the state a test sets) on successive reads, nothing executes.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

PREFIX = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: Any = None  # parsed JSON, or {"field": bytes} for multipart uploads


@dataclass
class KfpStub:
    host: str = ""
    requests: list[Request] = field(default_factory=list)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, list[dict]] = field(default_factory=dict)
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    final_state: str = "SUCCEEDED"
    multi_user: bool = False
    tag_name: str | None = "2.15.0"  # what healthz reports as the backend's release
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def calls(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == PREFIX + path]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _filter_name(query: dict[str, str]) -> str | None:
    """The display_name an EQUALS filter asks for (the only filter the client sends)."""
    if "filter" not in query:
        return None
    for pred in json.loads(query["filter"]).get("predicates", []):
        if pred.get("key") in ("display_name", "name"):
            return pred.get("string_value") or pred.get("stringValue")
    return None


def _handler(stub: KfpStub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            ctype = self.headers.get("Content-Type", "")
            if ctype.startswith("multipart/form-data"):
                msg = BytesParser(policy=HTTP).parsebytes(
                    f"Content-Type: {ctype}\r\n\r\n".encode() + raw
                )
                return {
                    part.get_param("name", header="content-disposition"): part.get_payload(
                        decode=True
                    )
                    for part in msg.iter_parts()
                }
            return json.loads(raw) if raw else None

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            body = self._body() if method in ("POST", "PATCH") else None
            stub.requests.append(
                Request(
                    method, url.path, query, {k.lower(): v for k, v in self.headers.items()}, body
                )
            )
            if not url.path.startswith(PREFIX):
                return self._send(404, {"error": "not found"})
            status, payload = route(stub, method, url.path[len(PREFIX) :], query, body)
            self._send(status, payload)

        def do_GET(self):  # noqa: N802 - http.server naming
            self._handle("GET")

        def do_POST(self):  # noqa: N802
            self._handle("POST")

    return Handler


def route(stub: KfpStub, method: str, path: str, query: dict, body: Any) -> tuple[int, Any]:
    parts = [p for p in path.split("/") if p]
    if parts == ["healthz"]:
        # As the API server writes it (backend/src/apiserver/main.go): tag_name from TAG_NAME.
        found = {"commit_sha": "stub", "tag_name": stub.tag_name, "multi_user": stub.multi_user}
        return 200, {k: v for k, v in found.items() if v is not None}

    if parts == ["pipelines"] and method == "GET":
        name = _filter_name(query)
        found = [p for p in stub.pipelines.values() if name in (None, p["display_name"])]
        return 200, {"pipelines": found, "total_size": len(found)} if found else {}
    if parts == ["pipelines", "upload"] and method == "POST":
        pid = stub.new_id("pipeline")
        pipeline = {
            "pipeline_id": pid,
            "display_name": query.get("name") or query.get("display_name"),
            "description": query.get("description", ""),
            "namespace": query.get("namespace", ""),
            "created_at": _now(),
        }
        stub.pipelines[pid] = pipeline
        # The server makes the first version from the same file.
        stub.versions[pid] = [_version(stub, pid, pipeline["display_name"], body)]
        return 200, pipeline
    if parts == ["pipelines", "upload_version"] and method == "POST":
        pid = query["pipelineid"]
        if pid not in stub.pipelines:
            return 404, {"error": f"pipeline {pid} not found"}
        version = _version(stub, pid, query.get("name"), body)
        stub.versions[pid].insert(0, version)  # newest first
        return 200, _public(version)
    if len(parts) == 3 and parts[0] == "pipelines" and parts[2] == "versions":
        versions = stub.versions.get(parts[1], [])
        size = int(query.get("page_size", 10) or 10)
        shown = [_public(v) for v in versions[:size]]
        return 200, {"pipeline_versions": shown, "total_size": len(versions)}

    if parts == ["experiments"] and method == "GET":
        name = _filter_name(query)
        found = [e for e in stub.experiments.values() if name in (None, e["display_name"])]
        return 200, {"experiments": found, "total_size": len(found)} if found else {}
    if parts == ["experiments"] and method == "POST":
        eid = stub.new_id("experiment")
        stub.experiments[eid] = {**body, "experiment_id": eid, "created_at": _now()}
        return 200, stub.experiments[eid]

    if parts == ["runs"] and method == "POST":
        rid = stub.new_id("run")
        stub.runs[rid] = {
            **body,
            "run_id": rid,
            "state": "PENDING",
            "created_at": _now(),
            "_reads": 0,
        }
        return 200, _public(stub.runs[rid])
    if parts == ["runs"] and method == "GET":
        runs = [_public(r) for r in reversed(stub.runs.values())]
        if query.get("experiment_id"):
            runs = [r for r in runs if r.get("experiment_id") == query["experiment_id"]]
        size = int(query.get("page_size", 10) or 10)
        return 200, {"runs": runs[:size], "total_size": len(runs)} if runs else {}
    if len(parts) == 2 and parts[0] == "runs" and method == "GET":
        run = stub.runs.get(parts[1])
        if run is None:
            return 404, {"error": f"run {parts[1]} not found", "code": 5}
        run["_reads"] += 1
        run["state"] = "RUNNING" if run["_reads"] == 1 else stub.final_state
        if run["state"] == stub.final_state:
            run["finished_at"] = _now()
        return 200, _public(run)
    return 404, {"error": f"the stub does not implement {method} {path}"}


def _version(stub: KfpStub, pid: str, name: str | None, body: dict) -> dict:
    spec = body["uploadfile"].decode()
    return {
        "pipeline_id": pid,
        "pipeline_version_id": stub.new_id("version"),
        "display_name": name,
        "created_at": _now(),
        "_package": spec,
    }


def _public(run: dict) -> dict:
    return {k: v for k, v in run.items() if not k.startswith("_")}


class StubServer:
    """The stub on 127.0.0.1 (free port), served from a thread; `with StubServer() as stub:`."""

    def __init__(self):
        self.stub = KfpStub()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.stub))
        self.stub.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> KfpStub:
        self.thread.start()
        return self.stub

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@contextmanager
def isolated_stub(home: Path, monkeypatch) -> Iterator[KfpStub]:
    """The stub served, with the user's KFP setup kept out of the test: kfp.Client reads
    ~/.config/kfp/context.json (HOME is `home`) and the CLI reads $KF_PIPELINES_ENDPOINT and
    $KFP_TOKEN (unset)."""
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    with StubServer() as stub:
        yield stub
