"""Compile-time platform options for pipeline tasks, all from the config's `kfp` section.

Every task gets its image and pull policy, CPU/memory requests and limits, caching, plain env
vars, the pod labels the manifests' NetworkPolicy selects and the Kubernetes Secrets it needs
as env vars (only references: a Secret's values never enter the YAML; required unless marked
optional, plus per-Secret `optional_keys` that may be absent). What the user sets (labels,
env, resources) adds to segloop's own, never replaces them. Every task writes only to emptyDir
volumes (/tmp, HOME and its caches); train and infer also get a memory-backed /dev/shm. The
GPU stages (infer and train by default) also get the accelerator type and their own count
(train: `kfp.gpu.accelerator_count`, infer: 1 per task), node selector labels, tolerations and
the CUDA image; network stages get retries with exponential backoff.
"""

from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask
from kubernetes.utils import parse_quantity

from components.core.cpu_budget import ENV as CPU_THREADS_ENV
from components.core.errors import SegloopError
from components.images import images_from_config, pull_policy
from pipelines.config import SegloopConfig
from pipelines.settings import DEFAULT_CACHING, TASK_ENV, Resources, with_segloop_labels

# Defaults sized for 256-1024 px field images; override per stage with
# `-o kfp.resources.<stage>.memory_limit=16Gi`.
CPU_DEFAULT = Resources(cpu_request="500m", cpu_limit="2", memory_request="1Gi", memory_limit="4Gi")
STAGE_DEFAULTS = {
    "infer": Resources(cpu_request="2", cpu_limit="4", memory_request="8Gi", memory_limit="16Gi"),
    "train": Resources(cpu_request="4", cpu_limit="8", memory_request="16Gi", memory_limit="32Gi"),
    "preprocess": Resources(
        cpu_request="1", cpu_limit="4", memory_request="2Gi", memory_limit="8Gi"
    ),
    "evaluate": Resources(cpu_request="1", cpu_limit="4", memory_request="4Gi", memory_limit="8Gi"),
}


def resources_for(cfg: SegloopConfig, stage: str) -> Resources:
    """The stage's defaults with the config's per-stage settings on top; a request above its
    limit (which Kubernetes rejects, so the task would never start) is refused."""
    base = STAGE_DEFAULTS.get(stage, CPU_DEFAULT).model_dump()
    given = cfg.kfp.resources.get(stage)
    if given:
        base.update(given.model_dump(exclude_none=True))
    for kind in ("cpu", "memory"):
        request, limit = base[f"{kind}_request"], base[f"{kind}_limit"]
        if parse_quantity(request) > parse_quantity(limit):
            raise SegloopError(
                f"kfp.resources.{stage}: {kind} request {request} is above its limit {limit} "
                f"(the other one is {stage}'s default); set both, e.g. "
                f"-o kfp.resources.{stage}.{kind}_request={limit}"
            )
    _check_threads(cfg, stage, base["cpu_limit"])
    return Resources(**base)


def _check_threads(cfg: SegloopConfig, stage: str, cpu_limit: str) -> None:
    """Inside the pod, threads and workers come from the CPU limit (components.core.cpu_budget
    reads the quota it becomes), so they agree with it by themselves. A fixed
    SEGLOOP_CPU_THREADS in `kfp.env` overrides that: above the limit it only gets throttled."""
    given = cfg.kfp.env.get(CPU_THREADS_ENV)
    if given is None:
        return
    limit = parse_quantity(cpu_limit)
    if not given.strip().isdigit() or int(given) < 1 or int(given) > max(1, limit):
        raise SegloopError(
            f"kfp.env.{CPU_THREADS_ENV}={given!r} does not fit {stage}'s CPU limit {cpu_limit}: "
            f"give a whole number from 1 to the smallest stage limit, or leave it unset (threads "
            f"then follow each task's limit)"
        )


# Container runtimes give /dev/shm 64 MiB, too little for DataLoader workers and NCCL.
SHM_STAGES = ("train", "infer")
# Writable emptyDir volumes of every task: (volume name, mount path).
SCRATCH_VOLUMES = (("tmp", "/tmp"), ("home", TASK_ENV["HOME"]))


