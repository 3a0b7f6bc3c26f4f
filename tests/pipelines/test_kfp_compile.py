"""Compiled pipeline YAML: loads back with KFP, parses into PipelineSpec, carries the platform
options from the config (GPU placement only on infer and train) and no secret values."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from google.protobuf import json_format
from kfp import components
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb2
from kfp.pipeline_spec import pipeline_spec_pb2
from paths import REPO_ROOT  # tests/ is on sys.path

from components.config import config_from_json
from components.core.errors import ConfigError, SegloopError
from components.infer.settings import REGISTERED_MODEL
from components.infer.stage import pipeline_model
from components.preprocess.stage import pipeline_inputs
from pipelines.cli import cli
from pipelines.compile import (
    check_no_credentials,
    compile_pipeline,
    compiled_kfp,
    kfp_differences,
    kfp_fingerprint,
    read_fingerprint,
)
from pipelines.config import load_config, run_config_json
from pipelines.settings import PIPELINE_NAMES, POD_LABELS, TASK_ENV

GPU_TASKS = {"infer", "train"}
STAGES_OF = {
    "pre_annotation": {"query", "infer", "select", "upload-cvat"},
    "training": {"download-cvat", "preprocess", "train", "evaluate", "register"},
}
STAGES_OF["active_learning"] = STAGES_OF["pre_annotation"] | STAGES_OF["training"] | {"loop-report"}

OVERRIDES = [
    "project.name=weeds",
    "kfp.pipeline_root=s3://ml-artifacts/segloop",
    "kfp.images.registry=registry.example.com/agri",
    "kfp.images.tag=1.2.3",
    "kfp.gpu.accelerator_type=nvidia.com/gpu",
    "kfp.gpu.accelerator_count=2",
    "kfp.gpu.node_selector={cloud.google.com/gke-accelerator: nvidia-l4, pool: gpu}",
    "kfp.gpu.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule},"
    " {key: dedicated, operator: Equal, value: ml, effect: NoExecute}]",
    "kfp.resources.train.memory_limit=64Gi",
    "kfp.env={AWS_REGION: eu-west-1}",
]
# Fake credentials in the environment of the compiling process: none may reach the YAML.
FAKE_SECRETS = {
    "AWS_ACCESS_KEY_ID": "FAKEKEYID0123456789",
    "AWS_SECRET_ACCESS_KEY": "fake-aws-secret-value-0123456789",
    "CVAT_PASSWORD": "fake-cvat-password-0123456789",
    "CVAT_ACCESS_TOKEN": "fake-cvat-token-0123456789",
    "MLFLOW_TRACKING_PASSWORD": "fake-mlflow-password-0123456789",
}


def parse(path: Path):
    """The IR YAML as (PipelineSpec, deployment config, {executor: KubernetesExecutorConfig})."""
    pipeline_doc, *rest = list(yaml.safe_load_all(path.read_text()))
    spec = json_format.ParseDict(pipeline_doc, pipeline_spec_pb2.PipelineSpec())
    deployment = json_format.ParseDict(
        json_format.MessageToDict(spec.deployment_spec),
        pipeline_spec_pb2.PipelineDeploymentConfig(),
    )
    k8s: dict[str, k8s_pb2.KubernetesExecutorConfig] = {}
    if rest:
        platform = json_format.ParseDict(rest[0], pipeline_spec_pb2.PlatformSpec())
        executors = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec).get(
            "executors", {}
        )
        k8s = {
            name: json_format.ParseDict(cfg, k8s_pb2.KubernetesExecutorConfig())
            for name, cfg in executors.items()
        }
    return spec, deployment, k8s


def secret_refs(platform) -> dict[str, set[str]]:
    """{Secret name: env vars} over all of a task's secretAsEnv entries."""
    refs: dict[str, set[str]] = {}
    for s in platform.secret_as_env:
        refs.setdefault(s.secret_name, set()).update(m.env_var for m in s.key_to_env)
    return refs


def required_keys(platform) -> dict[str, set[str]]:
    """{Secret name: env vars} of the entries that are not optional."""
    refs: dict[str, set[str]] = {}
    for s in platform.secret_as_env:
        keys = refs.setdefault(s.secret_name, set())
        if not s.optional:
            keys.update(m.env_var for m in s.key_to_env)
    return refs


