"""Whole pipelines on KFP's local runners: `segloop run` (subprocesses in this environment)
and `segloop smoke-test` (the component images, through Docker).

The local run uses the same graph that is compiled for the cluster; KFP's local runner ignores
the Kubernetes-only options (GPU placement, Secrets), and the stages find the embedded stack
(S3 endpoint, credentials, MLflow) in the environment, as they find the Secrets on a cluster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kfp import local

from components.core.errors import SegloopError
from pipelines.config import SegloopConfig, run_config_json
from pipelines.graphs import build, kfp_name
from pipelines.stack.embedded import apply_stack_env
from pipelines.task_logs import ANSI, TaskLogRouter

log = logging.getLogger(__name__)


@dataclass
class TaskResult:
    name: str
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> local path
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LocalRunResult:
    pipeline: str
    run_dir: Path
    seconds: float
    tasks: list[TaskResult]
    environment: str
    log_dir: Path

    def task(self, name: str) -> TaskResult:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no task {name!r} in this run; tasks: {[t.name for t in self.tasks]}")

    def summary(self) -> str:
        lines = [
            f"pipeline {self.pipeline} succeeded in {self.seconds:.1f} s ({self.environment})",
            f"run folder: {self.run_dir}",
            f"task logs:  {self.log_dir}",
        ]
        for t in self.tasks:
            lines.append(f"  {t.name}")
            for name, path in sorted(t.outputs.items()):
                lines.append(f"    {name:12s} {path}")
            if t.metrics:
                shown = ", ".join(f"{k}={v:g}" for k, v in list(t.metrics.items())[:8])
                lines.append(f"    {'metrics':12s} {shown}")
        return "\n".join(lines)


def _environment(cfg: SegloopConfig) -> str:
    """Point the stages at the embedded stack if it runs; say what they will use."""
    if apply_stack_env(cfg.stack.dir):
        return f"embedded stack from {cfg.stack.dir}"
    s3 = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")
    mlflow = os.environ.get("MLFLOW_TRACKING_URI")
    if s3 or mlflow:
        return f"environment: S3 {s3 or 'AWS default'}, MLflow {mlflow or 'local default'}"
    log.warning(
        "the embedded stack is not running and no S3 endpoint or MLflow server is set in the "
        "environment; stages use local files only (start the stack with `segloop up`)"
    )
    return "no stack: local files only"


def _collect(run_dir: Path) -> list[TaskResult]:
    """Each task's outputs (folder per output) and the metrics KFP recorded for it."""
    tasks = []
    for task_dir in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        result = TaskResult(task_dir.name)
        executor_output = task_dir / "executor_output.json"
        recorded: dict[str, Any] = {}
        if executor_output.exists():
            recorded = json.loads(executor_output.read_text()).get("artifacts", {})
        for out in sorted(task_dir.iterdir()):
            if out.name == "executor_output.json":
                continue
            result.outputs[out.name] = str(out)
        for art in recorded.get("metrics", {}).get("artifacts", []):
            result.metrics.update(
                {k: v for k, v in art.get("metadata", {}).items() if isinstance(v, int | float)}
            )
        tasks.append(result)
    return tasks


@contextlib.contextmanager
def _task_output(pipeline: str, log_dir: Path):
    """One line per task on stdout, each task's log in `log_dir` (`segloop -v`: everything)."""
    verbose = bool(os.environ.get("SEGLOOP_KFP_VERBOSE")) or (
        logging.getLogger().level <= logging.DEBUG
    )
    router = TaskLogRouter(sys.stdout, pipeline, log_dir, verbose)
    try:
        with contextlib.redirect_stdout(router):
            yield router
    finally:
        router.close()


def _init_runner(runner: Any, root: Path) -> None:
    local.init(runner=runner, pipeline_root=str(root), raise_on_error=True)


def run_pipeline_locally(
    name: str,
    cfg: SegloopConfig,
    runner: Any,
    pipeline_root: str | Path | None = None,
    params: dict[str, Any] | None = None,
) -> LocalRunResult:
    root = Path(pipeline_root or cfg.kfp.local_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    environment = _environment(cfg)
    pipeline = build(name, cfg)
    before = {p.name for p in root.iterdir()}
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    log_dir = root / "logs" / f"{kfp_name(cfg, name)}-{stamp}"
    _init_runner(runner, root)
    start = time.monotonic()
    try:
        with warnings.catch_warnings(), _task_output(name, log_dir):
            # The SubprocessRunner warns that the segloop image is not a "python" image: locally
            # the components run in this environment, which has segloop installed.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            # Requests, limits and accelerators are cluster settings; locally they do nothing.
            warnings.filterwarnings(
                "ignore", message=".*have no effect in the current local runner.*"
            )
            pipeline(config_json=run_config_json(cfg), **(params or {}))
    except RuntimeError as exc:
        raise SegloopError(
            f"pipeline {name} failed on the local runner: {ANSI.sub('', str(exc))}\n"
            f"task logs: {log_dir}; task outputs: under {root}"
        ) from None
    seconds = time.monotonic() - start
    prefix = kfp_name(cfg, name) + "-"
    new = sorted(p for p in root.iterdir() if p.name not in before and p.name.startswith(prefix))
    if not new:
        raise SegloopError(f"pipeline {name} ran but wrote no run folder under {root}")
    run_dir = new[-1]
    return LocalRunResult(name, run_dir, seconds, _collect(run_dir), environment, log_dir)


def run_local(
    name: str,
    cfg: SegloopConfig,
    pipeline_root: str | Path | None = None,
    params: dict[str, Any] | None = None,
) -> LocalRunResult:
    """`segloop run`: the pipeline in subprocesses of this Python environment, or each task in
    the component images with `kfp.local_runner=docker` (what `segloop demo` uses too)."""
    if cfg.kfp.local_runner == "docker":
        return run_in_images(name, cfg, pipeline_root, params)
    return run_pipeline_locally(
        name, cfg, local.SubprocessRunner(use_venv=False), pipeline_root, params
    )


def run_in_images(
    name: str,
    cfg: SegloopConfig,
    pipeline_root: str | Path | None = None,
    params: dict[str, Any] | None = None,
) -> LocalRunResult:
    """Each task a container of its component image (kfp.images, built by `make images`) on
    this machine's Docker-API engine, against the embedded stack."""
    from pipelines.containers import docker_runner, engine_error, exit_status_checked

    problem = engine_error()
    if problem:
        raise SegloopError(
            f"running {name} in its container images needs a Docker engine (Docker, or "
            f"`podman system service`): {problem}. Start one (and point DOCKER_HOST at it), build the "
            f"images with `make images`, then retry; `segloop run {name}` without "
            "kfp.local_runner=docker runs the same pipeline in this Python environment."
        )
    _environment(cfg)  # the stack's env first: the runner hands it to the containers
    runner = docker_runner(cfg)
    with exit_status_checked():
        return run_pipeline_locally(name, cfg, runner, pipeline_root, params)


def docker_engine_error() -> str | None:
    """Why no Docker engine can run containers here, or None when one answers."""
    from pipelines.containers import engine_error

    return engine_error()


def smoke_test(
    name: str, cfg: SegloopConfig, pipeline_root: str | Path | None = None
) -> LocalRunResult:
    """`segloop smoke-test`: the pipeline in the component images (see `run_in_images`), in
    its own pipeline root."""
    root = Path(pipeline_root or Path(cfg.kfp.local_root) / "smoke")
    return run_in_images(name, cfg, root)
