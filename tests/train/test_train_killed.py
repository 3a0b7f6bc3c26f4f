"""A train process stopped from outside ends its MLflow run: SIGTERM (how Kubernetes stops a
pod) ends it KILLED; SIGKILL (OOM, node loss) cannot, so the next train on the same output
marks the run it left RUNNING as FAILED. A real child process, a real MLflow server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from paths import REPO_ROOT  # tests/ is on sys.path

from components.core.tracking import OUTPUT_TAG
from components.preprocess.stage import run_preprocess
from components.train.stage import run_train
from pipelines.config import load_config
from pipelines.demo.toydata import write_toy_dataset

# A child process, a model and a server on a shared machine: more than the default 600 s.
pytestmark = pytest.mark.timeout(1500)
EXPERIMENT = "test-train-killed"
SETTINGS = {
    "mlflow": {"experiment": EXPERIMENT},
    "train": {
        "encoder_name": "resnet18",
        "model_kwargs": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
        "pad_divisor": 8,
        "batch_size": 4,
        "workers": 0,
        "amp": "off",
        "epochs": 1,
    },
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("killed-data")
    data = write_toy_dataset(root / "ds", n=8, seed=0, sizes=(64, 96))
    cfg = load_config(None, [f"stack.dir={root / 'stack'}", "preprocess.tile_size=64"])
    run_preprocess(cfg, inputs=[str(data)], out=str(root / "pre"))
    return root / "pre"


def start_training(tmp_path: Path, pre: Path, out: Path) -> subprocess.Popen:
    """`segloop train` in a child process, for many epochs (it is stopped long before)."""
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({**SETTINGS, "stack": {"dir": str(tmp_path / "stack")}}))
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines", "train", "-c", str(config), "--data", str(pre)]
        + ["--out", str(out), "--epochs", "10000"],
        cwd=REPO_ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def running_run(client: MlflowClient, out: Path, proc: subprocess.Popen, timeout_s: float = 480):
    """The child's MLflow run, once it is RUNNING with its output tagged."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:] if proc.stderr else ""
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            for run in client.search_runs([experiment.experiment_id]):
                if run.data.tags.get(OUTPUT_TAG) == str(out.resolve()):
                    if run.info.status == "RUNNING":
                        return run
        time.sleep(0.5)
    raise AssertionError("the child's MLflow run never started")


def stop(proc: subprocess.Popen, signum: int) -> int:
    try:
        proc.send_signal(signum)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def test_sigterm_ends_the_run_killed(prepared, mlflow_env, tmp_path):
    client = MlflowClient(mlflow_env)
    out = tmp_path / "train"
    proc = start_training(tmp_path, prepared, out)
    run = running_run(client, out, proc)
    assert stop(proc, signal.SIGTERM) == 143
    assert client.get_run(run.info.run_id).info.status == "KILLED"


def test_a_run_left_running_by_sigkill_is_failed_by_the_next_train(prepared, mlflow_env, tmp_path):
    client = MlflowClient(mlflow_env)
    out = tmp_path / "train"
    proc = start_training(tmp_path, prepared, out)
    stale = running_run(client, out, proc)
    assert stop(proc, signal.SIGKILL) == -signal.SIGKILL
    assert client.get_run(stale.info.run_id).info.status == "RUNNING"  # nothing ended it

    # The retry (as KFP's, on the same output) trains to the end; the stale run is FAILED.
    cfg = load_config(None, [f"stack.dir={tmp_path / 'stack'}"], extra=SETTINGS)
    metrics = run_train(cfg, data=str(prepared), out=str(out))
    assert metrics["run_id"] != stale.info.run_id
    ended = client.get_run(stale.info.run_id)
    assert ended.info.status == "FAILED"
    assert ended.data.tags["segloop.ended"] == "left running by a killed process"
    assert client.get_run(metrics["run_id"]).info.status == "FINISHED"
