"""`segloop init | deploy | launch`.

- init: each template's scaffold, whose own generated tests pass (run by pytest in a subprocess,
  as a user runs them); the `predictor` scaffold runs as it is with `segloop run pre_annotation`
  (KFP's local runner, real subprocesses), then installed with pip (its pyproject.toml) and run
  again by its `segloop.predictors` entry point name.
- deploy / launch: against the HTTP stub of the KFP API (tests/kfp_stub.py), because no KFP API
  server can run here (it needs Kubernetes); everything on the client side is the real
  kfp.Client. There is no Docker engine here either, so deploy's image step is tested for what
  it says and does without one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import segloop  # tests/ is on sys.path
from paths import REPO_ROOT  # tests/ is on sys.path

from components.config import config_from_json
from components.core.errors import SegloopError
from components.core.labels import LabelSet
from components.infer.stage import pipeline_model
from components.preprocess.stage import pipeline_inputs
from pipelines.compile import compiled_kfp, read_fingerprint
from pipelines.config import load_config
from pipelines.lifecycle import deploy, init_project, launch, local_only_settings
from pipelines.local import docker_engine_error
from pipelines.submit import make_client

TOKEN = "stub-bearer-token-lifecycle"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A clean folder to scaffold in (paths in run.yaml start at the current folder)."""
    monkeypatch.chdir(tmp_path)
    for key in ("AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "SEGLOOP_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


# ---------------------------------------------------------------- init


def test_every_template_scaffolds_and_its_own_tests_pass(workdir):
    for folder, template in [
        ("field", "pre_annotation"),
        ("loop", "training"),
        ("mine", "predictor"),
    ]:
        result = segloop("init", folder, "--template", template, "--demo-images", "0")
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert f"segloop run pre_annotation --config {folder}/run.yaml" in result.output
        cfg = load_config(workdir / folder / "run.yaml")  # the run config is valid as written
        assert cfg.project.name == folder and cfg.cvat.backend == "folder"
    assert load_config(workdir / "mine" / "run.yaml").infer.predictor == "mine/mine.py:build"
    assert (workdir / "loop" / "labels.yaml").exists()

    # The generated tests, run as a user runs them (own process, own rootdir).
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "field", "loop", "mine"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "5 passed" in done.stdout


def test_init_refuses_bad_names_and_non_empty_folders(workdir):
    (workdir / "taken").mkdir()
    (workdir / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(SegloopError, match="exists and is not empty.*--force"):
        init_project("taken", "pre_annotation", demo_images=0)
    init_project("taken", "pre_annotation", demo_images=0, force=True)
    assert (workdir / "taken" / "notes.txt").read_text() == "mine"
    with pytest.raises(SegloopError, match="project folder name '-x'"):
        init_project("-x", "pre_annotation", demo_images=0)
    result = segloop("init", "y", "--template", "nope")
    assert result.exit_code != 0 and "nope" in result.output


def test_init_where_the_demo_is_not_installed_says_so_and_writes_nothing(workdir, monkeypatch):
    # A component image leaves pipelines/demo out; None in sys.modules makes it unimportable.
    monkeypatch.setitem(sys.modules, "pipelines.demo.synthetic", None)
    with pytest.raises(SegloopError, match="demo and its synthetic data are not installed"):
        init_project(workdir / "proj", "training")
    assert not (workdir / "proj").exists()
    init_project(workdir / "proj", "training", demo_images=0)  # no demo data: works
    assert (workdir / "proj" / "run.yaml").exists()


def test_predictor_scaffold_runs_as_it_is_then_by_its_entry_point(workdir, monkeypatch):
    assert segloop("init", "weeds-pred", "--template", "predictor").exit_code == 0
    no_stack = ["-o", f"stack.dir={workdir / 'no-stack'}"]
    result = segloop("run", "pre_annotation", "--config", "weeds-pred/run.yaml", *no_stack)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "pipeline pre_annotation succeeded" in result.output
    run_dir = Path(result.output.split("run folder: ")[1].splitlines()[0])
    predictions = run_dir / "infer" / "predictions"
    assert len(list((predictions / "masks").glob("*.png"))) == 4
    assert LabelSet.load(predictions / "labels.json").names == ["background", "plant"]
    metrics = json.loads((predictions / "metrics.json").read_text())
    assert metrics["predictor"] == "weeds_pred" and metrics["ok"] == 4  # the scaffold's class
    (task,) = (workdir / "weeds-pred" / "annotation").glob("*/task.json")
    assert len(json.loads(task.read_text())["frames"]) == 4

    # Installed with pip (as in a component image), it is found by its entry point name.
    site = workdir / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "--target", str(site), "./weeds-pred"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert (site / "weeds_pred.py").exists()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    result = segloop(
        "run",
        "pre_annotation",
        "--config",
        "weeds-pred/run.yaml",
        "-o",
        "infer.predictor=weeds_pred",
        "-o",
        f"cvat.folder={workdir / 'annotation-2'}",
        *no_stack,
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    run_dir = Path(result.output.split("run folder: ")[1].splitlines()[0])
    metrics = json.loads((run_dir / "infer" / "predictions" / "metrics.json").read_text())
    # `weeds_pred` is neither registered nor a module path: only the entry point finds it.
    assert metrics["predictor"] == "weeds_pred" and metrics["ok"] == 4


# ---------------------------------------------------------------- deploy / launch


def test_deploy_uploads_versions_and_launch_runs_the_deployed_one(workdir, kfp_api):
    stub = kfp_api
    init_project("field", "pre_annotation", demo_images=0)
    cluster = ["--host", stub.host, "--token", TOKEN, "--config", "field/run.yaml"]

    first = segloop("deploy", "-p", "pre_annotation", "-p", "training", *cluster)
    assert first.exit_code == 0, first.output + repr(first.exception)
    if docker_engine_error() is not None:  # the case here: says so, skips, goes on
        assert "images not built" in first.output and "make push" in first.output
    assert "deployed pre_annotation as field-pre-annotation" in first.output
    assert len(stub.calls("POST", "/pipelines/upload")) == 2  # two new pipelines
    second = segloop("deploy", "-p", "pre_annotation", "--skip-images", *cluster)
    assert second.exit_code == 0, second.output
    (new_version,) = stub.calls("POST", "/pipelines/upload_version")
    assert new_version.query["name"].startswith("field-pre-annotation-")
    assert stub.runs == {}  # deploy starts nothing

    launched = segloop("launch", *cluster, "-o", "select.budget=3", "--run-name", "round-1")
    assert launched.exit_code == 0, launched.output + repr(launched.exception)
    assert "(deployed)" in launched.output
    (run_post,) = stub.calls("POST", "/runs")
    pid = next(p for p, v in stub.pipelines.items() if v["display_name"] == "field-pre-annotation")
    newest = stub.versions[pid][0]
    assert run_post.body["pipeline_version_reference"] == {
        "pipeline_id": pid,
        "pipeline_version_id": newest["pipeline_version_id"],
    }
    assert run_post.body["display_name"] == "round-1"
    cfg = config_from_json(run_post.body["runtime_config"]["parameters"]["config_json"])
    assert cfg.project.name == "field" and cfg.select.budget == 3
    assert cfg.infer.predictor == "exg"
    # The local paths of the run config are named: pods cannot read them.
    assert "warning: io.out_root=field/runs is on this machine" in launched.output
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in stub.requests)
    assert TOKEN not in launched.output + first.output


def test_launch_runs_the_launch_configs_run_time_values_and_refuses_other_kfp(
    workdir, kfp_api, caplog
):
    """Deploy with config A, launch with config B: B's run-time values (registered model, alias,
    datasets) reach the run through config_json, resolved by the components at run time; a
    compile-time `kfp` key that differs from the deployed version's is refused, named."""
    stub = kfp_api
    common = ["project.name=acme", "io.out_root=s3://b/runs", "db.url=postgresql://db/images"]
    cfg_a = load_config(
        None,
        [*common, "mlflow.registered_model=weeds-a", "preprocess.inputs=[s3://b/round0]"],
    )
    cfg_b = load_config(
        None,
        [
            *common,
            "mlflow.registered_model=weeds-b",
            "infer.model_alias=challenger",
            "preprocess.inputs=[s3://b/round0, s3://b/round1]",
            "select.budget=5",
            "kfp.local_root=/elsewhere",  # not compiled: no difference
        ],
    )
    client = make_client(stub.host)
    deployed = deploy(
        cfg_a, client, host=stub.host, pipelines=["pre_annotation", "training"], build_images=False
    )
    assert len(deployed.pipelines) == 2

    for pipeline in ("pre_annotation", "training"):
        launch(pipeline, cfg_b, client, host=stub.host)
    pre_run, training_run = (r.body for r in stub.calls("POST", "/runs"))
    for body in (pre_run, training_run):
        params = body["runtime_config"]["parameters"]
        assert set(params) == {"config_json"}  # model and datasets: from config_json
        run_cfg = config_from_json(params["config_json"])
        assert run_cfg.mlflow.registered_model == "weeds-b" and run_cfg.select.budget == 5
    # What the deployed graphs do with B's config_json: their defaults name no model and no
    # dataset, so the components resolve B's at run time.
    for pipeline, body in (("pre_annotation", pre_run), ("training", training_run)):
        ref = body["pipeline_version_reference"]
        (version,) = stub.versions[ref["pipeline_id"]]
        assert version["pipeline_version_id"] == ref["pipeline_version_id"]
        spec = next(yaml.safe_load_all(version["_package"]))
        defaults = spec["root"]["inputDefinitions"]["parameters"]
        # A's values are only in config_json's default, which every run replaces.
        assert "weeds-a" in defaults.pop("config_json")["defaultValue"]
        assert "weeds-a" not in json.dumps(spec) and "round0" not in json.dumps(spec)
        run_cfg = config_from_json(body["runtime_config"]["parameters"]["config_json"])
        if pipeline == "pre_annotation":
            assert defaults["model_uri"].get("defaultValue", "") == ""
            assert pipeline_model(run_cfg, "") == "models:/weeds-b@challenger"
        else:
            assert defaults["earlier_datasets"].get("defaultValue", []) == []
            assert pipeline_inputs(run_cfg, [], "this-round") == [
                "s3://b/round0",
                "s3://b/round1",
                "this-round",
            ]

    # A compile-time key that differs: refused before any run starts, each key named.
    cfg_c = load_config(
        None,
        [*common, "kfp.gpu.accelerator_count=2", "kfp.images.tag=other", "kfp.caching.train=false"],
    )
    with pytest.raises(SegloopError) as err:
        launch("pre_annotation", cfg_c, client, host=stub.host)
    message = str(err.value)
    assert "kfp.gpu.accelerator_count: compiled 1, this config 2" in message
    assert 'kfp.images.tag: compiled "' in message and 'this config "other"' in message
    assert "kfp.caching.train: compiled unset, this config false" in message
    assert "segloop deploy" in message and "--upload" in message
    assert len(stub.calls("POST", "/runs")) == 2
    # Through the CLI too.
    result = segloop(
        "launch",
        "pre_annotation",
        "--host",
        stub.host,
        *[f"-o{o}" for o in common],
        "-o",
        "kfp.gpu.accelerator_count=2",
    )
    assert isinstance(result.exception, SegloopError)
    assert "kfp.gpu.accelerator_count: compiled 1, this config 2" in str(result.exception)
    # --upload compiles this config now: nothing can differ.
    uploaded = launch("pre_annotation", cfg_c, client, host=stub.host, upload=True)
    assert uploaded.uploaded and len(stub.calls("POST", "/runs")) == 3
    # The new version's description records its settings (this stub keeps no version
    # descriptions, as a server that drops them): launch says it cannot check, and runs.
    (new_version,) = stub.calls("POST", "/pipelines/upload_version")
    assert read_fingerprint(new_version.query["description"]) == compiled_kfp(cfg_c)
    with caplog.at_level("WARNING", logger="pipelines.lifecycle"):
        launch("pre_annotation", cfg_b, client, host=stub.host)
    assert "records no compile-time kfp settings" in caplog.text
    assert len(stub.calls("POST", "/runs")) == 4


def test_launch_needs_a_deployment_or_upload(workdir, kfp_api):
    stub = kfp_api
    cluster = ["--host", stub.host, "-o", "project.name=fresh"]
    missing = segloop("launch", "training", *cluster)
    assert isinstance(missing.exception, SegloopError)
    assert "not deployed" in str(missing.exception) and "segloop deploy" in str(missing.exception)
    uploaded = segloop("launch", "training", "--upload", *cluster)
    assert uploaded.exit_code == 0, uploaded.output + repr(uploaded.exception)
    assert "(uploaded now)" in uploaded.output
    assert len(stub.calls("POST", "/pipelines/upload")) == 1 and len(stub.runs) == 1


def test_deploy_require_images_fails_without_docker(workdir, kfp_api):
    if docker_engine_error() is None:
        pytest.skip("a Docker engine answers here: the images would really be built")
    result = segloop("deploy", "--require-images", "--host", kfp_api.host)
    assert isinstance(result.exception, SegloopError)
    assert "--require-images: images not built" in str(result.exception)
    assert not stub_uploads(kfp_api)


def test_deploy_builds_and_pushes_where_docker_answers(workdir, kfp_api, monkeypatch):
    """No Docker engine runs here: a `docker` command on PATH that records its arguments stands
    in for the Docker CLI (the boundary), to check what deploy asks it to do and in what order."""
    bin_dir, calls = workdir / "bin", workdir / "docker-calls.txt"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    # `docker manifest inspect` answers FAKE_MANIFEST_EXIT: 1 (default) as for an image the
    # registry does not hold, 0 as for one it holds.
    fake.write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n'
        '[ "$1" = manifest ] && exit ${FAKE_MANIFEST_EXIT:-1}\n'
        "exit ${FAKE_DOCKER_EXIT:-0}\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    repo = REPO_ROOT  # the build context, with images/*.Dockerfile
    cfg = load_config(None, ["kfp.images.registry=registry.example/team", "kfp.images.tag=t1"])
    client = make_client(kfp_api.host)
    result = deploy(
        cfg,
        client,
        host=kfp_api.host,
        pipelines=["training"],
        context=repo,
        docker_problem=lambda: None,
    )
    assert result.images_built
    assert calls.read_text().splitlines() == [
        "manifest inspect registry.example/team/segloop:t1",
        "manifest inspect registry.example/team/segloop-cuda:t1",
        f"build -f {repo}/images/segloop.Dockerfile --target=cpu "
        f"-t registry.example/team/segloop:t1 {repo}",
        "push registry.example/team/segloop:t1",
        f"build -f {repo}/images/segloop.Dockerfile --target=cuda "
        f"--build-arg=TORCH_INDEX_URL= -t registry.example/team/segloop-cuda:t1 {repo}",
        "push registry.example/team/segloop-cuda:t1",
    ]
    assert [p["pipeline"] for p in result.pipelines] == ["training"]

    # A tag someone chose that the registry holds is not pushed again (it would move under
    # nodes that cached the old image); a per-build tag there is this code: not rebuilt.
    monkeypatch.setenv("FAKE_MANIFEST_EXIT", "0")
    calls.unlink()
    with pytest.raises(SegloopError, match="segloop:t1, .*segloop-cuda:t1 already in the registry"):
        deploy(cfg, client, host=kfp_api.host, context=repo, docker_problem=lambda: None)
    assert all(line.startswith("manifest inspect") for line in calls.read_text().splitlines())
    per_build = load_config(None, ["kfp.images.registry=registry.example/team"])
    again = deploy(
        per_build,
        client,
        host=kfp_api.host,
        pipelines=["training"],
        context=repo,
        docker_problem=lambda: None,
    )
    assert "in the registry already" in again.images_note
    assert not [c for c in calls.read_text().splitlines() if not c.startswith("manifest")]
    monkeypatch.delenv("FAKE_MANIFEST_EXIT")
    uploads = len(stub_uploads(kfp_api))

    monkeypatch.setenv("FAKE_DOCKER_EXIT", "1")
    with pytest.raises(SegloopError, match="`docker build .*` failed with exit status 1"):
        deploy(cfg, client, host=kfp_api.host, context=repo, docker_problem=lambda: None)
    with pytest.raises(SegloopError, match="segloop.Dockerfile does not exist.*--context"):
        deploy(cfg, client, host=kfp_api.host, context=workdir, docker_problem=lambda: None)
    assert len(stub_uploads(kfp_api)) == uploads  # a failed image step uploads nothing


def stub_uploads(stub) -> list:
    return stub.calls("POST", "/pipelines/upload") + stub.calls("POST", "/pipelines/upload_version")


def test_local_only_settings_are_listed():
    cfg = load_config(
        None,
        [
            "io.out_root=s3://b/p",
            "cvat.backend=folder",
            "cvat.folder=ann",
            "infer.predictor=x.py:b",
        ],
    )
    assert local_only_settings(cfg) == [
        "db.url=sqlite:///.segloop/images.db",
        "cvat.folder=ann",
        "infer.predictor=x.py:b",
    ]
