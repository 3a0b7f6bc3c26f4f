"""Config section `kfp`: how pipelines are compiled, run and submitted.

One config file drives the CLI, the local run and the cluster run; this section holds what only
the cluster cares about (images, GPU placement, resources, Secrets, caching, retries) and where
`segloop submit` sends runs. Credentials never live here: a Secret is named, never its values.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from components.core.settings_base import Section
from components.images import build_tag

StageName = Literal[
    "query",
    "infer",
    "select",
    "upload_cvat",
    "download_cvat",
    "preprocess",
    "train",
    "evaluate",
    "register",
    "loop_report",
]
STAGES: tuple[str, ...] = StageName.__args__  # type: ignore[attr-defined]
PIPELINE_NAMES = ("pre_annotation", "training", "active_learning")
# `segloop init` project templates (pipelines/templates/).
TEMPLATES = ("pre_annotation", "training", "predictor")

# Kubernetes quantities: "500m", "2", "1.5"; "512Mi", "8Gi", "1G".
CPU_PATTERN = r"^[0-9]+(\.[0-9]+)?m?$"
MEMORY_PATTERN = r"^[0-9]+(\.[0-9]+)?(E|P|T|G|M|K|Ei|Pi|Ti|Gi|Mi|Ki)?$"


class ImageSettings(Section):
    registry: str = Field("ghcr.io/segloop", description="registry and namespace of the images")
    tag: str = Field(
        default_factory=build_tag,
        description="default: one per build, segloop's version and its code's hash (never moves)",
    )
    cpu: str | None = Field(
        None, description="full CPU image name (default: <registry>/segloop:<tag>)"
    )
    cuda: str | None = Field(
        None, description="full CUDA image name (default: <registry>/segloop-cuda:<tag>)"
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    # Named `pull_with`: config masking hides keys that contain "secret".
    pull_with: list[str] = Field(default_factory=list, description="imagePullSecrets (names)")


class Toleration(Section):
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoExecute", "NoSchedule", "PreferNoSchedule"] | None = None
    toleration_seconds: int | None = Field(None, ge=0)


# Infer runs one model on one device: each task (each shard) needs one GPU, whatever train gets.
GPU_STAGE_COUNTS = {"infer": 1}


class GpuSettings(Section):
    """Placement of the GPU stages (infer and train by default)."""

    stages: list[StageName] = Field(default_factory=lambda: ["infer", "train"])
    accelerator_type: str | None = Field(
        "nvidia.com/gpu", description="resource name; None or '' puts the stages on CPU"
    )
    # What train gets (torchrun starts one rank per GPU); a stage in `stage_counts` gets its own.
    accelerator_count: int = Field(1, ge=0)
    stage_counts: dict[StageName, int] = Field(
        default_factory=lambda: dict(GPU_STAGE_COUNTS),
        description="GPUs per task of a stage (infer: 1 per shard); others: accelerator_count",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="e.g. {'nvidia.com/gpu.present': 'true'}"
    )
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", effect="NoSchedule")]
    )

    @field_validator("stage_counts")
    @classmethod
    def _keep_infer_on_one_gpu(cls, counts: dict[str, int]) -> dict[str, int]:
        # `-o kfp.gpu.stage_counts.train=4` replaces the mapping: infer keeps its 1 unless named.
        bad = {stage: n for stage, n in counts.items() if n < 0}
        if bad:
            raise ValueError(f"GPU counts must be 0 or more, got {bad}")
        return {**GPU_STAGE_COUNTS, **counts}


class Resources(Section):
    """Requests and limits of one task; unset fields keep the stage's default."""

    cpu_request: str | None = Field(None, pattern=CPU_PATTERN)
    cpu_limit: str | None = Field(None, pattern=CPU_PATTERN)
    memory_request: str | None = Field(None, pattern=MEMORY_PATTERN)
    memory_limit: str | None = Field(None, pattern=MEMORY_PATTERN)