def executor_of(spec, task: str) -> str:
    comp = spec.root.dag.tasks[task].component_ref.name
    return spec.components[comp].executor_label


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Every pipeline compiled once, with fake credentials in the environment."""
    out = tmp_path_factory.mktemp("compiled")
    mp = pytest.MonkeyPatch()
    for key, value in FAKE_SECRETS.items():
        mp.setenv(key, value)
    try:
        cfg = load_config(None, OVERRIDES)
        paths = {name: compile_pipeline(name, cfg, out / f"{name}.yaml") for name in PIPELINE_NAMES}
    finally:
        mp.undo()
    return cfg, paths


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_compiled_yaml_loads_back_and_parses(compiled, name):
    cfg, paths = compiled
    loaded = components.load_component_from_file(str(paths[name]))
    assert loaded.name == f"weeds-{name.replace('_', '-')}"
    spec, _, _ = parse(paths[name])
    assert set(spec.root.dag.tasks) == STAGES_OF[name]
    assert spec.default_pipeline_root == "s3://ml-artifacts/segloop"
    # The config travels as one parameter whose default is the compiled config's run-time
    # part: the compile-time `kfp` section is not in it (changing it there would do nothing).
    params = spec.root.input_definitions.parameters
    default = params["config_json"].default_value.string_value
    assert "kfp" not in json.loads(default)
    assert config_from_json(default).model_dump() == cfg.model_dump(exclude={"kfp"})


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_gpu_placement_only_on_infer_and_train(compiled, name):
    _, paths = compiled
    spec, deployment, k8s = parse(paths[name])
    for task in spec.root.dag.tasks:
        label = executor_of(spec, task)
        container = deployment.executors[label].container
        res = container.resources
        platform = k8s.get(label, k8s_pb2.KubernetesExecutorConfig())
        # Every task has requests and limits.
        assert res.resource_cpu_request and res.resource_cpu_limit, task
        assert res.resource_memory_request and res.resource_memory_limit, task
        if task in GPU_TASKS:
            assert res.accelerator.resource_type == "nvidia.com/gpu"
            # accelerator_count=2 is train's: infer runs one model on one device.
            assert res.accelerator.resource_count == ("2" if task == "train" else "1"), task
            assert dict(platform.node_selector.labels) == {
                "cloud.google.com/gke-accelerator": "nvidia-l4",
                "pool": "gpu",
            }
            tolerations = {(t.key, t.operator, t.value, t.effect) for t in platform.tolerations}
            assert tolerations == {
                ("nvidia.com/gpu", "Exists", "", "NoSchedule"),
                ("dedicated", "Equal", "ml", "NoExecute"),
            }
            assert container.image == "registry.example.com/agri/segloop-cuda:1.2.3"
        else:
            assert not res.accelerator.resource_type and not res.accelerator.resource_count, task
            assert not platform.node_selector.labels, task
            assert not platform.tolerations, task
            assert container.image == "registry.example.com/agri/segloop:1.2.3"
        if task == "train":
            assert res.resource_memory_limit == "64Gi"
        # The user's env adds to segloop's (writable HOME, caches and temp on emptyDir).
        assert {e.name: e.value for e in container.env} == {**TASK_ENV, "AWS_REGION": "eu-west-1"}
        # A tag can move: every task pulls it again rather than run a stale cached image.
        assert platform.image_pull_policy == "Always"
        mounts = {(m.mount_path, m.medium) for m in platform.empty_dir_mounts}
        shm = {("/dev/shm", "Memory")} if task in GPU_TASKS else set()
        assert mounts == {("/tmp", ""), ("/home/segloop", "")} | shm, task


def test_secrets_are_references_never_values(compiled):
    _, paths = compiled
    for name, path in paths.items():
        text = path.read_text()
        for value in FAKE_SECRETS.values():
            assert value not in text, f"{name}: a secret value leaked into the YAML"
        spec, _, k8s = parse(path)
        for task in spec.root.dag.tasks:
            refs = secret_refs(k8s[executor_of(spec, task)])
            assert refs["segloop-s3"] == {
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_ENDPOINT_URL",
            }
            assert ("segloop-cvat" in refs) == (task in {"upload-cvat", "download-cvat"}), task
            assert ("segloop-mlflow" in refs) == (
                task in {"infer", "train", "evaluate", "register", "loop-report"}
            ), task
            # Required by default: a missing Secret (or tracking URI / CVAT host) stops the pod
            # at once instead of letting it log into a SQLite file that dies with it. Only
            # the credentials of a server without auth may be absent.
            required = required_keys(k8s[executor_of(spec, task)])
            assert required["segloop-s3"] == refs["segloop-s3"]
            if "segloop-mlflow" in refs:
                assert refs["segloop-mlflow"] == {
                    "MLFLOW_TRACKING_URI",
                    "MLFLOW_TRACKING_USERNAME",
                    "MLFLOW_TRACKING_PASSWORD",
                }
                assert required["segloop-mlflow"] == {"MLFLOW_TRACKING_URI"}
            if "segloop-cvat" in refs:
                assert refs["segloop-cvat"] == {
                    "CVAT_HOST",
                    "CVAT_USERNAME",
                    "CVAT_PASSWORD",
                    "CVAT_ACCESS_TOKEN",
                }
                assert required["segloop-cvat"] == {"CVAT_HOST"}
            # The label the manifests' NetworkPolicy admits to MLflow.
            labels = dict(k8s[executor_of(spec, task)].pod_metadata.labels)
            assert labels == POD_LABELS, task


def test_caching_and_retries_per_stage(compiled):
    _, paths = compiled
    spec, _, _ = parse(paths["active_learning"])
    tasks = spec.root.dag.tasks
    uncached = {"query", "upload-cvat", "download-cvat", "register", "loop-report"}
    for name, task in tasks.items():
        assert task.caching_options.enable_cache == (name not in uncached), name
        if name in uncached:  # the stages that talk to the DB, CVAT and the MLflow registry
            assert task.retry_policy.max_retry_count == 3
            assert task.retry_policy.backoff_factor == 2.0
        else:
            assert task.retry_policy.max_retry_count == 0, name
    # Pre-annotation starts after register, with the champion; the loop report reads the
    # registry after register and this round's download.
    assert "register" in tasks["query"].dependent_tasks
    assert {"register", "download-cvat"} <= set(tasks["loop-report"].dependent_tasks)
    # The champion's name is not compiled in: infer resolves it from the run's config_json.
    model = tasks["infer"].inputs.parameters["model_uri"].runtime_value.constant.string_value
    assert model == REGISTERED_MODEL
    assert "weeds@champion" not in paths["active_learning"].read_text()


def test_what_a_run_can_change_is_resolved_from_its_config_at_run_time(compiled):
    """Model and earlier datasets are no compile-time defaults: the components resolve them from
    the run's config_json (an explicit non-empty parameter still wins)."""
    _, paths = compiled
    for name, param, empty in [
        ("pre_annotation", "model_uri", ""),
        ("training", "earlier_datasets", []),
        ("active_learning", "earlier_datasets", []),
    ]:
        spec, _, _ = parse(paths[name])
        default = json_format.MessageToDict(spec.root.input_definitions.parameters[param])
        assert default.get("defaultValue", "") == empty, (name, default)

    run = config_from_json(
        run_config_json(
            load_config(
                None,
                [
                    "project.name=other",
                    "mlflow.registered_model=weeds-b",
                    "infer.model_alias=challenger",
                    "preprocess.inputs=[s3://d/round0, s3://d/round1]",
                ],
            )
        )
    )
    assert pipeline_model(run, "") == "models:/weeds-b@challenger"
    assert pipeline_model(run, REGISTERED_MODEL) == "models:/weeds-b@challenger"
    assert pipeline_model(run, "s3://m/ckpt") == "s3://m/ckpt"  # an explicit parameter wins
    by_project = config_from_json(run_config_json(load_config(None, ["project.name=other"])))
    assert pipeline_model(by_project, "") == "models:/other@champion"
    with_model = run.model_copy(update={"infer": run.infer.model_copy(update={"model": "m/x"})})
    assert pipeline_model(with_model, "") == "m/x"
    # active_learning pre-annotates with the champion even when infer.model is set.
    assert pipeline_model(with_model, REGISTERED_MODEL) == "models:/weeds-b@challenger"
    exg = run.model_copy(update={"infer": run.infer.model_copy(update={"predictor": "exg"})})
    assert pipeline_model(exg, "") is None
    assert pipeline_inputs(run, [], "dl") == ["s3://d/round0", "s3://d/round1", "dl"]
    assert pipeline_inputs(run, ["s3://d/x"], "dl") == ["s3://d/x", "dl"]