def gpu_count(cfg: SegloopConfig, stage: str) -> int:
    """GPUs per task of `stage`: its own count (infer: 1 per shard), else accelerator_count;
    accelerator_count 0 (or no accelerator type) puts every stage on the CPU."""
    gpu = cfg.kfp.gpu
    if stage not in gpu.stages or not gpu.accelerator_type or gpu.accelerator_count == 0:
        return 0
    return gpu.stage_counts.get(stage, gpu.accelerator_count)


def is_gpu_stage(cfg: SegloopConfig, stage: str) -> bool:
    return gpu_count(cfg, stage) > 0


def image_for(cfg: SegloopConfig, stage: str, gpu: bool = True) -> str:
    """The CUDA image only where the task gets a GPU (accelerator_count 0 runs it on CPU)."""
    cpu, cuda = images_from_config(cfg.kfp.images)
    return cuda if gpu and is_gpu_stage(cfg, stage) else cpu


def apply(
    task: PipelineTask,
    stage: str,
    cfg: SegloopConfig,
    gpu: bool = True,
    display_name: str | None = None,
) -> PipelineTask:
    """Set every platform option of `stage` on `task` (returns the task).

    `gpu=False` keeps a GPU stage's task on the CPU image without accelerator or GPU placement
    (the infer merge); `display_name` replaces the stage name shown in the UI."""
    k = cfg.kfp
    task.set_display_name(display_name or stage.replace("_", "-"))
    image = image_for(cfg, stage, gpu)
    task.set_container_image(image)
    kubernetes.set_image_pull_policy(task, pull_policy(k.images))
    if k.images.pull_with:
        kubernetes.set_image_pull_secrets(task, list(k.images.pull_with))

    res = resources_for(cfg, stage)
    task.set_cpu_request(res.cpu_request).set_cpu_limit(res.cpu_limit)
    task.set_memory_request(res.memory_request).set_memory_limit(res.memory_limit)

    if gpu and is_gpu_stage(cfg, stage):
        task.set_accelerator_type(k.gpu.accelerator_type)
        task.set_accelerator_limit(gpu_count(cfg, stage))
        for label, value in k.gpu.node_selector.items():
            kubernetes.add_node_selector(task, label_key=label, label_value=value)
        for tol in k.gpu.tolerations:
            kubernetes.add_toleration(
                task,
                key=tol.key,
                operator=tol.operator,
                value=tol.value,
                effect=tol.effect,
                toleration_seconds=tol.toleration_seconds,
            )

    task.set_caching_options(enable_caching=k.caching.get(stage, DEFAULT_CACHING[stage]))
    if stage in k.retry.stages and k.retry.num_retries > 0:
        task.set_retry(
            num_retries=k.retry.num_retries,
            backoff_duration=k.retry.backoff_duration,
            backoff_factor=k.retry.backoff_factor,
            backoff_max_duration=k.retry.backoff_max_duration,
        )

    # segloop's env, labels and volumes first; the user's add to them (the settings refuse a
    # user value that would replace one of segloop's).
    for name, value in sorted({**TASK_ENV, **k.env}.items()):
        task.set_env_variable(name, value)
    for label, value in sorted(with_segloop_labels(k.pod_labels).items()):
        kubernetes.add_pod_label(task, label_key=label, label_value=value)
    for volume, path in SCRATCH_VOLUMES:
        kubernetes.empty_dir_mount(task, volume_name=volume, mount_path=path)
    if stage in SHM_STAGES:
        # Memory-backed: it counts against the task's memory limit, which bounds it.
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    for secret in k.env_from.all():
        if stage not in secret.stages:
            continue
        if secret.keys:
            kubernetes.use_secret_as_env(
                task,
                secret_name=secret.name,
                secret_key_to_env={key: key for key in secret.keys},
                optional=secret.optional,
            )
        extra = [key for key in secret.optional_keys if key not in secret.keys]
        if extra:
            kubernetes.use_secret_as_env(
                task,
                secret_name=secret.name,
                secret_key_to_env={key: key for key in extra},
                optional=True,
            )
    return task
