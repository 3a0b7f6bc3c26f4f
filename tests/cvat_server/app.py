"""A CVAT-protocol server for tests: the REST calls cvat-sdk makes for segloop's CVAT flow.

It is a small WSGI app (werkzeug routing and request parsing) over `Store`. It speaks CVAT's
wire format so that the real `cvat-sdk` client drives it unchanged: server about, login
(session cookies + CSRF, API key as `Authorization: Token`, personal access tokens as
`Authorization: Bearer`, basic auth), organizations (`X-Organization` header or `org`/`org_id`
parameters), projects, labels, tasks (list filters incl. JSON logic, paging), the data upload
protocol the SDK uses for local files (Upload-Start / multipart Upload-Multiple / TUS for big
files / Upload-Finish, honouring `sorting_method` and `upload_file_order`), background requests
(`/api/requests/<id>`), jobs with stage and state, annotations GET/PUT/PATCH/DELETE for tasks and
jobs, and dataset exports ("Segmentation mask 1.1", "COCO 1.0").

Fault injection for the failure tests (`faults`, set at start or with POST /_test/faults):
`max_body_bytes` (413 above it), `fail` (answer N matching requests with a 5xx, with a JSON
detail or the rule's `html` page), `die` (exit
the process on the N-th matching request, before or after handling it), `zip_slip` (exports
carry an entry that climbs out of the extraction folder). GET /_test/log lists requests seen.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import re
import secrets
import shutil
import threading
import uuid
from functools import cmp_to_key
from pathlib import Path
from typing import Any

from PIL import Image
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from . import exports
from .store import Store, now_iso

SERVER_VERSION = "2.80.0"
DEFAULT_PAGE_SIZE = 10
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
SHAPE_TYPES = (
    "rectangle",
    "polygon",
    "polyline",
    "points",
    "ellipse",
    "cuboid",
    "mask",
    "skeleton",
)
JOB_STATUS = {"annotation": "annotation", "validation": "validation", "acceptance": "completed"}
EXIF_ORIENTATION = 0x0112


class ApiError(Exception):
    def __init__(self, status: int, detail: Any):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height as CVAT shows the frame: EXIF rotations by 90 degrees swap them."""
    with Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8):
            width, height = height, width
    return width, height


# ---------------------------------------------------------------- JSON logic filters


def _json_logic(rule: Any, row: dict[str, Any]) -> Any:
    if not isinstance(rule, dict):
        return rule
    ((op, args),) = rule.items()
    if op == "var":
        return row.get(args)
    if not isinstance(args, list):
        args = [args]
    if op == "and":
        return all(_json_logic(a, row) for a in args)
    if op == "or":
        return any(_json_logic(a, row) for a in args)
    if op == "!":
        return not _json_logic(args[0], row)
    a, b = (_json_logic(x, row) for x in args[:2])
    ops = {
        "==": lambda: a == b,
        "!=": lambda: a != b,
        "in": lambda: a in b if b is not None else False,
        "<": lambda: a is not None and a < b,
        "<=": lambda: a is not None and a <= b,
        ">": lambda: a is not None and a > b,
        ">=": lambda: a is not None and a >= b,
    }
    if op not in ops:
        raise ApiError(400, {"filter": [f"unsupported operator {op!r}"]})
    return ops[op]()