def test_compile_time_kfp_settings_round_trip_and_differences_name_the_keys():
    deployed = load_config(None, OVERRIDES)
    recorded = read_fingerprint(f"segloop training\n{kfp_fingerprint(deployed)}")
    assert recorded == compiled_kfp(deployed)
    # Where submit goes and where `segloop run` writes are not compiled: no difference.
    same = load_config(None, [*OVERRIDES, "kfp.host=https://k", "kfp.local_root=/x"])
    assert kfp_differences(recorded, same) == []
    other = load_config(
        None, [*OVERRIDES, "kfp.gpu.accelerator_count=4", "kfp.resources.infer.cpu_limit=8"]
    )
    assert kfp_differences(recorded, other) == [
        "kfp.gpu.accelerator_count: compiled 2, this config 4",
        'kfp.resources.infer.cpu_limit: compiled unset, this config "8"',
    ]
    assert read_fingerprint("segloop training") is None
    assert read_fingerprint("segloop-kfp: not-base64!") is None


def test_credentials_in_plain_env_are_refused():
    cfg = load_config(None, ["kfp.env={CVAT_PASSWORD: x}"])
    with pytest.raises(SegloopError, match=r"^kfp.env.CVAT_PASSWORD holds a credential.*Secret"):
        check_no_credentials(cfg)


