"""No secret reaches a message, a log line or a written file.

`components.core.redact.redact` is the one masking function. The end-to-end test plants one
secret in every address setting and credential variable (db.url, MLFLOW_TRACKING_URI,
CVAT_HOST / cvat.host, AWS_ENDPOINT_URL, CVAT_PASSWORD, CVAT_ACCESS_TOKEN,
AWS_SECRET_ACCESS_KEY, ...), walks the error paths (refused, 401/403, timeout, retries, 5xx)
through the real CLI against real servers (a silent socket, tests/cvat_server, SeaweedFS) and
greps everything printed and every file under the test's folder (outputs, HOME, TMPDIR).
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cvat_server.synthetic import make_predictions
from net_helpers import SilentServer, clean_env, closed_port, error_lines, run_segloop
from paths import REPO_ROOT  # tests/ is on sys.path

from components.core import redact as redact_module
from components.core.artifacts import Manifest, write_metrics
from components.core.errors import SegloopError
from components.core.redact import redact, redact_data
from pipelines.task_logs import TaskLogRouter

SECRET = "Planted7Secret" + secrets.token_hex(4)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"cannot reach MLflow at http://u:{SECRET}@127.0.0.1:1 (refused)", "http://u:***@127"),
        (f"postgresql+psycopg://seg:{SECRET}@db:5432/images", "seg:***@db:5432/images"),
        (f"'redis://:{SECRET}@h:6379/0'", "redis://:***@h:6379/0'"),
        (f"raw @ and / inside: https://u:a/{SECRET}@b@host/x", "https://u:***@host/x"),
        (f"s3 https://b.s3/k?X-Amz-Signature={SECRET}&X-Amz-Date=1", "X-Amz-Date=1"),
        (f"GET /api?token={SECRET} HTTP/1.1", "token=*** HTTP/1.1"),
        (f"x?api_key={SECRET}&apikey={SECRET}&sig={SECRET}&page=2", "page=2"),
        (f"x?access_key={SECRET};auth={SECRET}", "x?access_key=***;auth=***"),
        (f"host=db password={SECRET} dbname=x", "host=db password=*** dbname=x"),
        (f"Authorization: Bearer {SECRET}", "Authorization: Bearer ***"),
        (f'{{"url": "https://u:{SECRET}@h", "b": "c@d"}}', '"b": "c@d"'),
    ],
)
def test_redact_hides_passwords_in_addresses_and_secret_parameters(text, kept):
    masked = redact(text)
    assert SECRET not in masked and kept in masked


def test_redact_keeps_what_is_not_secret():
    for text in (
        "http://127.0.0.1:5000/api/2.0/mlflow",
        "s3://segloop-test/runs/a=b/img.png",
        "CVAT at http://cvat:8080: HTTP 404 for task 7",
        "user@example.org wrote 3 files",
    ):
        assert redact(text) == text


def test_redact_is_linear_on_hostile_text():
    """Bounded work per position: long runs of address-like text are masked in seconds at most
    (an unbounded pattern took minutes for 180 KB)."""
    import time

    for text in ("http://u:" * 20_000, "a://b:" * 20_000 + "@", "x" * 1_000_000, "a=b&" * 50_000):
        start = time.perf_counter()
        redact(text)
        assert time.perf_counter() - start < 5, text[:20]


def test_secret_environment_values_and_credential_keys_are_masked(monkeypatch):
    monkeypatch.setenv("CVAT_PASSWORD", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "segloop-test")  # an identifier, not a secret
    assert redact(f"login of 'a' with {SECRET} refused") == "login of 'a' with *** refused"
    assert redact("s3://segloop-test/x") == "s3://segloop-test/x"
    data = {
        "cvat": {"password": "x", "host": f"https://u:{SECRET}@h"},
        "n": [1, f"?token={SECRET}"],
    }
    assert redact_data(data) == {
        "cvat": {"password": "***", "host": "https://u:***@h"},
        "n": [1, "?token=***"],
    }
    assert SECRET not in str(SegloopError(f"cannot reach http://u:{SECRET}@h"))


def test_the_shells_working_directory_is_not_a_secret(monkeypatch, tmp_path):
    # PWD reads as MYSQL_PWD's token; masking it hid every path under the current folder.
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.setenv("OLDPWD", str(tmp_path / "before"))
    monkeypatch.setenv("MYSQL_PWD", SECRET)
    line = f"source {tmp_path}/.segloop/stack.env; cd {tmp_path}/before; login {SECRET}"
    assert redact(line) == f"source {tmp_path}/.segloop/stack.env; cd {tmp_path}/before; login ***"


def test_log_records_warnings_and_tracebacks_are_masked(tmp_path):
    """In a fresh process: a library's log record, a warning and an uncaught traceback."""
    code = f"""
import logging, warnings
from components.core import redact
redact.install()
logging.basicConfig(level=logging.INFO)
logging.getLogger("urllib3.connectionpool").warning(
    "Retrying (%r) after connection broken: %s", "Retry(total=2)", "http://u:{SECRET}@h/x")
try:
    raise ValueError("bad http://u:{SECRET}@h")
except ValueError:
    logging.getLogger("x").exception("failed")
warnings.warn("see https://h/?token={SECRET}")
raise RuntimeError("uncaught: postgresql://u:{SECRET}@db/x")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert "Retrying ('Retry(total=2)') after connection broken: http://u:***@h/x" in result.stderr
    assert "ValueError: bad http://u:***@h" in result.stderr
    assert "token=***" in result.stderr and "RuntimeError: uncaught" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_task_logs_are_masked(tmp_path):
    target = io.StringIO()
    router = TaskLogRouter(target, "pipe", tmp_path / "logs", verbose=True)
    router.write(f"Executing task 'query'\nexecutor input: db.url=sqlite://u:{SECRET}@x\n")
    router.write("Task 'query' finished with status SUCCESS\n")
    router.close()
    written = "".join(p.read_text() for p in (tmp_path / "logs").iterdir())
    assert "db.url=sqlite://u:***@x" in written
    assert SECRET not in written + target.getvalue()


def test_manifest_reasons_and_metrics_are_masked_but_data_is_kept(tmp_path):
    """A reason quotes an error (masked); a record's own image URI is data the next stage reads
    (kept as the user's table gave it)."""
    image = f"https://u:{SECRET}@images.example/a.jpg"
    manifest = Manifest(tmp_path)
    manifest.add(
        {
            "record_id": "a",
            "status": "failed",
            "reason": f"cannot read {image}: 403",
            "image_uri": image,
        }
    )
    manifest.compact()
    write_metrics(tmp_path, {"source": f"s3 at http://k:{SECRET}@s3", "images": 1})
    (entry,) = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert entry["reason"] == "cannot read https://u:***@images.example/a.jpg: 403"
    assert entry["image_uri"] == image
    assert SECRET not in (tmp_path / "metrics.json").read_text()


def test_install_is_idempotent():
    redact_module.install()
    factory = logging.getLogRecordFactory()
    redact_module.install()
    assert logging.getLogRecordFactory() is factory


# ---------------------------------------------------------------- what pods print

COMPONENT_PROCESS = """
import logging, os, sys, warnings
from components.config import config_from_json
config_from_json("{}")  # every component body starts here
secret = os.environ["CVAT_PASSWORD"]
print(f"print: http://u:{secret}@cvat:8080 and {secret}")
sys.stdout.write(f"stdout: postgresql://seg:{secret}@db/images\\n")
sys.stderr.write(f"stderr: ?token={secret}\\n")
logging.getLogger("some.library").warning("log: %s", secret)
warnings.warn(f"warning: {secret}")
sys.stdout.flush()
raise RuntimeError(f"uncaught: {secret}")
"""


def test_a_component_process_masks_all_it_prints(tmp_path):
    """A KFP task's process (pod logs): after `config_from_json`, print(), writes to stdout and
    stderr, log records, warnings and an uncaught traceback are all masked."""
    env = clean_env(tmp_path, CVAT_PASSWORD=SECRET)
    done = subprocess.run(
        [sys.executable, "-c", COMPONENT_PROCESS],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "RuntimeError: uncaught: ***" in output, output[-2000:]
    for shown in ("print: http://u:***@cvat", "stdout: postgresql://seg:***@db", "token=***"):
        assert shown in output, (shown, output[-2000:])
    assert "log: ***" in output and "warning: ***" in output
    assert SECRET not in output


def _unguarded_writes(path: Path) -> list[str]:
    """print() calls and sys.stdout/sys.stderr.write calls in `path`, outside a
    `if __name__ == "__main__":` block (a developer's tool, never run in a pod)."""
    import ast

    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or id(node) in skipped:
            continue
        name = ast.unparse(node.func)
        if name == "print" or name in ("sys.stdout.write", "sys.stderr.write"):
            found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {name}()")
    return found


def test_stage_code_writes_through_the_masked_logger_not_print():
    """What a stage says goes through logging (masked by the record factory in every process,
    a DDP rank's too); print() in a component body or a stage module is refused here, so that
    nothing relies on the stream guard alone."""
    found = [
        hit
        for path in sorted((REPO_ROOT / "components").rglob("*.py"))
        if path.name != "redact.py"  # the masking streams themselves
        for hit in _unguarded_writes(path)
    ]
    assert not found, found


# ---------------------------------------------------------------- the CLI, end to end


def _cases(tmp: Path, silent: SilentServer, cvat, s3) -> list[tuple[str, list[str], dict, str]]:
    """(name, args, env, text the one error line must contain): every address and credential
    holds SECRET, each walking one error path."""
    refused = f"127.0.0.1:{closed_port()}"
    hung = f"127.0.0.1:{silent.port}"
    labels = tmp / "labels.json"
    labels.write_text(
        json.dumps({"labels": [{"name": "background", "id": 0}, {"name": "weed", "id": 1}]})
    )
    cvat_args = ["download-cvat", "--out-dir", "down", "-o", f"project.labels={labels}"]
    cvat_args += [
        "-o",
        "cvat.retries=2",
        "-o",
        "cvat.backoff_s=0.05",
        "-o",
        "cvat.request_timeout_s=1",
    ]
    creds = {"CVAT_USERNAME": cvat.username, "CVAT_PASSWORD": SECRET}
    s3_env = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": SECRET}
    fast_s3 = {"SEGLOOP_S3_READ_TIMEOUT_S": "1", "SEGLOOP_S3_MAX_ATTEMPTS": "2"}
    select = [
        "select",
        "--predictions",
        "s3://segloop-test/no-such-predictions",
        "--out-dir",
        "sel",
    ]
    pg = f"postgresql+psycopg://seg:{SECRET}@"
    return [
        ("mlflow refused", ["compare", "--last", "1"],
         {"MLFLOW_TRACKING_URI": f"http://u:{SECRET}@{refused}", "MLFLOW_TRACKING_PASSWORD": SECRET},
         "cannot reach MLflow at http://u:***@"),
        ("mlflow hung, token in the query", ["compare", "--last", "1"],
         {"MLFLOW_TRACKING_URI": f"http://{hung}/?token={SECRET}"}, "no answer within"),
        ("cvat refused, retried", cvat_args, {"CVAT_HOST": f"http://u:{SECRET}@{refused}", **creds},
         "after 3 attempts"),
        ("cvat hung (cvat.host)", [*cvat_args, "-o", f"cvat.host=http://u:{SECRET}@{hung}"], creds,
         "no answer within the timeout"),
        ("cvat 401 password", cvat_args, {"CVAT_HOST": cvat.host, **creds}, "rejected the login"),
        ("cvat 401 token", cvat_args, {"CVAT_HOST": cvat.host, "CVAT_ACCESS_TOKEN": SECRET}, "HTTP 401"),
        ("s3 hung, retried", select, {"AWS_ENDPOINT_URL": f"http://u:{SECRET}@{hung}", **s3_env, **fast_s3},
         "did not answer within 1 s (2 attempts)"),
        ("s3 403", select, {"AWS_ENDPOINT_URL": s3.endpoint, **s3_env}, "check AWS_ACCESS_KEY_ID"),
        ("db refused", ["query", "--db-url", f"{pg}{refused}/images", "--out-dir", "q"],
         {"PGPASSWORD": SECRET}, "cannot connect to postgresql+psycopg://seg:***@"),
        ("db hung (db.url)", ["query", "-o", f"db.url={pg}{hung}/images", "--out-dir", "q"],
         {"SEGLOOP_DB_TIMEOUT_S": "1"}, "timeout"),
    ]  # fmt: skip


def test_planted_secret_never_reaches_output_or_files(tmp_path, cvat_server, s3_server):
    printed: list[str] = []
    with SilentServer() as silent:
        for name, args, extra, expected in _cases(tmp_path, silent, cvat_server, s3_server):
            result, _ = run_segloop(args, clean_env(tmp_path, **extra), tmp_path, timeout=90)
            printed.append(result.stdout + result.stderr)
            assert result.returncode == 2, (name, result.stderr[-2000:])
            assert "Traceback" not in result.stderr, name
            (line,) = error_lines(result.stderr)
            assert expected in line, (name, line)

    # A run that succeeds writes cfg.yaml, metrics, records and its spec: every address masked.
    db = f"sqlite:///{tmp_path / 'img.db'}"
    synth, _ = run_segloop(
        ["data", "synth", "--n", "3", "--size", "64x64", "--out", "imgs", "--db-url", db],
        clean_env(tmp_path),
        tmp_path,
    )
    assert synth.returncode == 0, synth.stderr[-2000:]
    addresses = [
        f"mlflow.tracking_uri=http://u:{SECRET}@mlflow:5000",
        f"cvat.host=https://u:{SECRET}@cvat",
    ]
    overrides = [flag for item in addresses for flag in ("-o", item)]
    env = clean_env(tmp_path, AWS_ENDPOINT_URL=f"http://u:{SECRET}@s3:9000", CVAT_PASSWORD=SECRET)
    query, _ = run_segloop(["query", "--db-url", db, "--out-dir", "q", *overrides], env, tmp_path)
    assert query.returncode == 0, query.stderr[-2000:]
    printed.append(query.stdout + query.stderr)
    written = {p.name for p in (tmp_path / "q").iterdir()}
    assert {"cfg.yaml", "metrics.json", "records.jsonl", "query_spec.json"} <= written
    assert "https://u:***@cvat" in (tmp_path / "q" / "cfg.yaml").read_text()

    # A successful upload with a password inside CVAT_HOST: tasks.json and the printed task URLs.
    pred = make_predictions(tmp_path / "data", 2)
    env = clean_env(
        tmp_path,
        **{**cvat_server.env(), "CVAT_HOST": cvat_server.host.replace("//", f"//u:{SECRET}@")},
    )
    upload, _ = run_segloop(
        ["upload-cvat", "--predictions", str(pred), "--out-dir", "up"], env, tmp_path
    )
    assert upload.returncode == 0, upload.stderr[-2000:]
    printed.append(upload.stdout + upload.stderr)
    tasks = json.loads((tmp_path / "up" / "tasks.json").read_text())["tasks"]
    assert tasks and all("u:***@127.0.0.1" in task["url"] for task in tasks)

    for text in printed:
        assert SECRET not in text
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []
