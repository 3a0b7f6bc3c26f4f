"""`segloop submit` and `segloop runs` through the real kfp.Client.

No Kubeflow Pipelines API server can run here (it needs Kubernetes, Argo and a database), so
these tests talk to a small HTTP stub of the v2beta1 endpoints the client calls (tests/kfp_stub.py)
and assert the requests it received: the uploaded pipeline spec, the run's parameters, the
experiment and the namespace, and the auth header. Everything on the client side is real.
"""

from __future__ import annotations

import json

import pytest
import yaml
from cli_helpers import segloop  # tests/ is on sys.path
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from paths import REPO_ROOT  # tests/ is on sys.path

from components.config import config_from_json
from components.core.errors import SegloopError
from pipelines.compile import compiled_kfp, read_fingerprint
from pipelines.config import load_config

TOKEN = "stub-bearer-token-0123456789"


def submit(stub, *extra: str):
    return segloop(
        "submit",
        "pre_annotation",
        "--host",
        stub.host,
        "--namespace",
        "team-weeds",
        "--experiment",
        "weeds-rounds",
        "--token",
        TOKEN,
        "-o",
        "project.name=weeds",
        "-o",
        "select.budget=7",
        *extra,
    )


def test_first_submit_uploads_pipeline_and_starts_run(kfp_api):
    stub = kfp_api
    result = submit(
        stub,
        "--run-name",
        "round-1",
        "--service-account",
        "segloop-pipeline-runner",
        "--model-uri",
        "models:/weeds@challenger",
        "--wait",
        "--poll",
        "0.05",
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "run finished: SUCCEEDED" in result.output
    assert TOKEN not in result.output

    # Upload: a new pipeline named after the project, in the namespace, with the compiled spec.
    (upload,) = stub.calls("POST", "/pipelines/upload")
    assert upload.query["name"] == "weeds-pre-annotation"
    assert upload.query["namespace"] == "team-weeds"
    docs = list(yaml.safe_load_all(upload.body["uploadfile"]))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    assert set(spec.root.dag.tasks) == {"query", "infer", "select", "upload-cvat"}
    assert "secretAsEnv" in json.dumps(docs[1])
    # Its description records the compile-time kfp settings (what `launch` checks against).
    compiled = load_config(None, ["project.name=weeds", "select.budget=7"])
    assert read_fingerprint(upload.query["description"]) == compiled_kfp(compiled)

    # Experiment: looked up by name, then created in the namespace.
    (exp_post,) = stub.calls("POST", "/experiments")
    assert exp_post.body == {"display_name": "weeds-rounds", "namespace": "team-weeds"}

    # Run: in that experiment, on the uploaded version, with the config and the model.
    (run_post,) = stub.calls("POST", "/runs")
    body = run_post.body
    (version,) = stub.versions[upload_pid(stub)]
    assert body["display_name"] == "round-1"
    assert body["experiment_id"] == next(iter(stub.experiments))
    assert body["pipeline_version_reference"] == {
        "pipeline_id": version["pipeline_id"],
        "pipeline_version_id": version["pipeline_version_id"],
    }
    params = body["runtime_config"]["parameters"]
    cfg = config_from_json(params["config_json"])
    assert cfg.project.name == "weeds" and cfg.select.budget == 7
    assert params["model_uri"] == "models:/weeds@challenger"
    assert "pipeline_spec" not in body  # runs reference the uploaded version
    assert body["service_account"] == "segloop-pipeline-runner"

    # Every call carried the bearer token; --wait polled the run until it ended.
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in stub.requests)
    assert len(stub.calls("GET", f"/runs/{body_run_id(stub)}")) >= 2


def upload_pid(stub) -> str:
    return next(iter(stub.pipelines))


def body_run_id(stub) -> str:
    return next(iter(stub.runs))