def test_cli_compile_with_overrides(tmp_path):
    out = tmp_path / "build" / "training.yaml"
    result = CliRunner().invoke(
        cli,
        [
            "compile",
            "training",
            "--output",
            str(out),
            "-o",
            "kfp.gpu.accelerator_count=4",
            "-o",
            "kfp.caching.train=false",
            "-o",
            "kfp.env_from.cvat.name=team-cvat",
        ],
    )
    assert result.exit_code == 0, result.output
    spec, deployment, k8s = parse(out)
    # Renaming a Secret keeps its default keys and stages.
    refs = secret_refs(k8s[executor_of(spec, "download-cvat")])
    assert sorted(refs["team-cvat"]) == [
        "CVAT_ACCESS_TOKEN",
        "CVAT_HOST",
        "CVAT_PASSWORD",
        "CVAT_USERNAME",
    ]
    assert required_keys(k8s[executor_of(spec, "download-cvat")])["team-cvat"] == {"CVAT_HOST"}
    res = deployment.executors[executor_of(spec, "train")].container.resources
    assert res.accelerator.resource_count == "4"
    assert not spec.root.dag.tasks["train"].caching_options.enable_cache
    # kfp.* is compiled into the tasks above and is not part of what a run can change.
    config = json.loads(
        spec.root.input_definitions.parameters["config_json"].default_value.string_value
    )
    assert "kfp" not in config


def test_a_config_with_credentials_is_not_compiled(tmp_path):
    cfg = load_config(None, ["db.url=postgresql://segloop:hunter2@db.example.com/images"])
    with pytest.raises(SegloopError, match="PGPASSWORD"):
        compile_pipeline("pre_annotation", cfg, tmp_path / "p.yaml")
    assert not (tmp_path / "p.yaml").exists()
    # Without the password (libpq reads PGPASSWORD from a Secret) it compiles.
    cfg = load_config(None, ["db.url=postgresql://segloop@db.example.com/images"])
    compile_pipeline("pre_annotation", cfg, tmp_path / "p.yaml")


