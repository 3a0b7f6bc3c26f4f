"""Hung and failing servers: every command fails within a bounded time with one line naming the
endpoint, and Ctrl-C or SIGTERM leaves no temporary folder behind.

The hung server is real (`SilentServer`: a socket on 127.0.0.1 that accepts and never answers),
the CLI is the real `segloop` in a child process, the CVAT server is tests/cvat_server.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from net_helpers import SilentServer, clean_env, error_lines, run_segloop

LABELS = {"labels": [{"name": "background", "id": 0}, {"name": "weed", "id": 1}]}
# Short timeouts for the child: bounded failure is what is tested, not the default budgets.
FAST_S3 = {"SEGLOOP_S3_READ_TIMEOUT_S": "1", "SEGLOOP_S3_MAX_ATTEMPTS": "2"}
S3_KEYS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret-key"}


def labels_file(tmp_path: Path) -> Path:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(LABELS))
    return path


def assert_one_line_failure(result, seconds: float, limit_s: float, *expected: str) -> str:
    """Exit status 2 within `limit_s`, no traceback, exactly one error line containing `expected`."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert seconds < limit_s, f"took {seconds:.1f} s"
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    for text in expected:
        assert text in line, line
    return line


def test_silent_s3_fails_within_bounds_naming_the_endpoint(tmp_path):
    with SilentServer() as s3:
        env = clean_env(tmp_path, AWS_ENDPOINT_URL=s3.url, **S3_KEYS, **FAST_S3)
        args = ["select", "--predictions", "s3://bucket/pred", "--out-dir", "sel"]
        result, seconds = run_segloop(args, env, tmp_path)
    assert_one_line_failure(
        result, seconds, 60, f"endpoint {s3.url} did not answer within 1 s (2 attempts)"
    )
    assert not list((tmp_path / "tmp").iterdir())  # its temporary folder is gone too
    # Each failed attempt says so as it happens: no minutes of silence with longer timeouts.
    assert f"S3 at {s3.url}: attempt 1 failed (ReadTimeoutError)" in result.stderr


@pytest.mark.parametrize("service", ["mlflow", "cvat", "postgresql"])
def test_silent_mlflow_cvat_and_database_fail_within_bounds(tmp_path, service):
    with SilentServer() as server:
        if service == "mlflow":
            env = clean_env(tmp_path, MLFLOW_TRACKING_URI=server.url)
            args, expected = ["compare", "--last", "1"], f"cannot reach MLflow at {server.url}"
        elif service == "cvat":
            env = clean_env(
                tmp_path, CVAT_HOST=server.url, CVAT_USERNAME="u", CVAT_PASSWORD="pw-123456"
            )
            args = ["download-cvat", "--out-dir", "down", "-o", "cvat.request_timeout_s=1"]
            args += ["-o", "cvat.retries=1", "-o", "cvat.backoff_s=0.1"]
            args += ["-o", f"project.labels={labels_file(tmp_path)}"]
            expected = f"CVAT at {server.url} is unreachable"
        else:
            env = clean_env(tmp_path, SEGLOOP_DB_TIMEOUT_S="1")
            url = f"postgresql+psycopg://seg:pw-123456@127.0.0.1:{server.port}/images"
            args = ["query", "--db-url", url, "--out-dir", "q"]
            expected = f"cannot connect to postgresql+psycopg://seg:***@127.0.0.1:{server.port}"
        result, seconds = run_segloop(args, env, tmp_path)
    assert_one_line_failure(result, seconds, 60, expected)


# The CLI with Ctrl-C's default disposition, as a terminal gives it: a shell starts background
# jobs (a CI script's, say) with SIGINT ignored, and an ignored signal stays ignored across exec.
CTRL_C_AS_ON_A_TERMINAL = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'pipelines', *sys.argv[1:]])\n"
)