def test_second_submit_adds_a_version(kfp_api):
    stub = kfp_api
    assert submit(stub).exit_code == 0
    result = submit(stub)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert len(stub.calls("POST", "/pipelines/upload")) == 1
    (upload_version,) = stub.calls("POST", "/pipelines/upload_version")
    pid = upload_pid(stub)
    assert upload_version.query["pipelineid"] == pid
    assert upload_version.query["name"].startswith("weeds-pre-annotation-")
    newest = stub.versions[pid][0]
    second_run = list(stub.runs.values())[1]
    assert (
        second_run["pipeline_version_reference"]["pipeline_version_id"]
        == (newest["pipeline_version_id"])
    )
    # The experiment exists now: found by name, not created twice.
    assert len(stub.calls("POST", "/experiments")) == 1


def test_wait_exits_nonzero_when_the_run_fails(kfp_api):
    kfp_api.final_state = "FAILED"
    result = submit(kfp_api, "--wait", "--poll", "0.05")
    assert result.exit_code == 1
    assert "run finished: FAILED" in result.output


def test_service_account_token_file(kfp_api, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("projected-sa-token-42")
    result = segloop(
        "submit", "training", "--host", kfp_api.host, "--sa-token-path", str(token_file)
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    (run_post,) = kfp_api.calls("POST", "/runs")
    assert run_post.headers["authorization"] == "Bearer projected-sa-token-42"
    # No namespace given on a single-user deployment: the client asks healthz, sends none.
    assert kfp_api.calls("GET", "/healthz")
    assert "namespace" not in kfp_api.calls("POST", "/pipelines/upload")[0].query
    assert run_post.body["display_name"].startswith("demo-training-")


def test_runs_list_and_get(kfp_api):
    assert submit(kfp_api).exit_code == 0
    run_id = body_run_id(kfp_api)
    listed = segloop("runs", "list", "--host", kfp_api.host, "--namespace", "team-weeds")
    assert listed.exit_code == 0, listed.output
    assert run_id in listed.output
    assert kfp_api.calls("GET", "/runs")[0].query["namespace"] == "team-weeds"
    got = segloop("runs", "get", run_id, "--host", kfp_api.host)
    assert got.exit_code == 0, got.output
    assert f"run {run_id}" in got.output and "state" in got.output


def test_errors_are_clear(kfp_api, tmp_path):
    no_host = segloop("submit", "training")
    assert isinstance(no_host.exception, SegloopError)
    assert "--host" in str(no_host.exception)
    missing = segloop(
        "runs", "get", "run-404", "--host", kfp_api.host, "--sa-token-path", str(tmp_path / "no")
    )
    assert isinstance(missing.exception, SegloopError)
    assert "token file" in str(missing.exception)
    unknown = segloop("runs", "get", "run-404", "--host", kfp_api.host)
    assert isinstance(unknown.exception, SegloopError)
    assert "HTTP 404" in str(unknown.exception)


@pytest.mark.parametrize(
    ("command", "extra", "key", "secret"),
    [
        (
            "submit",
            ["-o", "mlflow.tracking_uri=https://u:pw-0123@mlflow.example.com"],
            "mlflow.tracking_uri",
            "segloop-mlflow",
        ),
        (
            "submit",
            ["--model-uri", "https://u:pw-0123@models.example.com/m.pt"],
            "parameter model_uri",
            "Secret",
        ),
        (
            "launch",
            ["-o", "cvat.host=https://bot:pw-0123@cvat.example.com"],
            "cvat.host",
            "segloop-cvat",
        ),
        (
            "launch",
            ["--upload", "-o", "db.url=postgresql://u:pw-0123@db/x"],
            "db.url",
            "PGPASSWORD",
        ),
    ],
)
def test_credentials_are_refused_before_anything_is_sent(kfp_api, command, extra, key, secret):
    """config_json and the run parameters travel in clear text: submit and launch refuse a
    password in any URL (the same check as compile) before uploading or starting a run."""
    args = [command, "pre_annotation", "--host", kfp_api.host, "--token", TOKEN, *extra]
    result = segloop(*args)
    assert isinstance(result.exception, SegloopError), result.output
    message = str(result.exception)
    assert message.startswith(f"{key} holds a credential (a password inside a URL)")
    assert secret in message
    assert "pw-0123" not in message + result.output
    assert not kfp_api.calls("POST", "/pipelines/upload")
    assert not kfp_api.calls("POST", "/pipelines/upload_version")
    assert not kfp_api.calls("POST", "/runs")


@pytest.mark.parametrize(
    ("tag", "outcome"),
    [
        ("2.3.0", "refused"),  # <= 2.4.0: the driver fails every pod on `optional`
        ("v2.4.0", "refused"),
        ("2.4.1", "warned"),  # 2.4.1 - 2.14.x: `optional` dropped, every key required
        ("2.14.3", "warned"),
        ("unknown", "warned"),  # a build without TAG_NAME: cannot tell
        (None, "warned"),
        ("2.15.0", "quiet"),
        ("2.16.1-rc.1", "quiet"),
    ],
)
def test_backend_version_is_checked_before_anything_is_sent(kfp_api, caplog, tag, outcome):
    """The KFP API server's healthz reports its release tag (backend/src/apiserver/main.go);
    the stub answers with the tag a test sets, as that server would (no KFP backend can run
    here). submit refuses a backend that cannot run segloop's Secret mounts in one line, and
    names the keys a backend that ignores `optional` makes required."""
    kfp_api.tag_name = tag
    result = submit(kfp_api)
    if outcome == "refused":
        assert isinstance(result.exception, SegloopError), result.output
        message = str(result.exception)
        assert tag in message and "2.15.0 or later" in message and "\n" not in message
        assert not kfp_api.calls("POST", "/pipelines/upload") and not kfp_api.calls("POST", "/runs")
        return
    assert result.exit_code == 0, result.output + repr(result.exception)
    warned = [r.getMessage() for r in caplog.records if "ignores `optional`" in r.getMessage()]
    if outcome == "quiet":
        assert not warned
        return
    (line,) = warned
    assert "segloop-mlflow: MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD" in line
    assert "segloop-cvat: CVAT_USERNAME, CVAT_PASSWORD, CVAT_ACCESS_TOKEN" in line
    assert "segloop-s3" not in line  # its keys are required on every backend


def test_deploy_and_launch_refuse_an_old_backend_before_anything_else(kfp_api):
    from pipelines.lifecycle import deploy
    from pipelines.submit import make_client

    kfp_api.tag_name = "2.0.5"
    asked = []
    with pytest.raises(SegloopError, match="is 2.0.5: its driver rejects"):
        deploy(
            load_config(None),
            make_client(kfp_api.host),
            host=kfp_api.host,
            docker_problem=lambda: asked.append("docker") or None,
        )
    assert not asked and not kfp_api.calls("POST", "/pipelines/upload")
    launched = segloop("launch", "training", "--host", kfp_api.host, "--token", TOKEN)
    assert isinstance(launched.exception, SegloopError)
    assert "is 2.0.5: its driver rejects" in str(launched.exception)
    # Nothing but healthz reached the server (kfp.Client reads it too when it starts).
    assert {r.path for r in kfp_api.requests} == {"/apis/v2beta1/healthz"}


def test_shipped_secret_examples_carry_every_key_the_pods_reference():
    """A backend that ignores `optional` (KFP 2.4.1 - 2.14.x) makes every referenced key
    required: the shipped env examples hold them all, so the pods start there too."""

    root = REPO_ROOT / "manifests" / "secrets"
    secrets = load_config(None).kfp.env_from
    for ref, example in [
        (secrets.mlflow, root / "mlflow.env.example"),
        (secrets.cvat, root / "cvat.env.example"),
        (secrets.s3, root / "s3" / "s3.env.example"),
    ]:
        lines = [ln for ln in example.read_text().splitlines() if ln and not ln.startswith("#")]
        keys = {ln.partition("=")[0] for ln in lines}
        assert keys == {*ref.keys, *ref.optional_keys}, example.name