@pytest.mark.parametrize(
    ("override", "key", "secret"),
    [
        (
            "mlflow.tracking_uri=https://u:pw@mlflow.example.com",
            "mlflow.tracking_uri",
            "segloop-mlflow",
        ),
        ("cvat.host=https://bot:pw@cvat.example.com", "cvat.host", "segloop-cvat"),
        ("io.out_root=s3://bucket/x?X-Amz-Credential=AKIA123", "io.out_root", "segloop-s3"),
        ("kfp.host=https://admin:pw@kfp.example.com", "kfp.host", "--token"),
        ("db.url=postgresql://u:pass/word@db/images", "db.url", "PGPASSWORD"),
    ],
)
def test_a_password_in_any_url_is_not_compiled(tmp_path, override, key, secret):
    cfg = load_config(None, [override])
    with pytest.raises(SegloopError) as err:
        compile_pipeline("training", cfg, tmp_path / "t.yaml")
    message = str(err.value)
    assert message.startswith(f"{key} holds a credential") and secret in message
    assert "pw" not in message.replace("password", "")  # the value itself is not echoed
    assert not (tmp_path / "t.yaml").exists()


def test_credential_checks_cover_run_parameters_and_secret_like_keys():
    cfg = load_config(None, ["mlflow.tracking_uri=https://mlflow.example.com:5000/x@y"])
    check_no_credentials(cfg)  # a port and an @ in the path: no password
    with pytest.raises(SegloopError, match=r"parameter model_uri holds a credential \(a password"):
        check_no_credentials(cfg, {"model_uri": "https://u:pw@host/model.pt"})
    cfg = load_config(None, ["kfp.pod_labels={api_token: abc}"])
    with pytest.raises(
        SegloopError, match=r"kfp.pod_labels.api_token holds a credential \(a value"
    ):
        check_no_credentials(cfg)


def test_gpu_stages_without_gpus_get_the_cpu_image(tmp_path):
    cfg = load_config(
        None,
        [
            "kfp.images.registry=registry.example.com/agri",
            "kfp.images.tag=1.2.3",
            "kfp.gpu.accelerator_count=0",
        ],
    )
    path = compile_pipeline("active_learning", cfg, tmp_path / "al.yaml")
    spec, deployment, k8s = parse(path)
    for task in spec.root.dag.tasks:
        container = deployment.executors[executor_of(spec, task)].container
        assert container.image == "registry.example.com/agri/segloop:1.2.3", task
        assert not container.resources.accelerator.resource_count, task
        assert not k8s[executor_of(spec, task)].tolerations, task


def test_mlflow_and_cvat_secrets_can_be_marked_optional(tmp_path):
    cfg = load_config(
        None, ["kfp.env_from.mlflow.optional=true", "kfp.env_from.cvat.optional=true"]
    )
    path = compile_pipeline("training", cfg, tmp_path / "t.yaml")
    spec, _, k8s = parse(path)
    for task in ("download-cvat", "train", "register"):
        required = required_keys(k8s[executor_of(spec, task)])
        assert required["segloop-s3"]  # the others keep their default
        assert not required.get("segloop-mlflow") and not required.get("segloop-cvat"), task