@pytest.mark.parametrize(
    ("signum", "status", "word"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "aborted")],
)
@pytest.mark.parametrize("folder", ["in", "out"])
def test_signals_leave_no_temporary_folder(tmp_path, signum, status, word, folder):
    """Stopped while hung on S3 (default timeouts: it would wait minutes), the command ends at
    once and its segloop-in-* (download) or segloop-out-* (upload) folder is gone."""
    with SilentServer() as s3:
        env = clean_env(tmp_path, AWS_ENDPOINT_URL=s3.url, **S3_KEYS)
        if folder == "in":
            args = ["select", "--predictions", "s3://bucket/pred", "--out-dir", "sel"]
        else:  # writes two images into a temporary folder, then hangs uploading them
            args = ["data", "synth", "--n", "2", "--size", "64x64", "--out", "s3://bucket/s"]
            args += ["--db-url", f"sqlite:///{tmp_path / 'img.db'}"]
        proc = subprocess.Popen(
            [sys.executable, "-c", CTRL_C_AS_ON_A_TERMINAL, *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 90
            while not s3.connections and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert s3.connections, "the command never reached the S3 endpoint"
            time.sleep(0.5)  # well inside its request now
            made = [p.name for p in (tmp_path / "tmp").iterdir()]
            assert any(name.startswith(f"segloop-{folder}-") for name in made), made
            proc.send_signal(signum)
            _, stderr = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == status, stderr[-2000:]
    assert word in stderr and "Traceback" not in stderr
    assert not list((tmp_path / "tmp").iterdir())


HTML_500 = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta http-equiv="content-type" content="text/html; charset=utf-8">
  <meta name="robots" content="NONE,NOARCHIVE">
  <title>Server Error (500)</title>
</head>
<body>
  <h1>Server Error (500)</h1><p></p>
</body>
</html>
"""


def test_cvat_500_error_page_is_one_line(cvat_server, tmp_path):
    """A CVAT that answers 500 with its HTML error page: one line with the status, the host, the
    page's title and what to do; not the page, and not "check that the server is up"."""
    cvat_server.set_faults(fail=[{"path": "/api/", "status": 500, "times": 1000, "html": HTML_500}])
    env = clean_env(tmp_path, **cvat_server.env())
    args = ["download-cvat", "--out-dir", "down", "-o", f"project.labels={labels_file(tmp_path)}"]
    args += ["-o", "cvat.retries=1", "-o", "cvat.backoff_s=0.05"]
    result, seconds = run_segloop(args, env, tmp_path)
    line = assert_one_line_failure(
        result,
        seconds,
        60,
        f"CVAT at {cvat_server.host}",
        "HTTP 500: Server Error (500)",
        "the server is up but failing: see the CVAT server's logs",
    )
    assert "check that the server is up" not in line
    assert "<" not in result.stderr  # no HTML, in the error or in the retry warning
    assert len(result.stderr.strip().splitlines()) == 2  # one retry warning, one error


def test_a_postgresql_statement_that_stalls_is_cancelled_naming_the_server(
    postgres_server, tmp_path
):
    """A real PostgreSQL where another session holds a lock on the table: the query waits on it
    until the server cancels it (statement_timeout, sent at connect), then one line names the
    server (password masked), what happened and the setting; before, it waited forever."""
    import psycopg
    import sqlalchemy as sa

    url = postgres_server.create_database("stalled")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("create table images (image_id text primary key, image_uri text)"))
        conn.execute(sa.text("insert into images values ('a', '/d/a.jpg')"))
    engine.dispose()
    holder = psycopg.connect(
        host=postgres_server.host,
        port=postgres_server.port,
        user=postgres_server.user,
        password=postgres_server.password,
        dbname="stalled",
        connect_timeout=10,
    )
    try:
        holder.execute("lock table images in access exclusive mode")  # held: no commit
        env = clean_env(tmp_path, SEGLOOP_DB_STATEMENT_TIMEOUT_S="2")
        args = ["query", "--db-url", url, "--table", "images", "--out-dir", "q"]
        result, seconds = run_segloop(args, env, tmp_path)
    finally:
        holder.close()
    server = f"postgresql+psycopg://segloop:***@127.0.0.1:{postgres_server.port}/stalled"
    line = assert_one_line_failure(
        result,
        seconds,
        30,
        f"query on {server} failed",
        "canceling statement due to statement timeout",
        "SEGLOOP_DB_STATEMENT_TIMEOUT_S=2 s",
    )
    assert postgres_server.password not in result.stderr + result.stdout, line
    assert not (tmp_path / "q" / "records.jsonl").exists()


def test_postgresql_connections_carry_the_timeouts_and_the_urls_own_win():
    """What db.engine hands libpq (no server needed: the arguments themselves)."""
    from sqlalchemy.engine import make_url

    from components.core.db import _postgres_limits

    ours = _postgres_limits(make_url("postgresql+psycopg://u@h/db"), 10)
    assert ours["connect_timeout"] == 10 and ours["keepalives"] == 1
    assert ours["options"] == "-c statement_timeout=300000"
    theirs = _postgres_limits(
        make_url(
            "postgresql+psycopg://u@h/db?connect_timeout=3&options=-c%20statement_timeout%3D0"
        ),
        10,
    )
    assert "connect_timeout" not in theirs  # the URL's own 3 s stays
    assert theirs["options"] == "-c statement_timeout=300000 -c statement_timeout=0"


def test_mlflows_own_s3_artifact_client_is_bounded_and_fails_in_one_line(tmp_path):
    """An MLflow experiment whose artifacts live on S3 (not proxied by a tracking server): MLflow
    uploads them with its own boto3 client, which kept botocore's 60 s timeouts and legacy
    retries (5 attempts: minutes on a hung endpoint) and failed with a traceback. It gets the
    SEGLOOP_S3_* limits, and `segloop train` ends with one line naming the endpoint."""
    import mlflow

    from components.preprocess.stage import run_preprocess
    from pipelines.config import load_config
    from pipelines.demo.toydata import write_toy_dataset

    toy = write_toy_dataset(tmp_path / "toy", n=4, seed=0, sizes=(64, 64))
    pre = tmp_path / "pre"
    run_preprocess(
        load_config(None, [f"stack.dir={tmp_path / 'stack'}", "preprocess.tile_size=64"]),
        inputs=[str(toy)],
        out=str(pre),
    )
    config = tmp_path / "train.yaml"
    config.write_text(
        "train:\n  encoder_name: resnet18\n  encoder_weights: null\n  epochs: 1\n"
        "  model_kwargs: {encoder_depth: 3, decoder_channels: [32, 16, 8]}\n"
        "  pad_divisor: 8\n  batch_size: 4\n  workers: 0\n  amp: 'off'\n"
        "mlflow:\n  experiment: on-s3\n"
    )
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(tracking).create_experiment("on-s3", artifact_location="s3://bucket/art")
    with SilentServer() as s3:
        env = clean_env(
            tmp_path, MLFLOW_TRACKING_URI=tracking, MLFLOW_S3_ENDPOINT_URL=s3.url, **S3_KEYS
        )
        env.update(FAST_S3)
        args = ["train", "-c", str(config), "--data", str(pre), "--out", "t", "--device", "cpu"]
        result, seconds = run_segloop(args, env, tmp_path, timeout=300)
        attempts = len(s3.connections)
    line = assert_one_line_failure(
        result,
        seconds,
        150,  # start-up (torch, MLflow) included; botocore's defaults take over 5 minutes
        f"endpoint {s3.url} did not answer within 1 s (2 attempts)",
        "MLFLOW_S3_ENDPOINT_URL",
    )
    assert "/artifacts/cfg.yaml" in line
    assert attempts == 2  # SEGLOOP_S3_MAX_ATTEMPTS, not botocore's legacy 5
    assert S3_KEYS["AWS_SECRET_ACCESS_KEY"] not in result.stderr