class CvatApp:
    """The WSGI application. One instance per server process."""

    def __init__(
        self,
        store: Store,
        username: str,
        password: str,
        access_token: str | None = None,
        org_slug: str | None = None,
        faults: dict[str, Any] | None = None,
        process_delay_s: float = 0.05,
    ):
        self.store = store
        self.faults: dict[str, Any] = dict(faults or {})
        self.fault_counts: dict[str, int] = {}
        self.request_log: list[dict[str, Any]] = []
        self.process_delay_s = process_delay_s
        self.uploads: dict[int, dict[str, Any]] = {}  # task id -> files received so far
        self._bootstrap(username, password, access_token, org_slug)
        self.url_map = Map(
            [
                Rule("/api/server/about", endpoint="about", methods=["GET"]),
                Rule("/api/auth/login", endpoint="login", methods=["POST"]),
                Rule("/api/auth/logout", endpoint="logout", methods=["POST"]),
                Rule("/api/users/self", endpoint="users_self", methods=["GET"]),
                Rule("/api/organizations", endpoint="orgs", methods=["GET"]),
                Rule("/api/organizations/<int:id>", endpoint="org", methods=["GET"]),
                Rule("/api/projects", endpoint="projects", methods=["GET", "POST"]),
                Rule(
                    "/api/projects/<int:id>", endpoint="project", methods=["GET", "PATCH", "DELETE"]
                ),
                Rule("/api/labels", endpoint="labels", methods=["GET"]),
                Rule("/api/labels/<int:id>", endpoint="label", methods=["GET"]),
                Rule("/api/tasks", endpoint="tasks", methods=["GET", "POST"]),
                Rule("/api/tasks/<int:id>", endpoint="task", methods=["GET", "PATCH", "DELETE"]),
                Rule("/api/tasks/<int:id>/data", endpoint="task_data", methods=["GET", "POST"]),
                Rule("/api/tasks/<int:id>/data/meta", endpoint="task_meta", methods=["GET"]),
                Rule(
                    "/api/tasks/<int:id>/data/<file_id>", endpoint="tus", methods=["HEAD", "PATCH"]
                ),
                Rule(
                    "/api/tasks/<int:id>/annotations",
                    endpoint="task_annotations",
                    methods=["GET", "PUT", "PATCH", "DELETE"],
                ),
                Rule(
                    "/api/tasks/<int:id>/dataset/export", endpoint="task_export", methods=["POST"]
                ),
                Rule("/api/jobs", endpoint="jobs", methods=["GET"]),
                Rule("/api/jobs/<int:id>", endpoint="job", methods=["GET", "PATCH"]),
                Rule("/api/jobs/<int:id>/data/meta", endpoint="job_meta", methods=["GET"]),
                Rule(
                    "/api/jobs/<int:id>/annotations",
                    endpoint="job_annotations",
                    methods=["GET", "PUT", "PATCH", "DELETE"],
                ),
                Rule("/api/requests/<rq_id>", endpoint="request", methods=["GET"]),
                Rule(
                    "/api/requests/<rq_id>/download", endpoint="request_download", methods=["GET"]
                ),
                Rule("/_test/faults", endpoint="test_faults", methods=["GET", "POST"]),
                Rule("/_test/log", endpoint="test_log", methods=["GET", "DELETE"]),
            ]
        )

    # ------------------------------------------------------------ setup

    def _bootstrap(
        self, username: str, password: str, access_token: str | None, org_slug: str | None
    ) -> None:
        users = self.store.table("users")
        if not any(u["username"] == username for u in users.values()):
            user = self.store.insert(
                "users",
                {
                    "username": username,
                    "password": password,
                    "key": secrets.token_hex(20),
                    "date_joined": now_iso(),
                },
            )
            self.store.tokens[user["key"]] = user["id"]
            if access_token:
                self.store.tokens[access_token] = user["id"]
            if org_slug:
                self.store.insert(
                    "orgs",
                    {
                        "slug": org_slug,
                        "name": org_slug,
                        "owner": user["id"],
                        "created_date": now_iso(),
                    },
                    kind="org",
                )
            self.store.save()
        # Background requests cut short by a previous crash never finish.
        for rq in self.store.table("requests").values():
            if rq["status"] in ("queued", "started"):
                rq.update(status="failed", message="the server restarted while this request ran")
        self.store.save()

    # ------------------------------------------------------------ WSGI

    def __call__(self, environ, start_response):
        request = Request(environ)
        request.max_form_parts = 100_000
        response = self.dispatch(request)
        return response(environ, start_response)

    def _matches(self, rule: dict[str, Any], request: Request) -> bool:
        method = rule.get("method")
        return (not method or method == request.method) and re.search(
            rule.get("path", ""), request.path
        ) is not None

    def dispatch(self, request: Request) -> Response:
        length = request.content_length or 0
        entry = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string.decode(),
            "bytes": length,
        }
        self.request_log.append(entry)
        die = self.faults.get("die")
        dying = False
        if die and self._matches(die, request):
            seen = self.fault_counts["die"] = self.fault_counts.get("die", 0) + 1
            if seen >= die.get("after", 1):
                if die.get("when", "before") == "before":
                    os._exit(3)
                dying = True
        limit = self.faults.get("max_body_bytes")
        if limit and length > limit:
            self._drain(request, length)
            entry["status"] = 413
            return _json(
                {"detail": f"Request body of {length} bytes exceeds {limit}"},
                413,
                {"Connection": "close"},
            )
        for i, rule in enumerate(self.faults.get("fail", [])):
            key = f"fail{i}"
            if self._matches(rule, request) and self.fault_counts.get(key, 0) < rule.get(
                "times", 1
            ):
                self.fault_counts[key] = self.fault_counts.get(key, 0) + 1
                self._drain(request, length)
                entry["status"] = rule.get("status", 500)
                if rule.get("html"):  # an error page, as CVAT's Django or its proxy sends one
                    return Response(rule["html"], status=entry["status"], content_type="text/html")
                return _json({"detail": "injected server error"}, entry["status"])
        response = self._handle(request)
        entry["status"] = response.status_code
        if dying:
            os._exit(3)  # the change is stored, the client never hears back
        return response

    @staticmethod
    def _drain(request: Request, length: int) -> None:
        stream = request.environ["wsgi.input"]
        while length > 0:
            chunk = stream.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)

    def _handle(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, args = adapter.match(path, method=request.method)
            handler = getattr(self, f"on_{endpoint}")
            if endpoint not in ("about", "login", "test_faults", "test_log"):
                request.user = self._authenticate(request)
                request.org = self._org_context(request)
            return handler(request, **args)
        except ApiError as exc:
            detail = exc.detail if isinstance(exc.detail, dict) else {"detail": exc.detail}
            return _json(detail, exc.status)
        except HTTPException as exc:
            return _json({"detail": exc.description}, exc.code or 500)

    # ------------------------------------------------------------ auth and context

    def _authenticate(self, request: Request) -> dict[str, Any]:
        users = self.store.table("users")
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme in ("Token", "Bearer"):
            user_id = self.store.tokens.get(value)
            if user_id is None:
                raise ApiError(401, "Invalid token.")
            return users[user_id]
        if scheme == "Basic":
            name, _, password = base64.b64decode(value).decode().partition(":")
            for user in users.values():
                if user["username"] == name and user["password"] == password:
                    return user
            raise ApiError(401, "Invalid username/password.")
        session = self.store.sessions.get(request.cookies.get("sessionid", ""))
        if session:
            if request.method in UNSAFE and request.headers.get("X-CSRFToken") != session["csrf"]:
                raise ApiError(403, "CSRF Failed: CSRF token missing or incorrect.")
            return users[session["user"]]
        raise ApiError(401, "Authentication credentials were not provided.")

    def _org_context(self, request: Request) -> Any:
        """None: no context (everything visible); "": personal workspace; int: an organization."""
        slug = request.headers.get("X-Organization")
        if slug is None:
            slug = request.args.get("org")
        org_id = request.args.get("org_id")
        if org_id:
            if int(org_id) not in self.store.table("orgs"):
                raise ApiError(404, f"organization {org_id} not found")
            return int(org_id)
        if slug is None:
            return None
        if slug == "":
            return ""
        for org in self.store.table("orgs").values():
            if org["slug"] == slug:
                if org["owner"] != request.user["id"]:
                    raise ApiError(403, f"you are not a member of organization {slug!r}")
                return org["id"]
        raise ApiError(404, f"organization {slug!r} not found")

    @staticmethod
    def _org_of_new(request: Request) -> int | None:
        return request.org if isinstance(request.org, int) else None

    def _visible(self, request: Request, row: dict[str, Any]) -> bool:
        if row.get("owner") != request.user["id"]:
            return False
        if request.org is None:
            return True
        return row.get("organization") == (request.org or None)

    def _get(self, request: Request, table: str, obj_id: int) -> dict[str, Any]:
        row = self.store.table(table).get(obj_id)
        if row is None or not self._visible(request, row):
            raise ApiError(404, "Not found.")
        return row

    # ------------------------------------------------------------ serializers

    @staticmethod
    def _base(request: Request) -> str:
        return request.host_url.rstrip("/")

    def _user(self, request: Request, user_id: int | None) -> dict[str, Any] | None:
        if user_id is None:
            return None
        user = self.store.table("users")[user_id]
        return {
            "url": f"{self._base(request)}/api/users/{user_id}",
            "id": user_id,
            "username": user["username"],
            "first_name": "",
            "last_name": "",
        }

    def _task_labels(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        labels = self.store.table("labels").values()
        if task.get("project_id"):
            return sorted(
                (lab for lab in labels if lab["project_id"] == task["project_id"]),
                key=lambda x: x["id"],
            )
        return sorted(
            (lab for lab in labels if lab["task_id"] == task["id"]), key=lambda x: x["id"]
        )

    def _task_jobs(self, task_id: int) -> list[dict[str, Any]]:
        return sorted(
            (j for j in self.store.table("jobs").values() if j["task_id"] == task_id),
            key=lambda j: j["id"],
        )

    def _task_status(self, task: dict[str, Any]) -> str:
        statuses = [JOB_STATUS[j["stage"]] for j in self._task_jobs(task["id"])]
        if "annotation" in statuses or not statuses:
            return "annotation"
        if "validation" in statuses:
            return "validation"
        return "completed"

    def _label_json(self, lab: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": lab["id"],
            "name": lab["name"],
            "color": lab["color"],
            "attributes": [],
            "type": lab.get("type", "any"),
            "svg": "",
            "sublabels": [],
            "project_id": lab["project_id"],
            "task_id": lab["task_id"],
            "parent_id": None,
            "has_parent": False,
        }

    def _project_json(self, request: Request, project: dict[str, Any]) -> dict[str, Any]:
        base = self._base(request)
        tasks = [
            t for t in self.store.table("tasks").values() if t.get("project_id") == project["id"]
        ]
        return {
            "url": f"{base}/api/projects/{project['id']}",
            "id": project["id"],
            "name": project["name"],
            "labels": {"url": f"{base}/api/labels?project_id={project['id']}"},
            "tasks": {"count": len(tasks), "url": f"{base}/api/tasks?project_id={project['id']}"},
            "owner": self._user(request, project["owner"]),
            "assignee": None,
            "guide_id": None,
            "bug_tracker": "",
            "task_subsets": [],
            "created_date": project["created_date"],
            "updated_date": project["updated_date"],
            "status": "annotation",
            "dimension": "2d" if tasks else None,
            "organization": project["organization"],
            "organization_id": project["organization"],
            "target_storage": None,
            "source_storage": None,
            "assignee_updated_date": None,
        }

    def _task_json(self, request: Request, task: dict[str, Any]) -> dict[str, Any]:
        base = self._base(request)
        jobs = self._task_jobs(task["id"])
        project = self.store.table("projects").get(task.get("project_id"))
        return {
            "url": f"{base}/api/tasks/{task['id']}",
            "id": task["id"],
            "name": task["name"],
            "project_id": task.get("project_id"),
            "project_name": project["name"] if project else None,
            "mode": "annotation" if task["size"] else "",
            "owner": self._user(request, task["owner"]),
            "assignee": None,
            "bug_tracker": task.get("bug_tracker", ""),
            "created_date": task["created_date"],
            "updated_date": task["updated_date"],
            "overlap": 0 if task["size"] else None,
            "segment_size": task["segment_size"],
            "initial_replicas": 0,
            "status": self._task_status(task),
            "labels": {"url": f"{base}/api/labels?task_id={task['id']}"},
            "jobs": {
                "count": len(jobs),
                "completed": sum(1 for j in jobs if JOB_STATUS[j["stage"]] == "completed"),
                "validation": sum(1 for j in jobs if j["stage"] == "validation"),
                "url": f"{base}/api/jobs?task_id={task['id']}",
            },
            "data_chunk_size": 36 if task["size"] else None,
            "data_compressed_chunk_type": "imageset" if task["size"] else None,
            "data_original_chunk_type": "imageset" if task["size"] else None,
            "data_cloud_storage_id": None,
            "guide_id": None,
            "size": task["size"],
            "image_quality": task.get("image_quality", 70),
            "data": task.get("data"),
            "dimension": "2d",
            "subset": task.get("subset", ""),
            "media_type": "image",
            "organization": task["organization"],
            "organization_id": task["organization"],
            "target_storage": None,
            "source_storage": None,
            "assignee_updated_date": None,
            "validation_mode": None,
        }

    def _job_json(self, request: Request, job: dict[str, Any]) -> dict[str, Any]:
        base = self._base(request)
        task = self.store.table("tasks")[job["task_id"]]
        project = self.store.table("projects").get(task.get("project_id"))
        return {
            "url": f"{base}/api/jobs/{job['id']}",
            "id": job["id"],
            "task_id": task["id"],
            "task_name": task["name"],
            "project_id": task.get("project_id"),
            "project_name": project["name"] if project else None,
            "assignee": None,
            "guide_id": None,
            "dimension": "2d",
            "mode": "annotation",
            "media_type": "image",
            "bug_tracker": None,
            "status": JOB_STATUS[job["stage"]],
            "stage": job["stage"],
            "state": job["state"],
            "frame_count": job["stop_frame"] - job["start_frame"] + 1,
            "start_frame": job["start_frame"],
            "stop_frame": job["stop_frame"],
            "data_chunk_size": 36,
            "data_compressed_chunk_type": "imageset",
            "data_original_chunk_type": "imageset",
            "created_date": job["created_date"],
            "updated_date": job["updated_date"],
            "issues": {"url": f"{base}/api/issues?job_id={job['id']}", "count": 0},
            "labels": {"url": f"{base}/api/labels?job_id={job['id']}"},
            "type": "annotation",
            "organization": task["organization"],
            "target_storage": None,
            "source_storage": None,
            "assignee_updated_date": None,
            "parent_job_id": None,
            "consensus_replicas": 0,
        }

    def _request_json(self, request: Request, rq: dict[str, Any]) -> dict[str, Any]:
        result_url = None
        if rq["status"] == "finished" and rq["type"].startswith("export"):
            result_url = f"{self._base(request)}/api/requests/{rq['id']}/download"
        return {
            "id": rq["id"],
            "status": rq["status"],
            "message": rq.get("message", ""),
            "operation": {
                "type": rq["type"],
                "target": "task",
                "project_id": None,
                "task_id": rq["task_id"],
                "job_id": None,
                "format": rq.get("format"),
                "function_id": None,
            },
            "progress": 1.0 if rq["status"] == "finished" else 0.0,
            "created_date": rq["created_date"],
            "started_date": rq.get("started_date"),
            "finished_date": rq.get("finished_date"),
            "expiry_date": None,
            "owner": {
                "id": rq["owner"],
                "username": self.store.table("users")[rq["owner"]]["username"],
            },
            "result_url": result_url,
            "result_id": rq["task_id"]
            if rq["type"] == "create:task" and rq["status"] == "finished"
            else None,
        }

    # ------------------------------------------------------------ listing

    def _page(self, request: Request, rows: list[dict[str, Any]]) -> Response:
        sort = request.args.get("sort")
        if sort:
            keys = [k.strip() for k in sort.split(",")]

            def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
                for key in keys:
                    field, sign = (key[1:], -1) if key.startswith("-") else (key, 1)
                    va, vb = a.get(field), b.get(field)
                    if va != vb:
                        return sign * (-1 if (va is None or (vb is not None and va < vb)) else 1)
                return 0

            rows = sorted(rows, key=cmp_to_key(compare))
        size = max(1, int(request.args.get("page_size", DEFAULT_PAGE_SIZE)))
        page = max(1, int(request.args.get("page", 1)))
        start = (page - 1) * size
        args = request.args.to_dict()
        has_next = start + size < len(rows)
        next_url = None
        if has_next:
            args["page"] = str(page + 1)
            next_url = f"{self._base(request)}{request.path}?" + "&".join(
                f"{k}={v}" for k, v in args.items()
            )
        return _json(
            {
                "count": len(rows),
                "next": next_url,
                "previous": None,
                "results": rows[start : start + size],
            }
        )

    def _filter(
        self, request: Request, rows: list[dict[str, Any]], simple: tuple[str, ...]
    ) -> list[dict[str, Any]]:
        for field in simple:
            value = request.args.get(field)
            if value is not None:
                rows = [r for r in rows if str(r.get(field)) == value]
        search = request.args.get("search")
        if search:
            rows = [r for r in rows if search.lower() in str(r.get("name", "")).lower()]
        rule = request.args.get("filter")
        if rule:
            try:
                parsed = json.loads(rule)
            except json.JSONDecodeError as exc:
                raise ApiError(400, {"filter": [f"not JSON: {exc}"]}) from exc
            rows = [r for r in rows if _json_logic(parsed, r)]
        return rows

    # ------------------------------------------------------------ server, auth, users, orgs

    def on_about(self, request: Request) -> Response:
        return _json(
            {
                "name": "Computer Vision Annotation Tool",
                "description": "CVAT-protocol test server (segloop tests)",
                "version": SERVER_VERSION,
                "logo_url": "",
                "subtitle": "test server",
            }
        )

    def on_login(self, request: Request) -> Response:
        body = request.get_json(force=True, silent=True) or {}
        for user in self.store.table("users").values():
            if user["username"] == body.get("username") and user["password"] == body.get(
                "password"
            ):
                session, csrf = secrets.token_hex(16), secrets.token_hex(16)
                with self.store.lock:
                    self.store.sessions[session] = {"user": user["id"], "csrf": csrf}
                    self.store.save()
                response = _json({"key": user["key"]})
                response.set_cookie("csrftoken", csrf, path="/", samesite="Lax")
                response.set_cookie("sessionid", session, path="/", httponly=True, samesite="Lax")
                return response
        # As dj-rest-auth does in CVAT: a failed login is a validation error.
        return _json({"non_field_errors": ["Unable to log in with provided credentials."]}, 400)

    def on_logout(self, request: Request) -> Response:
        with self.store.lock:
            self.store.sessions.pop(request.cookies.get("sessionid", ""), None)
            self.store.save()
        return _json({"detail": "Successfully logged out."})

    def on_users_self(self, request: Request) -> Response:
        user = request.user
        return _json(
            {
                **self._user(request, user["id"]),
                "groups": ["admin"],
                "email": "",
                "is_staff": True,
                "is_superuser": True,
                "is_active": True,
                "last_login": None,
                "date_joined": user["date_joined"],
                "has_analytics_access": False,
            }
        )

    def _org_json(self, request: Request, org: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": org["id"],
            "slug": org["slug"],
            "name": org["name"],
            "description": "",
            "created_date": org["created_date"],
            "updated_date": org["created_date"],
            "contact": {},
            "owner": self._user(request, org["owner"]),
        }

    def on_orgs(self, request: Request) -> Response:
        rows = [
            self._org_json(request, o)
            for o in self.store.table("orgs").values()
            if o["owner"] == request.user["id"]
        ]
        return self._page(request, self._filter(request, rows, ("slug", "name")))

    def on_org(self, request: Request, id: int) -> Response:
        org = self.store.table("orgs").get(id)
        if org is None or org["owner"] != request.user["id"]:
            raise ApiError(404, "Not found.")
        return _json(self._org_json(request, org))

    # ------------------------------------------------------------ labels

    def _write_labels(
        self, specs: list[dict[str, Any]], project_id: int | None, task_id: int | None
    ) -> None:
        """Create, rename/recolour or delete labels as CVAT does for `labels` in a PATCH."""
        labels = self.store.table("labels")
        owned = [
            lab
            for lab in labels.values()
            if lab["project_id"] == project_id and lab["task_id"] == task_id
        ]
        for spec in specs:
            if "id" in spec:
                lab = labels.get(spec["id"])
                if lab is None or lab not in owned:
                    raise ApiError(400, {"labels": [f"label {spec['id']} does not belong here"]})
                if spec.get("deleted"):
                    del labels[lab["id"]]
                    continue
                lab.update({k: spec[k] for k in ("name", "color") if k in spec})
                continue
            name = spec.get("name")
            if not name:
                raise ApiError(400, {"labels": ["a label needs a name"]})
            if any(lab["name"] == name for lab in owned):
                raise ApiError(400, {"labels": [f"label {name!r} already exists"]})
            lab = {
                "id": self.store.next_id("label"),
                "name": name,
                "color": spec.get("color") or "#%06x" % (hash(name) & 0xFFFFFF),
                "type": spec.get("type", "any"),
                "project_id": project_id,
                "task_id": task_id,
            }
            labels[lab["id"]] = lab
            owned.append(lab)

    def on_labels(self, request: Request) -> Response:
        rows = list(self.store.table("labels").values())
        if "job_id" in request.args:
            job = self.store.table("jobs").get(int(request.args["job_id"]))
            if job is None:
                raise ApiError(404, "Not found.")
            rows = self._task_labels(self._get(request, "tasks", job["task_id"]))
        elif "task_id" in request.args:
            rows = self._task_labels(self._get(request, "tasks", int(request.args["task_id"])))
        elif "project_id" in request.args:
            project = self._get(request, "projects", int(request.args["project_id"]))
            rows = [lab for lab in rows if lab["project_id"] == project["id"]]
        rows = sorted(rows, key=lambda x: x["id"])
        return self._page(
            request, self._filter(request, [self._label_json(r) for r in rows], ("name", "type"))
        )

    def on_label(self, request: Request, id: int) -> Response:
        lab = self.store.table("labels").get(id)
        if lab is None:
            raise ApiError(404, "Not found.")
        return _json(self._label_json(lab))

    # ------------------------------------------------------------ projects

    def on_projects(self, request: Request) -> Response:
        if request.method == "POST":
            body = request.get_json(force=True)
            if not body.get("name"):
                raise ApiError(400, {"name": ["This field is required."]})
            with self.store.lock:
                stamp = now_iso()
                project = {
                    "id": self.store.next_id("project"),
                    "name": body["name"],
                    "owner": request.user["id"],
                    "organization": self._org_of_new(request),
                    "created_date": stamp,
                    "updated_date": stamp,
                }
                self.store.table("projects")[project["id"]] = project
                self._write_labels(body.get("labels", []), project["id"], None)
                self.store.save()
            return _json(self._project_json(request, project), 201)
        rows = [
            self._project_json(request, p)
            for p in self.store.table("projects").values()
            if self._visible(request, p)
        ]
        return self._page(request, self._filter(request, rows, ("name", "id", "status")))

    def on_project(self, request: Request, id: int) -> Response:
        project = self._get(request, "projects", id)
        if request.method == "PATCH":
            body = request.get_json(force=True)
            with self.store.lock:
                if "name" in body:
                    project["name"] = body["name"]
                if "labels" in body:
                    self._write_labels(body["labels"], id, None)
                project["updated_date"] = now_iso()
                self.store.save()
        elif request.method == "DELETE":
            with self.store.lock:
                for task in [
                    t for t in self.store.table("tasks").values() if t.get("project_id") == id
                ]:
                    self._delete_task(task)
                for lab in [
                    lab for lab in self.store.table("labels").values() if lab["project_id"] == id
                ]:
                    del self.store.table("labels")[lab["id"]]
                del self.store.table("projects")[id]
                self.store.save()
            return Response(status=204)
        return _json(self._project_json(request, project))

    # ------------------------------------------------------------ tasks

    def on_tasks(self, request: Request) -> Response:
        if request.method == "POST":
            body = request.get_json(force=True)
            if not body.get("name"):
                raise ApiError(400, {"name": ["This field is required."]})
            project_id = body.get("project_id")
            if project_id is not None:
                self._get(request, "projects", project_id)
                if body.get("labels"):
                    raise ApiError(
                        400, {"labels": ["Tasks inside a project use the project's labels"]}
                    )
            elif not body.get("labels"):
                raise ApiError(400, {"labels": ["A task outside a project needs labels"]})
            with self.store.lock:
                stamp = now_iso()
                task = {
                    "id": self.store.next_id("task"),
                    "name": body["name"],
                    "project_id": project_id,
                    "owner": request.user["id"],
                    "organization": self._org_of_new(request),
                    "segment_size": int(body.get("segment_size") or 0),
                    "subset": body.get("subset", ""),
                    "bug_tracker": body.get("bug_tracker", ""),
                    "size": 0,
                    "frames": [],
                    "created_date": stamp,
                    "updated_date": stamp,
                }
                self.store.table("tasks")[task["id"]] = task
                if project_id is None:
                    self._write_labels(body["labels"], None, task["id"])
                self.store.save()
            return _json(self._task_json(request, task), 201)
        rows = [
            self._task_json(request, t)
            for t in self.store.table("tasks").values()
            if self._visible(request, t)
        ]
        simple = (
            "name",
            "id",
            "project_id",
            "project_name",
            "status",
            "subset",
            "mode",
            "dimension",
        )
        return self._page(request, self._filter(request, rows, simple))

    def _delete_task(self, task: dict[str, Any]) -> None:
        with self.store.lock:
            for job in self._task_jobs(task["id"]):
                del self.store.table("jobs")[job["id"]]
            for lab in [
                lab for lab in self.store.table("labels").values() if lab["task_id"] == task["id"]
            ]:
                del self.store.table("labels")[lab["id"]]
            self.store.drop_annotations(task["id"])
            shutil.rmtree(self.store.media_dir / f"task_{task['id']}", ignore_errors=True)
            del self.store.table("tasks")[task["id"]]
            self.store.save()

    def on_task(self, request: Request, id: int) -> Response:
        task = self._get(request, "tasks", id)
        if request.method == "DELETE":
            self._delete_task(task)
            return Response(status=204)
        if request.method == "PATCH":
            body = request.get_json(force=True)
            with self.store.lock:
                for key in ("name", "subset", "bug_tracker"):
                    if key in body:
                        task[key] = body[key]
                if "labels" in body:
                    if task.get("project_id"):
                        raise ApiError(
                            400, {"labels": ["Tasks inside a project use the project's labels"]}
                        )
                    self._write_labels(body["labels"], None, id)
                task["updated_date"] = now_iso()
                self.store.save()
        return _json(self._task_json(request, task))

    # ------------------------------------------------------------ data upload (CVAT's TUS variant)

    def _media_dir(self, task_id: int) -> Path:
        path = self.store.media_dir / f"task_{task_id}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def on_task_data(self, request: Request, id: int) -> Response:
        task = self._get(request, "tasks", id)
        if request.method == "GET":
            return self._frame(task, request)
        headers = request.headers
        if "Upload-Start" in headers:
            if task["size"]:
                raise ApiError(400, "Adding more data is not supported")
            self.uploads[id] = {"files": [], "tus": {}}
            return _json({}, 202)
        if "Upload-Multiple" in headers:
            session = self._session(id)
            self._save_files(id, request.files.items(multi=True), session)
            return _json({}, 200)
        if "Upload-Length" in headers:  # TUS: create an upload for one big file
            session = self._session(id)
            meta = dict(
                (k, base64.b64decode(v).decode())
                for k, v in (p.split(" ") for p in headers["Upload-Metadata"].split(","))
            )
            file_id = uuid.uuid4().hex
            name = posixpath.basename(meta["filename"])
            session["tus"][file_id] = {
                "name": name,
                "length": int(headers["Upload-Length"]),
                "offset": 0,
            }
            (self._media_dir(id) / name).write_bytes(b"")
            location = f"{self._base(request)}/api/tasks/{id}/data/{file_id}"
            return Response(
                status=201,
                headers={"Location": location, "Upload-Filename": name, "Tus-Resumable": "1.0.0"},
            )
        if "Upload-Finish" in headers:
            session = self.uploads.pop(id, None)
            if session is None:
                raise ApiError(400, "No upload was started for this task")
            params = request.get_json(force=True, silent=True) or {}
            return self._start_task_creation(request, task, session, params)
        # A plain single-request upload: multipart files and fields together.
        session = {"files": [], "tus": {}}
        self._save_files(id, request.files.items(multi=True), session)
        params = request.form.to_dict()
        if "upload_file_order" in request.form:
            params["upload_file_order"] = request.form.getlist("upload_file_order")
        return self._start_task_creation(request, task, session, params)

    def _session(self, task_id: int) -> dict[str, Any]:
        if task_id not in self.uploads:
            raise ApiError(400, "Send Upload-Start first")
        return self.uploads[task_id]

    def _save_files(self, task_id: int, items, session: dict[str, Any]) -> None:
        media = self._media_dir(task_id)
        for _field, storage in items:
            # Like Django, keep only the base name of what the client sent.
            name = posixpath.basename(storage.filename.replace("\\", "/"))
            storage.save(media / name)
            session["files"].append(name)

    def on_tus(self, request: Request, id: int, file_id: str) -> Response:
        self._get(request, "tasks", id)
        upload = self._session(id)["tus"].get(file_id)
        if upload is None:
            raise NotFound()
        if request.method == "PATCH":
            if int(request.headers.get("Upload-Offset", -1)) != upload["offset"]:
                return Response(status=409, headers={"Upload-Offset": str(upload["offset"])})
            data = request.get_data()
            with (self._media_dir(id) / upload["name"]).open("ab") as fh:
                fh.write(data)
            upload["offset"] += len(data)
            if upload["offset"] >= upload["length"]:
                self.uploads[id]["files"].append(upload["name"])
        return Response(
            status=204, headers={"Upload-Offset": str(upload["offset"]), "Tus-Resumable": "1.0.0"}
        )

    def _new_request(
        self, request: Request, kind: str, task_id: int, **extra: Any
    ) -> dict[str, Any]:
        rq = {
            "id": f"{kind}-{uuid.uuid4().hex}",
            "type": kind,
            "task_id": task_id,
            "owner": request.user["id"],
            "status": "queued",
            "created_date": now_iso(),
            **extra,
        }
        self.store.table("requests")[rq["id"]] = rq
        self.store.save()
        return rq

    def _start_task_creation(
        self, request: Request, task: dict[str, Any], session: dict, params: dict
    ) -> Response:
        rq = self._new_request(request, "create:task", task["id"])
        threading.Thread(
            target=self._create_task_data, args=(rq, task, session, params), daemon=True
        ).start()
        return _json({"rq_id": rq["id"]}, 202)

    def _order_files(self, files: list[str], params: dict[str, Any]) -> list[str]:
        method = str(params.get("sorting_method", "lexicographical"))
        if method == "predefined":
            order = params.get("upload_file_order") or []
            if order:
                if sorted(order) != sorted(files):
                    raise ValueError("upload_file_order does not list exactly the uploaded files")
                return list(order)
            return list(files)
        if method == "natural":
            return sorted(files, key=_natural_key)
        if method == "random":
            import random

            return random.sample(files, len(files))
        return sorted(files)

    def _create_task_data(self, rq: dict, task: dict, session: dict, params: dict) -> None:
        """What CVAT's background worker does: order frames, read sizes, cut jobs."""
        import time

        rq.update(status="started", started_date=now_iso())
        time.sleep(self.process_delay_s)  # CVAT answers the poll with "started" at least once
        try:
            names = self._order_files(session["files"], params)
            if not names:
                raise ValueError("No media data found")
            media = self._media_dir(task["id"])
            frames = []
            for name in names:
                width, height = _image_size(media / name)
                frames.append({"name": name, "width": width, "height": height})
        except Exception as exc:  # noqa: BLE001 - reported to the client as CVAT does
            with self.store.lock:
                rq.update(status="failed", message=str(exc), finished_date=now_iso())
                self.store.save()
            return
        with self.store.lock:
            stamp = now_iso()
            task.update(
                frames=frames,
                size=len(frames),
                data=self.store.next_id("data"),
                image_quality=int(params.get("image_quality", 70)),
                updated_date=stamp,
            )
            segment = task["segment_size"] or len(frames)
            task["segment_size"] = segment
            for start in range(0, len(frames), segment):
                job = {
                    "id": self.store.next_id("job"),
                    "task_id": task["id"],
                    "start_frame": start,
                    "stop_frame": min(start + segment, len(frames)) - 1,
                    "stage": "annotation",
                    "state": "new",
                    "created_date": stamp,
                    "updated_date": stamp,
                    "owner": task["owner"],
                    "organization": task["organization"],
                }
                self.store.table("jobs")[job["id"]] = job
            rq.update(status="finished", finished_date=now_iso())
            self.store.save()

    def _frame(self, task: dict[str, Any], request: Request) -> Response:
        number = int(request.args.get("number", 0))
        if request.args.get("type", "frame") != "frame" or not 0 <= number < task["size"]:
            raise ApiError(400, "Only frames within the task can be fetched")
        path = self._media_dir(task["id"]) / task["frames"][number]["name"]
        return Response(path.read_bytes(), content_type="application/octet-stream")

    def _meta(self, task: dict[str, Any], lo: int, hi: int) -> dict[str, Any]:
        frames = [
            dict(f, related_files=0, has_related_context=False) for f in task["frames"][lo : hi + 1]
        ]
        return {
            "chunks_updated_date": task["updated_date"],
            "chunk_size": 36,
            "size": len(frames),
            "image_quality": task.get("image_quality", 70),
            "start_frame": lo,
            "stop_frame": hi,
            "frame_filter": "",
            "frames": frames,
            "deleted_frames": [],
            "included_frames": None,
            "chapters": None,
            "storage": "local",
            "cloud_storage_id": None,
        }

    def on_task_meta(self, request: Request, id: int) -> Response:
        task = self._get(request, "tasks", id)
        return _json(self._meta(task, 0, task["size"] - 1))

    # ------------------------------------------------------------ jobs

    def on_jobs(self, request: Request) -> Response:
        tasks = self.store.table("tasks")
        rows = [
            self._job_json(request, j)
            for j in self.store.table("jobs").values()
            if self._visible(request, tasks[j["task_id"]])
        ]
        simple = (
            "task_id",
            "project_id",
            "stage",
            "state",
            "id",
            "task_name",
            "project_name",
            "type",
        )
        return self._page(request, self._filter(request, rows, simple))

    def _job(self, request: Request, id: int) -> tuple[dict[str, Any], dict[str, Any]]:
        job = self.store.table("jobs").get(id)
        if job is None:
            raise ApiError(404, "Not found.")
        return job, self._get(request, "tasks", job["task_id"])

    def on_job(self, request: Request, id: int) -> Response:
        job, task = self._job(request, id)
        if request.method == "PATCH":
            body = request.get_json(force=True)
            stage, state = body.get("stage"), body.get("state")
            if stage is not None and stage not in JOB_STATUS:
                raise ApiError(400, {"stage": [f"{stage!r} is not a valid choice."]})
            if state is not None and state not in ("new", "in progress", "rejected", "completed"):
                raise ApiError(400, {"state": [f"{state!r} is not a valid choice."]})
            with self.store.lock:
                if stage is not None and stage != job["stage"]:
                    job["stage"] = stage
                    job["state"] = "new"  # CVAT resets the state when the stage changes
                if state is not None:
                    job["state"] = state
                job["updated_date"] = task["updated_date"] = now_iso()
                self.store.save()
        return _json(self._job_json(request, job))

    def on_job_meta(self, request: Request, id: int) -> Response:
        job, task = self._job(request, id)
        return _json(self._meta(task, job["start_frame"], job["stop_frame"]))

    # ------------------------------------------------------------ annotations

    def _validate_shape(
        self, shape: dict[str, Any], task: dict[str, Any], frames: tuple[int, int]
    ) -> dict[str, Any]:
        label_ids = {lab["id"] for lab in self._task_labels(task)}
        if shape.get("type") not in SHAPE_TYPES:
            raise ApiError(400, {"shapes": [f"unknown shape type {shape.get('type')!r}"]})
        if shape.get("label_id") not in label_ids:
            raise ApiError(
                400,
                {"shapes": [f"label {shape.get('label_id')} is not a label of task {task['id']}"]},
            )
        frame = shape.get("frame")
        if not isinstance(frame, int) or not frames[0] <= frame <= frames[1]:
            raise ApiError(
                400, {"shapes": [f"frame {frame} is outside frames {frames[0]}..{frames[1]}"]}
            )
        info = task["frames"][frame]
        try:
            exports.rasterize(shape, info["height"], info["width"]) if shape["type"] in (
                "mask",
                "polygon",
            ) else None
        except exports.ShapeError as exc:
            raise ApiError(
                400, {"shapes": [f"invalid {shape['type']} on frame {frame}: {exc}"]}
            ) from exc
        return {
            "type": shape["type"],
            "frame": frame,
            "label_id": shape["label_id"],
            "points": [float(p) for p in shape.get("points", [])],
            "occluded": bool(shape.get("occluded", False)),
            "outside": bool(shape.get("outside", False)),
            "z_order": int(shape.get("z_order", 0)),
            "rotation": float(shape.get("rotation", 0.0)),
            "group": shape.get("group") or 0,
            "source": shape.get("source", "manual"),
            "attributes": shape.get("attributes", []),
            "elements": [],
        }

    def _validate_tag(
        self, tag: dict[str, Any], task: dict[str, Any], frames: tuple[int, int]
    ) -> dict[str, Any]:
        if tag.get("label_id") not in {lab["id"] for lab in self._task_labels(task)}:
            raise ApiError(
                400, {"tags": [f"label {tag.get('label_id')} is not a label of task {task['id']}"]}
            )
        if not frames[0] <= tag.get("frame", -1) <= frames[1]:
            raise ApiError(
                400,
                {"tags": [f"frame {tag.get('frame')} is outside frames {frames[0]}..{frames[1]}"]},
            )
        return {
            "frame": tag["frame"],
            "label_id": tag["label_id"],
            "group": tag.get("group") or 0,
            "source": tag.get("source", "manual"),
            "attributes": tag.get("attributes", []),
        }

    def _annotations(
        self, request: Request, task: dict[str, Any], frames: tuple[int, int]
    ) -> Response:
        task_id = task["id"]
        if frames[1] < frames[0]:
            raise ApiError(400, "The task has no data yet")
        if request.method == "GET":
            return _json(
                {
                    "version": self.store.version(task_id),
                    "tags": self.store.tags(task_id, frames),
                    "shapes": self.store.shapes(task_id, frames),
                    "tracks": [],
                }
            )
        if request.method == "DELETE":
            self.store.write_annotations(task_id, {"op": "replace", "frames": list(frames)})
            self._touch(task, frames)
            return Response(status=204)
        body = request.get_json(force=True)
        if body.get("tracks"):
            raise ApiError(400, {"tracks": ["tracks are not supported by this test server"]})
        action = request.args.get("action") if request.method == "PATCH" else "put"
        if action not in ("put", "create", "update", "delete"):
            raise ApiError(400, {"action": [f"{action!r} is not a valid action"]})
        current = {s["id"]: s for s in self.store.shapes(task_id, frames)}
        current_tags = {t["id"]: t for t in self.store.tags(task_id, frames)}
        if action in ("update", "delete"):
            for kind, have in (("shapes", current), ("tags", current_tags)):
                missing = [o.get("id") for o in body.get(kind, []) if o.get("id") not in have]
                if missing:
                    raise ApiError(
                        400,
                        {
                            kind: [
                                f"no {kind} with ids {missing} in frames {frames[0]}..{frames[1]}"
                            ]
                        },
                    )
        if action == "delete":
            entry = {
                "op": "delete",
                "shapes": [s["id"] for s in body.get("shapes", [])],
                "tags": [t["id"] for t in body.get("tags", [])],
            }
            self.store.write_annotations(task_id, entry)
            self._touch(task, frames)
            return _json(
                {"version": self.store.version(task_id), "tags": [], "shapes": [], "tracks": []}
            )
        shapes = [self._validate_shape(s, task, frames) for s in body.get("shapes", [])]
        tags = [self._validate_tag(t, task, frames) for t in body.get("tags", [])]
        with self.store.lock:
            for obj, src in zip(
                shapes + tags, body.get("shapes", []) + body.get("tags", []), strict=True
            ):
                obj["id"] = src["id"] if action == "update" else self.store.next_id("shape")
            self.store.save()
            op = {"put": "replace", "create": "create", "update": "update"}[action]
            entry = {"op": op, "shapes": shapes, "tags": tags}
            if op == "replace":
                entry["frames"] = list(frames)
            self.store.write_annotations(task_id, entry)
        self._touch(task, frames)
        return _json(
            {"version": self.store.version(task_id), "tags": tags, "shapes": shapes, "tracks": []}
        )

    def _touch(self, task: dict[str, Any], frames: tuple[int, int]) -> None:
        """Annotation changes update the task's and the touched jobs' updated_date."""
        with self.store.lock:
            stamp = now_iso()
            task["updated_date"] = stamp
            for job in self._task_jobs(task["id"]):
                if job["start_frame"] <= frames[1] and frames[0] <= job["stop_frame"]:
                    job["updated_date"] = stamp
            self.store.save()

    def on_task_annotations(self, request: Request, id: int) -> Response:
        task = self._get(request, "tasks", id)
        return self._annotations(request, task, (0, task["size"] - 1))

    def on_job_annotations(self, request: Request, id: int) -> Response:
        job, task = self._job(request, id)
        return self._annotations(request, task, (job["start_frame"], job["stop_frame"]))

    # ------------------------------------------------------------ exports and requests

    def on_task_export(self, request: Request, id: int) -> Response:
        task = self._get(request, "tasks", id)
        fmt = request.args.get("format")
        if fmt not in exports.FORMATS:
            raise ApiError(
                400,
                {"format": [f"Unknown format {fmt!r}; supported here: {list(exports.FORMATS)}"]},
            )
        if request.args.get("location", "local") != "local":
            raise ApiError(
                400, {"location": ["only local exports are supported by this test server"]}
            )
        save_images = request.args.get("save_images", "false").lower() == "true"
        rq = self._new_request(request, "export:dataset", id, format=fmt)
        thread = threading.Thread(
            target=self._export, args=(rq, task, fmt, save_images), daemon=True
        )
        thread.start()
        return _json({"rq_id": rq["id"]}, 202)

    def _export(self, rq: dict, task: dict, fmt: str, save_images: bool) -> None:
        rq.update(status="started", started_date=now_iso())
        out = self.store.exports_dir / f"{rq['id']}.zip"
        try:
            exports.build_export(
                fmt,
                task["frames"],
                self._task_labels(task),
                self.store.shapes(task["id"]),
                self._media_dir(task["id"]),
                save_images,
                out,
                zip_slip=bool(self.faults.get("zip_slip")),
                image_quality=task.get("image_quality", 70),
            )
        except Exception as exc:  # noqa: BLE001 - reported through the request, as CVAT does
            with self.store.lock:
                rq.update(status="failed", message=f"export failed: {exc}", finished_date=now_iso())
                self.store.save()
            return
        with self.store.lock:
            rq.update(status="finished", finished_date=now_iso(), file=str(out))
            self.store.save()

    def on_request(self, request: Request, rq_id: str) -> Response:
        rq = self.store.table("requests").get(rq_id)
        if rq is None or rq["owner"] != request.user["id"]:
            raise ApiError(404, "Not found.")
        return _json(self._request_json(request, rq))

    def on_request_download(self, request: Request, rq_id: str) -> Response:
        rq = self.store.table("requests").get(rq_id)
        if (
            rq is None
            or rq["owner"] != request.user["id"]
            or rq["status"] != "finished"
            or "file" not in rq
        ):
            raise ApiError(404, "Not found.")
        data = Path(rq["file"]).read_bytes()
        name = f"task_{rq['task_id']}_dataset.zip"
        return Response(
            data,
            content_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    # ------------------------------------------------------------ test controls

    def on_test_faults(self, request: Request) -> Response:
        if request.method == "POST":
            self.faults = request.get_json(force=True) or {}
            self.fault_counts = {}
        return _json(self.faults)

    def on_test_log(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.request_log.clear()
            return Response(status=204)
        return _json(self.request_log)