class SecretRef(Section):
    """A Kubernetes Secret whose keys become environment variables of some stages."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    # A list, not a mapping: each Secret key becomes the env var of the same name (and the
    # config's secret masking, which looks at mapping keys, leaves the names readable).
    keys: list[str] = Field(description="Secret keys, each exposed as the env var of that name")
    # Keys a task reads when present (e.g. credentials of a server that may run without auth):
    # exposed like `keys`, but always optional, so a Secret without them still starts the pod.
    optional_keys: list[str] = Field(
        default_factory=list, description="Secret keys exposed when present (always optional)"
    )
    stages: list[StageName]
    # Required by default: a pod whose Secret (or one of its `keys`) is missing fails at once
    # (CreateContainerConfigError) instead of running without it. `optional: true` also lets
    # `keys` be missing (then the task sees no such env var).
    optional: bool = False


# One class per Secret so that `-o kfp.env_from.s3.name=x` keeps the other defaults.
class S3Secret(SecretRef):
    name: str = Field("segloop-s3", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    keys: list[str] = Field(
        default_factory=lambda: [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ENDPOINT_URL",
        ]
    )
    stages: list[StageName] = Field(default_factory=lambda: list(STAGES))


class MLflowSecret(SecretRef):
    name: str = Field("segloop-mlflow", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    # Required: without a tracking URI a pod would log runs and register models into a
    # SQLite file inside itself, lost when the pod ends.
    keys: list[str] = Field(default_factory=lambda: ["MLFLOW_TRACKING_URI"])
    # Absent on a tracking server without authentication.
    optional_keys: list[str] = Field(
        default_factory=lambda: ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]
    )
    stages: list[StageName] = Field(
        default_factory=lambda: ["infer", "train", "evaluate", "register", "loop_report"]
    )


class CvatSecret(SecretRef):
    name: str = Field("segloop-cvat", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    keys: list[str] = Field(default_factory=lambda: ["CVAT_HOST"])
    # A user and password, or an access token: whichever the Secret holds.
    optional_keys: list[str] = Field(
        default_factory=lambda: ["CVAT_USERNAME", "CVAT_PASSWORD", "CVAT_ACCESS_TOKEN"]
    )
    stages: list[StageName] = Field(default_factory=lambda: ["upload_cvat", "download_cvat"])
    # Required by default; with the `folder` annotation backend (no CVAT) set
    # `kfp.env_from.cvat.optional: true` or `kfp.env_from.cvat.stages: []`.


class SecretsSettings(Section):
    s3: S3Secret = S3Secret()
    mlflow: MLflowSecret = MLflowSecret()
    cvat: CvatSecret = CvatSecret()
    extra: list[SecretRef] = Field(default_factory=list, description="more Secrets to mount")

    def all(self) -> list[SecretRef]:
        return [self.s3, self.mlflow, self.cvat, *self.extra]


class RetrySettings(Section):
    """Retries with exponential backoff for the stages that talk to other services."""

    stages: list[StageName] = Field(
        default_factory=lambda: ["query", "upload_cvat", "download_cvat", "register", "loop_report"]
    )
    num_retries: int = Field(3, ge=0)
    backoff_duration: str = Field("30s", pattern=r"^[0-9]+(s|m|h)$")
    backoff_factor: float = Field(2.0, ge=1)
    backoff_max_duration: str = Field("10m", pattern=r"^[0-9]+(s|m|h)$")


# Stages whose result depends on the world outside their inputs (the DB, CVAT, the registry)
# are not cached by default: a re-run must see new rows, new annotations and the champion.
UNCACHED = ("query", "upload_cvat", "download_cvat", "register", "loop_report")
DEFAULT_CACHING = {stage: stage not in UNCACHED for stage in STAGES}


# What manifests/base/network-policy.yaml selects as "a segloop pipeline pod".
POD_LABELS = {
    "app.kubernetes.io/part-of": "segloop",
    "app.kubernetes.io/component": "pipeline-task",
}
# Env vars every task gets from segloop (pipelines/platform.py): writable places for the
# libraries that write under HOME, on emptyDir volumes (the image's own files stay read-only).
TASK_ENV = {
    "HOME": "/home/segloop",
    "TMPDIR": "/tmp",
    "MPLCONFIGDIR": "/tmp/matplotlib",
    "TORCH_HOME": "/home/segloop/.cache/torch",
    "HF_HOME": "/home/segloop/.cache/huggingface",
    "XDG_CACHE_HOME": "/home/segloop/.cache",
}


# Kubernetes label syntax: an optional DNS-subdomain prefix and '/', a name of at most 63
# characters; values of at most 63 characters, alphanumeric at both ends.
_LABEL_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
LABEL_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}$")
LABEL_VALUE = re.compile(rf"^{_LABEL_NAME}?$")


def with_segloop_labels(labels: dict[str, str]) -> dict[str, str]:
    """segloop's pod labels plus the user's: a user label adds, never replaces one of segloop's
    (the MLflow NetworkPolicy admits pods by them)."""
    bad = {k: v for k, v in labels.items() if not LABEL_KEY.match(k) or not LABEL_VALUE.match(v)}
    if bad:
        raise ValueError(
            f"pod labels {bad} are not valid Kubernetes labels (key: [prefix/]name, name and "
            "value at most 63 letters, digits, '-', '_', '.', alphanumeric at both ends)"
        )
    clash = {k: v for k, v in labels.items() if k in POD_LABELS and v != POD_LABELS[k]}
    if clash:
        raise ValueError(
            f"pod labels {clash} would replace segloop's own {POD_LABELS}, which the MLflow "
            "NetworkPolicy admits pipeline pods by; choose other label keys"
        )
    return {**POD_LABELS, **labels}


class KfpSettings(Section):
    pipeline_root: str | None = Field(
        None, description="s3://bucket/prefix for artifacts; default: the cluster's kfp-launcher"
    )
    local_root: str = Field(
        ".segloop/kfp", description="pipeline root of `segloop run` (local folder)"
    )
    local_runner: Literal["subprocess", "docker"] = Field(
        "subprocess",
        description="`segloop run`/`demo`: tasks in this Python environment, or each in its "
        "component image on a Docker-API engine (docker, podman system service)",
    )
    images: ImageSettings = ImageSettings()
    gpu: GpuSettings = GpuSettings()
    resources: dict[StageName, Resources] = Field(
        default_factory=dict, description="per stage; unset fields keep the defaults"
    )
    env_from: SecretsSettings = SecretsSettings()
    env: dict[str, str] = Field(
        default_factory=dict, description="plain (non-secret) env vars for every task"
    )
    # Every task pod carries these labels (kfp.kubernetes.add_pod_label): segloop's own
    # (POD_LABELS, which manifests/base/network-policy.yaml admits to MLflow) plus the user's;
    # `-o kfp.pod_labels.team=vision` adds a label, it does not drop segloop's.
    pod_labels: dict[str, str] = Field(
        default_factory=lambda: dict(POD_LABELS),
        description="labels added to segloop's own on every task pod",
    )
    caching: dict[StageName, bool] = Field(
        default_factory=dict, description="per stage; unlisted stages keep DEFAULT_CACHING"
    )
    retry: RetrySettings = RetrySettings()
    # Where `segloop submit` goes (flags override these).
    host: str | None = Field(None, description="KFP API endpoint, e.g. https://kfp.example.com")
    namespace: str | None = None
    experiment: str | None = Field(None, description="default: the project name")

    @field_validator("env")
    @classmethod
    def _env_adds_to_segloops(cls, env: dict[str, str]) -> dict[str, str]:
        # Credentials here are refused by pipelines.compile.check_no_credentials (one
        # definition of a secret, for every setting), before anything is compiled or sent.
        # User env adds to segloop's: these point at the task's writable volumes.
        taken = sorted(k for k in env if k in TASK_ENV and env[k] != TASK_ENV[k])
        if taken:
            raise ValueError(
                f"{taken} are set by segloop on every task (to its writable emptyDir volumes: "
                f"{ {k: TASK_ENV[k] for k in taken} }); leave them out of kfp.env"
            )
        return env

    @field_validator("pod_labels")
    @classmethod
    def _add_segloop_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        return with_segloop_labels(labels)