@pytest.mark.parametrize("name", ["pre_annotation", "active_learning"])
def test_infer_shards_fan_out_over_gpu_tasks_and_merge_on_the_cpu(tmp_path, name):
    """`infer.shards=3`: a ParallelFor over shard indices 0..2 runs `infer-shard` (GPU), then
    `infer-merge` (CPU) collects their predictions for select; `infer.shards=1` is one infer task."""
    cfg = load_config(None, [*OVERRIDES, "infer.shards=3"])
    spec, deployment, k8s = parse(compile_pipeline(name, cfg, tmp_path / f"{name}.yaml"))
    tasks = spec.root.dag.tasks
    (loop,) = [t for t in tasks if t.startswith("for-loop-")]
    assert set(tasks) == (STAGES_OF[name] - {"infer"}) | {loop, "infer-merge"}
    assert tasks[loop].WhichOneof("iterator") == "parameter_iterator"
    assert json.loads(tasks[loop].parameter_iterator.items.raw) == [0, 1, 2]
    assert set(tasks[loop].dependent_tasks) == {"query"}
    body = spec.components[tasks[loop].component_ref.name].dag.tasks
    assert set(body) == {"infer-shard"}
    shard = body["infer-shard"]
    assert shard.inputs.parameters["shards"].runtime_value.constant.number_value == 3
    assert shard.inputs.parameters["shard"].component_input_parameter.startswith(
        "pipelinechannel--loop-item-param"
    )
    assert shard.inputs.artifacts["records"].component_input_artifact
    # The merge collects the loop's predictions (one list) and feeds select.
    merge = tasks["infer-merge"]
    collected = merge.inputs.artifacts["shards"].task_output_artifact
    assert collected.producer_task == loop
    assert collected.output_artifact_key == "pipelinechannel--infer-shard-predictions"
    assert set(merge.dependent_tasks) == {loop, "query"}
    merge_spec = spec.components[merge.component_ref.name]
    assert merge_spec.input_definitions.artifacts["shards"].is_artifact_list
    assert tasks["select"].inputs.artifacts["predictions"].task_output_artifact.producer_task == (
        "infer-merge"
    )
    # Each shard task gets the GPU placement; the merge runs on the CPU image without it.
    shard_label = spec.components[shard.component_ref.name].executor_label
    merge_label = merge_spec.executor_label
    shard_res = deployment.executors[shard_label].container.resources
    assert shard_res.accelerator.resource_type == "nvidia.com/gpu"
    # accelerator_count=2 is train's: each shard runs one model on one GPU.
    assert shard_res.accelerator.resource_count == "1"
    assert deployment.executors[shard_label].container.image.startswith(
        "registry.example.com/agri/segloop-cuda:"
    )
    assert dict(k8s[shard_label].node_selector.labels)["pool"] == "gpu"
    merge_container = deployment.executors[merge_label].container
    assert not merge_container.resources.HasField("accelerator")
    assert (
        merge_container.resources.resource_cpu_limit
        and merge_container.resources.resource_memory_limit
    )
    assert merge_container.image.startswith("registry.example.com/agri/segloop:")
    merge_k8s = k8s.get(merge_label, k8s_pb2.KubernetesExecutorConfig())
    assert not merge_k8s.node_selector.labels and not merge_k8s.tolerations
    assert shard.task_info.name == "infer-shard" and merge.task_info.name == "infer-merge"

    # One shard (the default) compiles to exactly today's graph: one infer task, no loop.
    single = load_config(None, [*OVERRIDES, "infer.shards=1"])
    one, _, _ = parse(compile_pipeline(name, single, tmp_path / f"{name}-1.yaml"))
    assert set(one.root.dag.tasks) == STAGES_OF[name]
    assert one.root.dag.tasks["infer"].component_ref.name == "comp-infer"


def test_user_labels_env_and_gpu_counts_add_to_segloops_own(tmp_path):
    """`-o kfp.pod_labels.team=vision` adds a label: every pod keeps the ones the MLflow
    NetworkPolicy admits. A user value that would replace one of segloop's is refused in one
    line. GPU counts are per stage: train N, infer (each shard) 1, unless a stage is named."""
    cfg = load_config(
        None,
        ["kfp.pod_labels.team=vision", "kfp.env.AWS_REGION=eu-west-1", *OVERRIDES[4:6]],
    )
    assert cfg.kfp.pod_labels == {**POD_LABELS, "team": "vision"}
    spec, deployment, k8s = parse(compile_pipeline("training", cfg, tmp_path / "t.yaml"))
    for task in spec.root.dag.tasks:
        label = executor_of(spec, task)
        assert dict(k8s[label].pod_metadata.labels) == {**POD_LABELS, "team": "vision"}, task
        env = {e.name: e.value for e in deployment.executors[label].container.env}
        assert env == {**TASK_ENV, "AWS_REGION": "eu-west-1"}, task
    with pytest.raises(ConfigError, match="would replace segloop's own"):
        load_config(None, ["kfp.pod_labels={app.kubernetes.io/component: trainer}"])
    with pytest.raises(ConfigError, match="set by segloop on every task"):
        load_config(None, ["kfp.env.HOME=/root"])
    with pytest.raises(ConfigError, match="not valid Kubernetes labels"):
        load_config(None, ["kfp.pod_labels.team=vision team"])
    # A limit below the stage's default request would make a pod Kubernetes rejects.
    low = load_config(None, ["kfp.resources.train.memory_limit=8Gi"])
    with pytest.raises(SegloopError, match=r"kfp.resources.train: memory request 16Gi is above"):
        compile_pipeline("training", low, tmp_path / "low.yaml")
    # Threads follow each task's CPU limit; a fixed count above a limit is refused.
    fixed = load_config(None, ["kfp.env.SEGLOOP_CPU_THREADS=4"])
    with pytest.raises(
        SegloopError, match=r"SEGLOOP_CPU_THREADS='4' does not fit \w+'s CPU limit 2"
    ):
        compile_pipeline("training", fixed, tmp_path / "fixed.yaml")

    counts = load_config(None, ["kfp.gpu.accelerator_count=4", "kfp.gpu.stage_counts.train=8"])
    assert counts.kfp.gpu.stage_counts == {"infer": 1, "train": 8}  # infer's 1 is kept
    spec, deployment, _ = parse(compile_pipeline("active_learning", counts, tmp_path / "a.yaml"))
    for task, want in [("train", "8"), ("infer", "1")]:
        res = deployment.executors[executor_of(spec, task)].container.resources
        assert res.accelerator.resource_count == want, task


