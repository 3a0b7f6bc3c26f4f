"""`segloop run`: whole pipelines on KFP's local SubprocessRunner, each task a real subprocess
running the component body, against real SeaweedFS (S3) and MLflow servers, with the `folder`
annotation backend in place of CVAT. Small on purpose: 64 px images, a tiny Unet, one epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from kfp_helpers import tiny_project  # tests/ is on sys.path (rootdir-relative imports)
from mlflow import MlflowClient

from components.core.errors import SegloopError
from pipelines.cli import cli
from pipelines.config import load_config
from pipelines.local import docker_engine_error, run_local

pytestmark = pytest.mark.e2e


@pytest.fixture
def project(tmp_path, s3, mlflow_env):
    """A synthetic image DB + images in S3, a tiny untrained checkpoint, and the run config."""
    tiny = tiny_project(f"s3://{s3.bucket}/kfp-local/data", tmp_path, images=8, seed=3)
    overrides = [
        *tiny.overrides,
        "project.name=kfplocal",
        f"stack.dir={tmp_path / 'no-stack'}",
        f"kfp.local_root={tmp_path / 'kfp'}",
        "select.budget=6",
        "upload_cvat.if_exists=new",  # round 1 adds new tasks next to round 0's
        "preprocess.val_fraction=0.2",
        "preprocess.test_fraction=0.2",
    ]
    return {"overrides": overrides, "model": str(tiny.model_dir), "tmp": tmp_path}


def _people_complete_the_tasks(folder: Path) -> int:
    """Stand-in for people: they accept the pre-annotations and mark each task completed."""
    done = 0
    for task_json in folder.glob("*/task.json"):
        task = json.loads(task_json.read_text())
        task["status"] = "completed"
        task_json.write_text(json.dumps(task))
        done += 1
    return done


def test_pre_annotation_then_training_on_the_local_runner(project, capfd):
    args = [f"-o{o}" for o in project["overrides"]]
    result = CliRunner().invoke(
        cli, ["run", "pre_annotation", "--model-uri", project["model"], *args]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "pipeline pre_annotation succeeded" in result.output
    run_dir = Path(result.output.split("run folder: ")[1].splitlines()[0])
    # Each task's outputs are where the summary says, in the documented layouts.
    records = run_dir / "query" / "records"
    assert (records / "records.jsonl").read_text().count("\n") == 8
    predictions = run_dir / "infer" / "predictions"
    assert len(list((predictions / "masks").glob("*.png"))) == 8
    selected = run_dir / "select" / "selected"
    assert (selected / "selected.jsonl").read_text().count("\n") == 6
    tasks_dir = run_dir / "upload-cvat" / "tasks"
    assert (tasks_dir / "tasks.json").exists()
    assert str(tasks_dir) in result.output

    assert _people_complete_the_tasks(project["tmp"] / "annotation") >= 1

    # One active-learning round: train on the refined masks, register, then pre-annotate the
    # next batch with the champion from the MLflow registry.
    cfg = load_config(None, [*project["overrides"], f"download_cvat.upload_dir={tasks_dir}"])
    round1 = run_local("active_learning", cfg)
    assert [t.name for t in round1.tasks] == sorted(
        ["download-cvat", "preprocess", "train", "evaluate", "register", "loop-report"]
        + ["query", "infer", "select", "upload-cvat"]
    )
    model_dir = Path(round1.task("train").outputs["model"])
    assert (model_dir / "best" / "model.json").exists()
    assert round1.task("download-cvat").metrics, "KFP recorded the stage's metrics"
    report = Path(round1.task("evaluate").outputs["report"]).read_text()
    assert "<img" in report
    registration = Path(round1.task("register").outputs["registration"])
    decision = json.loads((registration / "register.json").read_text())
    assert decision["promoted"] is True and decision["version"] == 1
    champion = MlflowClient().get_model_version_by_alias("kfplocal", "champion")
    assert champion.version == "1"
    # The second pre-annotation used that champion.
    predictions = Path(round1.task("infer").outputs["predictions"])
    assert json.loads((predictions / "metrics.json").read_text())["model"] == (
        "models:/kfplocal@champion"
    )
    # The loop report is an HTML output of its own: round 1 = version 1, the champion.
    loop = Path(round1.task("loop-report").outputs["report"]).read_text()
    assert "registered model kfplocal" in loop and "champion" in loop and "<img" in loop
    summary = round1.summary()
    assert "pipeline active_learning succeeded" in summary and str(model_dir) in summary


def test_a_run_pre_annotates_with_the_model_its_config_json_names(project):
    """One pipeline compiled with config A (registered model `kfplocal-a`) and run with the
    config_json of config B (`kfplocal-b` at alias `challenger`): infer resolves the model from
    the run's config_json, so B's model pre-annotates, not the compiled name."""
    from kfp import local

    from components.core import tracking
    from components.core.checkpoint import load_checkpoint, log_checkpoint_to_mlflow
    from pipelines.config import run_config_json
    from pipelines.graphs import build

    cfg_a = load_config(None, [*project["overrides"], "mlflow.registered_model=kfplocal-a"])
    cfg_b = load_config(
        None,
        [
            *project["overrides"],
            "mlflow.registered_model=kfplocal-b",
            "infer.model_alias=challenger",
        ],
    )
    # Two tiny models, registered under the two names in the real MLflow server.
    mlflow = tracking.setup(cfg_a)
    model, spec = load_checkpoint(project["model"])
    for name, alias in (("kfplocal-a", "champion"), ("kfplocal-b", "challenger")):
        with mlflow.start_run():
            info = log_checkpoint_to_mlflow(model, spec, project["model"], name="model")
        version = mlflow.register_model(info.model_uri, name)
        MlflowClient().set_registered_model_alias(name, alias, version.version)

    root = project["tmp"] / "kfp-a-run-b"
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True
    )
    build("pre_annotation", cfg_a)(config_json=run_config_json(cfg_b))
    (run_dir,) = root.glob("kfplocal-pre-annotation-*")
    predictions = run_dir / "infer" / "predictions"
    metrics = json.loads((predictions / "metrics.json").read_text())
    assert metrics["model"] == "models:/kfplocal-b@challenger"
    assert metrics["ok"] == 8 and len(list((predictions / "masks").glob("*.png"))) == 8


def test_failure_names_the_task(project):
    """A stage that fails (no model to pre-annotate with) fails the run with a clear error."""
    cfg = load_config(None, project["overrides"])
    with pytest.raises(SegloopError, match="failed on the local runner"):
        run_local("pre_annotation", cfg, params={"model_uri": str(project["tmp"] / "missing")})


def test_smoke_test_without_docker_engine_says_so(tmp_path):
    if docker_engine_error() is None:
        pytest.skip("a Docker engine answers here: the smoke test would really run")
    result = CliRunner().invoke(cli, ["smoke-test", "training", "-o", f"kfp.local_root={tmp_path}"])
    assert result.exit_code != 0
    assert isinstance(result.exception, SegloopError)
    message = str(result.exception)
    assert "needs a Docker engine" in message and "segloop run training" in message


def test_run_output_is_one_line_per_task_with_logs_in_files(tmp_path):
    """The runner's stream (as KFP's local runner prints it, colours included) becomes one line
    per task; each task's whole log, executor input too, goes to its own file."""
    import io

    from pipelines.task_logs import TaskLogRouter

    out = io.StringIO()
    router = TaskLogRouter(out, "training", tmp_path / "logs")
    router.write("12:00:00.000 - INFO - Executing task \x1b[96m'train'\x1b[0m\n")
    router.write("    [KFP Executor INFO]: Got executor_input:\n    {\n")
    router.write('        "parameterValues": {"config_json": "{}"}\n    }\n')
    router.write("    epoch 1/3: loss 0.9\n")
    router.write("12:00:01.000 - INFO - Task \x1b[96m'train'\x1b[0m finished with status ")
    router.write("\x1b[92mSUCCESS\x1b[0m\n")
    router.write("12:00:01.000 - INFO - Executing task 'evaluate'\n")
    router.write("    Traceback: no model at s3://x\n")
    router.write("12:00:02.000 - ERROR - Task 'evaluate' finished with status FAILURE\n")
    router.close()
    shown = out.getvalue().splitlines()
    assert shown[0].split() == ["training", "train", "ok", shown[0].split()[3], "s"]
    assert shown[1].split()[:3] == ["training", "evaluate", "failure"]
    assert f"its log: {tmp_path / 'logs' / 'evaluate.log'}" in shown[2]
    assert shown[-1].startswith("    | ") and shown[-1].endswith("Traceback: no model at s3://x")
    assert "config_json" not in out.getvalue() and "epoch" not in out.getvalue()
    train_log = (tmp_path / "logs" / "train.log").read_text()
    assert "config_json" in train_log and "epoch 1/3" in train_log and "\x1b" not in train_log
    assert "no model" in (tmp_path / "logs" / "evaluate.log").read_text()


def test_verbose_run_output_streams_everything(tmp_path):
    import io

    from pipelines.task_logs import TaskLogRouter

    out = io.StringIO()
    router = TaskLogRouter(out, "training", tmp_path / "logs", verbose=True)
    router.write(
        "Executing task 'train'\n    epoch 1/3\nTask 'train' finished with status SUCCESS\n"
    )
    router.close()
    assert "epoch 1/3" in out.getvalue()
    assert "epoch 1/3" in (tmp_path / "logs" / "train.log").read_text()
