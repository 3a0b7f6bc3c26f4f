"""MLflow model URIs resolve on the configured tracking server (issue #12 part 3, issue #14).

Fallback order: `mlflow.tracking_uri`, else `$MLFLOW_TRACKING_URI`, else SQLite under `stack.dir`
(never MLflow's own default, `./mlflow.db`; never SQLite inside a KFP task pod). A server that
does not answer is "cannot reach MLflow at <url>" within seconds. Every test here talks to the
session's real MLflow server (tests/conftest.py) or to a port where nothing listens.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.tracking._tracking_service import utils as mlflow_tracking_utils
from PIL import Image

from components.core import tracking
from components.core.checkpoint import load_checkpoint, log_checkpoint_to_mlflow, save_checkpoint
from components.core.errors import SegloopError
from components.core.model import ModelSpec, build_from_spec
from components.evaluate.stage import resolve_model, run_evaluate
from components.infer.stage import run_infer
from components.preprocess.stage import run_preprocess
from components.register.compare import run_compare
from pipelines.cli.infer import infer_command
from pipelines.config import load_config
from pipelines.demo.toydata import TOY_LABELS, write_toy_dataset
from pipelines.lifecycle import local_only_settings
from pipelines.stack.processes import HOST, free_port

# Far above the ~6 s the check takes, far below MLflow's own ~250 s of retries.
SERVER_DOWN_LIMIT_S = 60


@pytest.fixture(scope="module")
def registered(mlflow_server, s3_server):
    """A tiny segloop model logged on the real server, registered, alias `champion`.

    Logged with the server in the environment only while logging: the tests then start from an
    environment that names no server (conftest's autouse fixture) unless they set one.
    """
    name = f"uri-{uuid.uuid4().hex[:8]}"
    spec = ModelSpec(
        arch="Unet",
        encoder_name="resnet18",
        classes=3,
        labels=list(TOY_LABELS.labels),
        model_kwargs={"decoder_channels": [8, 8, 8, 8, 8]},
        tile_size=64,
    )
    torch.manual_seed(0)
    model = build_from_spec(spec).eval()
    with pytest.MonkeyPatch.context() as mp:
        import tempfile

        mp.setattr(mlflow_tracking_utils, "_tracking_uri", None)
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        for key, value in s3_server.env().items():
            mp.setenv(key, value)
        client = MlflowClient(mlflow_server)
        experiment = client.get_experiment_by_name("segloop-uri-test")
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment("segloop-uri-test")
        )
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(model, spec, Path(tmp) / "ckpt")
            with mlflow.start_run(experiment_id=experiment_id) as run:
                info = log_checkpoint_to_mlflow(model, spec, Path(tmp) / "ckpt", name="model")
        version = mlflow.register_model(info.model_uri, name)
        client.set_registered_model_alias(name, "champion", version.version)
    return {
        "server": mlflow_server,
        "name": name,
        "run_id": run.info.run_id,
        "version": version.version,
        "model_uri": info.model_uri,
    }


@pytest.fixture
def no_default(monkeypatch, tmp_path) -> Path:
    """MLflow left at its own default (nothing set in-process or in the environment) and a
    fresh current folder, where that default would create `mlflow.db`."""
    monkeypatch.setattr(mlflow_tracking_utils, "_tracking_uri", None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KFP_POD_NAME", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def images_dir(root: Path, n: int = 2) -> Path:
    folder = root / "imgs"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(
            folder / f"im{i}.png"
        )
    return folder


def infer_args(images: Path, out: Path, model: str, *more: str) -> list[str]:
    return [
        "--images",
        str(images),
        "--model",
        model,
        "--out",
        str(out),
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "-o",
        "stack.dir=" + str(out.parent / "stack"),
        *more,
    ]


def assert_no_stray_mlflow_files(cwd: Path) -> None:
    stray = [p.name for p in cwd.rglob("*") if p.name in ("mlflow.db", "mlruns", "mlartifacts")]
    assert not stray, f"MLflow's default store was used: {stray} in {cwd}"


# ---------------------------------------------------------------- infer


@pytest.mark.parametrize("how", ["override", "config-file"])
def test_infer_resolves_the_champion_on_the_configured_server(registered, no_default, how):
    root = no_default.parent
    images = images_dir(root)
    if how == "override":
        more = ["-o", f"mlflow.tracking_uri={registered['server']}"]
    else:
        config = root / "segloop.yaml"
        config.write_text(f"mlflow:\n  tracking_uri: {registered['server']}\n")
        more = ["-c", str(config)]
    uri = f"models:/{registered['name']}@champion"
    result = CliRunner().invoke(
        infer_command, infer_args(images, root / "out", uri, *more), catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "infer: 2 ok, 0 failed" in result.output
    metrics = json.loads((root / "out" / "metrics.json").read_text())
    assert metrics["model"] == uri
    assert (root / "out" / "masks" / "im0.png").is_file()
    assert_no_stray_mlflow_files(no_default)
    assert not (root / "stack").exists(), "the SQLite fallback was used"


def test_infer_resolves_on_mlflow_tracking_uri_from_the_environment(
    registered, no_default, monkeypatch
):
    root = no_default.parent
    images = images_dir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered["server"])
    for uri in (
        f"models:/{registered['name']}/{registered['version']}",
        f"runs:/{registered['run_id']}/model",
    ):
        out = root / f"out-{uri.split(':')[0]}"
        result = CliRunner().invoke(
            infer_command, infer_args(images, out, uri), catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        assert "infer: 2 ok, 0 failed" in result.output
    assert_no_stray_mlflow_files(no_default)


def test_the_config_wins_over_the_environment(registered, no_default, monkeypatch):
    """mlflow.tracking_uri first, $MLFLOW_TRACKING_URI second: a dead server in the environment
    does not matter when the config names the live one."""
    root = no_default.parent
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{HOST}:{free_port()}")
    cfg = load_config(
        None,
        [f"mlflow.tracking_uri={registered['server']}", f"stack.dir={root / 'stack'}"],
        extra={"infer": {"device": "cpu", "num_workers": 0}},
    )
    m = run_infer(
        cfg,
        images=str(images_dir(root)),
        out=str(root / "out"),
        model=f"models:/{registered['name']}@champion",
    )
    assert m["ok"] == 2
    assert_no_stray_mlflow_files(no_default)


def test_server_down_says_cannot_reach_within_seconds(no_default, monkeypatch):
    root = no_default.parent
    images = images_dir(root, n=1)
    down = f"http://{HOST}:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    start = time.monotonic()
    with pytest.raises(SegloopError) as caught:
        CliRunner().invoke(
            infer_command,
            infer_args(images, root / "out", "models:/nothing@champion"),
            catch_exceptions=False,
        )
    elapsed = time.monotonic() - start
    message = str(caught.value)
    assert f"cannot reach MLflow at {down}" in message
    assert "check the name, alias or version" not in message
    assert elapsed < SERVER_DOWN_LIMIT_S, f"took {elapsed:.1f} s"
    print(f"server down: error after {elapsed:.1f} s")
    assert_no_stray_mlflow_files(no_default)


def test_a_brief_hiccup_is_waited_out():
    """A server that starts listening a moment late (a restart) is not reported unreachable."""
    port = free_port()
    servers: list[http.server.ThreadingHTTPServer] = []

    def start_late() -> None:
        server = http.server.ThreadingHTTPServer((HOST, port), http.server.BaseHTTPRequestHandler)
        servers.append(server)
        server.serve_forever()

    starter = threading.Timer(1.5, start_late)
    starter.start()
    try:
        start = time.monotonic()
        tracking.ensure_reachable(f"http://{HOST}:{port}")  # any HTTP answer counts
        assert time.monotonic() - start >= 1.0
    finally:
        while not servers and starter.is_alive():
            time.sleep(0.05)
        for server in servers:
            server.shutdown()
            server.server_close()
        starter.join()


# ---------------------------------------------------------------- evaluate and compare


def test_evaluate_and_compare_use_the_configured_server(registered, no_default):
    root = no_default.parent
    overrides = [
        f"mlflow.tracking_uri={registered['server']}",
        f"stack.dir={root / 'stack'}",
        "preprocess.tile_size=64",
        "preprocess.test_fraction=0.3",
        "evaluate.log_to_mlflow=false",
        "evaluate.device=cpu",
    ]
    cfg = load_config(None, overrides)
    uri = f"models:/{registered['name']}@champion"
    assert resolve_model(uri, tracking.tracking_uri(cfg)) == (uri, registered["run_id"], uri)

    data = write_toy_dataset(root / "ds", n=8, seed=3, sizes=(64, 96))
    run_preprocess(cfg, inputs=[str(data)], out=str(root / "pre"))
    metrics = run_evaluate(cfg, model=uri, data=str(root / "pre"), out=str(root / "eval"))
    assert metrics["run_id"] == registered["run_id"]
    assert 0.0 <= metrics["mean_iou"] <= 1.0

    result = run_compare(cfg, out=str(root / "compare"), model=registered["name"])
    assert [row["version"] for row in result["rows"]] == [int(registered["version"])]
    assert result["rows"][0]["aliases"] == "champion"
    assert_no_stray_mlflow_files(no_default)
    assert not (root / "stack").exists(), "the SQLite fallback was used"


def test_compare_with_the_server_down_says_cannot_reach(no_default):
    down = f"http://{HOST}:{free_port()}"
    cfg = load_config(None, [f"mlflow.tracking_uri={down}"])
    start = time.monotonic()
    with pytest.raises(SegloopError, match=f"cannot reach MLflow at {down}"):
        run_compare(cfg, out=str(no_default.parent / "compare"), model="anything")
    assert time.monotonic() - start < SERVER_DOWN_LIMIT_S


# ---------------------------------------------------------------- fallbacks


def test_fallback_order(no_default, monkeypatch):
    stack = no_default.parent / "stack"
    cfg = load_config(None, [f"stack.dir={stack}", "mlflow.tracking_uri=http://configured:5000"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert tracking.tracking_uri(cfg) == "http://configured:5000"
    cfg = load_config(None, [f"stack.dir={stack}"])
    assert tracking.tracking_uri(cfg) == "http://from-env:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri(cfg) == f"sqlite:///{(stack / 'mlflow.db').resolve()}"


def test_in_a_pod_without_a_tracking_uri_it_fails_at_once_naming_the_secret(
    no_default, monkeypatch
):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KFP_POD_NAME", "weeds-training-abc-train-123")  # set by KFP's driver
    stack = no_default.parent / "stack"
    cfg = load_config(
        None, [f"stack.dir={stack}"], extra={"infer": {"device": "cpu", "num_workers": 0}}
    )
    for call in (
        lambda: tracking.tracking_uri(cfg),
        lambda: tracking.setup(cfg),
        lambda: tracking.client(cfg),
        lambda: run_infer(
            cfg,
            images=str(images_dir(no_default.parent, n=1)),
            out=str(no_default.parent / "out"),
            model="models:/m@champion",
        ),
    ):
        start = time.monotonic()
        with pytest.raises(SegloopError) as caught:
            call()
        assert time.monotonic() - start < 5
        message = str(caught.value)
        assert "pipeline task's pod" in message
        assert "'segloop-mlflow'" in message and "kfp.env_from.mlflow.name" in message
        assert "MLFLOW_TRACKING_URI" in message
    assert not stack.exists(), "a SQLite file was started inside the pod"
    assert_no_stray_mlflow_files(no_default)

    # The Secret's variable, or the config, is all a pod needs.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.kubeflow:5000")
    assert tracking.tracking_uri(cfg) == "http://mlflow.kubeflow:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    pinned = load_config(None, ["mlflow.tracking_uri=http://mlflow.kubeflow:5000"])
    assert tracking.tracking_uri(pinned) == "http://mlflow.kubeflow:5000"


def test_launch_warns_about_a_tracking_uri_only_this_machine_can_use():
    def listed(uri: str) -> bool:
        cfg = load_config(None, [f"mlflow.tracking_uri={uri}"])
        return f"mlflow.tracking_uri={uri}" in local_only_settings(cfg)

    assert listed("http://127.0.0.1:5000")
    assert listed("http://localhost:5000")
    assert listed("sqlite:///tmp/mlflow.db")
    assert not listed("http://mlflow.kubeflow.svc:5000")
    assert not listed("https://mlflow.example.org")
    assert not any(s.startswith("mlflow.") for s in local_only_settings(load_config(None, [])))


def test_load_checkpoint_takes_the_tracking_uri_explicitly(registered, no_default):
    for uri in (
        f"models:/{registered['name']}@champion",
        f"models:/{registered['name']}/{registered['version']}",
        registered["model_uri"],
        f"runs:/{registered['run_id']}/model",
    ):
        _, spec = load_checkpoint(uri, tracking_uri=registered["server"])
        assert spec.label_set.names == TOY_LABELS.names, uri
    with pytest.raises(SegloopError, match="no tracking server is set"):
        load_checkpoint(f"models:/{registered['name']}@champion")
    assert_no_stray_mlflow_files(no_default)


def test_other_pods_keep_the_sqlite_fallback(no_default, monkeypatch):
    """A notebook server or a CI runner on Kubernetes is not a pipeline task: its volume keeps
    the SQLite file, so the documented fallback stays."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    stack = no_default.parent / "stack"
    cfg = load_config(None, [f"stack.dir={stack}"])
    assert tracking.tracking_uri(cfg) == f"sqlite:///{(stack / 'mlflow.db').resolve()}"