def test_images_are_compiled_by_references_that_cannot_move(tmp_path):
    """Unset, the tag is one per build (version + hash of the code the image installs), which
    never names two images: pulled IfNotPresent. A tag someone chose can move: pulled Always.
    By digest: IfNotPresent."""
    from components.core.version import segloop_version
    from components.images import NOT_IN_IMAGES, build_tag, code_hash

    tag = build_tag()
    assert re.fullmatch(rf"{re.escape(segloop_version())}-[0-9a-f]{{12}}", tag)
    cases = [
        ([], f"ghcr.io/segloop/segloop:{tag}", "IfNotPresent"),
        (["kfp.images.tag=1.2.3"], "ghcr.io/segloop/segloop:1.2.3", "Always"),
        (
            ["kfp.images.pull_policy=Never", "kfp.images.tag=x"],
            "ghcr.io/segloop/segloop:x",
            "Never",
        ),
        (
            [
                f"kfp.images.cpu=r.example/s@sha256:{'a' * 64}",
                f"kfp.images.cuda=r.example/c@sha256:{'b' * 64}",
            ],
            f"r.example/s@sha256:{'a' * 64}",
            "IfNotPresent",
        ),
    ]
    for overrides, image, policy in cases:
        cfg = load_config(None, ["kfp.gpu.accelerator_count=0", *overrides])
        spec, deployment, k8s = parse(compile_pipeline("training", cfg, tmp_path / "t.yaml"))
        label = executor_of(spec, "evaluate")
        assert deployment.executors[label].container.image == image, overrides
        assert k8s[label].image_pull_policy == policy, overrides

    # The hash follows every byte and path of the packages, and nothing else.
    for package in ("components", "pipelines"):
        (tmp_path / "src" / package).mkdir(parents=True)
        (tmp_path / "src" / package / "a.py").write_text("x = 1\n")
    before = code_hash(tmp_path / "src")
    (tmp_path / "src" / "README.md").write_text("not installed")
    (tmp_path / "src" / "components" / "__pycache__").mkdir()
    (tmp_path / "src" / "components" / "__pycache__" / "a.pyc").write_bytes(b"\0")
    assert code_hash(tmp_path / "src") == before
    # The demo scaffolding is not in the images (.dockerignore), so not in their hash either.
    (tmp_path / "src" / "pipelines" / "demo").mkdir()
    (tmp_path / "src" / "pipelines" / "demo" / "run.py").write_text("x = 3\n")
    assert code_hash(tmp_path / "src") == before
    dockerignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert all(left_out in dockerignore for left_out in NOT_IN_IMAGES)
    (tmp_path / "src" / "pipelines" / "a.py").write_text("x = 2\n")
    assert code_hash(tmp_path / "src") != before
