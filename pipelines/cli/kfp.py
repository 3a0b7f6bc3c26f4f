"""`segloop compile | run | submit | runs | smoke-test`: pipelines locally and on Kubeflow."""

from __future__ import annotations

import functools
from typing import Any

import click

from components.core.errors import SegloopError
from pipelines.cli.common import config_options
from pipelines.config import load_config
from pipelines.settings import PIPELINE_NAMES

pipeline_arg = click.argument("pipeline", type=click.Choice(PIPELINE_NAMES))


@click.command("compile")
@pipeline_arg
@click.option(
    "--output",
    "-O",
    "output",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML file to write (KFP IR), e.g. build/pipelines/training.yaml.",
)
@config_options
def compile_cmd(pipeline, output, config_path, overrides):
    """Compile PIPELINE to KFP YAML with the config's platform options (what CI runs)."""
    from pipelines.compile import compile_pipeline

    cfg = load_config(config_path, overrides)
    path = compile_pipeline(pipeline, cfg, output)
    click.echo(f"compiled {pipeline} -> {path}")


@click.command("run")
@pipeline_arg
@click.option(
    "--pipeline-root",
    default=None,
    help="Folder for the run's artifacts (default: kfp.local_root).",
)
@click.option(
    "--model-uri",
    default=None,
    help="pre_annotation: model to pre-annotate with (default: models:/<model>@champion).",
)
@config_options
def run_cmd(pipeline, pipeline_root, model_uri, config_path, overrides):
    """Run PIPELINE on KFP's local runner against the embedded stack."""
    from pipelines.local import run_local

    cfg = load_config(config_path, overrides)
    params = {"model_uri": model_uri} if model_uri else {}
    result = run_local(pipeline, cfg, pipeline_root=pipeline_root, params=params)
    click.echo(result.summary())


def cluster_options(func):
    """--host, --namespace and the two ways to authenticate.

    Put it above `config_options`: the command gets `cfg` (the loaded config) and `cluster`
    (`client`, `host`, `namespace`: keyword arguments of `pipelines.submit` and
    `pipelines.lifecycle`) instead of those options and `config_path` / `overrides`.
    """

    @functools.wraps(func)
    def connected(*args, host, namespace, token, sa_token_path, config_path, overrides, **kwargs):
        cfg = load_config(config_path, overrides)
        cluster = _connect(cfg, host, namespace, token, sa_token_path)
        return func(*args, cfg=cfg, cluster=cluster, **kwargs)

    for option in reversed(
        [
            click.option(
                "--host",
                envvar="KF_PIPELINES_ENDPOINT",
                help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline "
                "(default: kfp.host, then $KF_PIPELINES_ENDPOINT).",
            ),
            click.option("--namespace", default=None, help="Kubeflow namespace (multi-user)."),
            click.option(
                "--token",
                envvar="KFP_TOKEN",
                default=None,
                help="Bearer token for the KFP API (default: $KFP_TOKEN). Never printed.",
            ),
            click.option(
                "--sa-token-path",
                type=click.Path(dir_okay=False),
                default=None,
                help="File with a service-account token (e.g. a projected volume in a pod).",
            ),
        ]
    ):
        connected = option(connected)
    return connected


def _connect(cfg, host, namespace, token, sa_token_path) -> dict[str, Any]:
    from pipelines.submit import make_client

    host = host or cfg.kfp.host
    if not host:
        raise SegloopError(
            "no KFP endpoint: pass --host URL, set kfp.host in the config or $KF_PIPELINES_ENDPOINT"
        )
    namespace = namespace or cfg.kfp.namespace
    client = make_client(host, namespace, token, sa_token_path)
    return {"client": client, "host": host, "namespace": namespace}


_RUN_OPTIONS = {
    "--experiment": "Experiment (default: kfp.experiment, then the project).",
    "--run-name": "Run name (default: <project>-<pipeline>-<time>).",
    "--service-account": "Kubernetes service account of the run's pods.",
    "--model-uri": "pre_annotation: model to pre-annotate with.",
}


def run_options(func):
    """--experiment, --run-name, --service-account and --model-uri of a cluster run; the command
    gets them as `run`, keyword arguments of `pipelines.submit.submit` / `lifecycle.launch`."""

    @functools.wraps(func)
    def with_run(*args, experiment, run_name, service_account, model_uri, **kwargs):
        run = {
            "experiment": experiment,
            "run_name": run_name,
            "params": {"model_uri": model_uri} if model_uri else None,
            "service_account": service_account,
        }
        return func(*args, run=run, **kwargs)

    for name, text in reversed(_RUN_OPTIONS.items()):
        with_run = click.option(name, default=None, help=text)(with_run)
    return with_run


@click.command("submit")
@pipeline_arg
@cluster_options
@run_options
@click.option(
    "--wait", is_flag=True, help="Wait until the run ends; exit non-zero unless it succeeded."
)
@click.option(
    "--timeout", "timeout_s", default=6 * 3600, show_default=True, help="--wait limit (s)."
)
@click.option("--poll", "poll_s", default=10.0, show_default=True, help="--wait poll interval (s).")
@config_options
def submit_cmd(pipeline, cfg, cluster, run, wait, timeout_s, poll_s):
    """Compile PIPELINE, upload it to Kubeflow (new pipeline or new version) and start a run."""
    from pipelines.submit import submit

    result = submit(pipeline, cfg, **cluster, **run, wait=wait, timeout_s=timeout_s, poll_s=poll_s)
    echo_run(result)
    if wait:
        click.echo(f"run finished: {result.state}")
        if result.state != "SUCCEEDED":
            raise SystemExit(1)


def echo_run(result, how: str | None = None) -> None:
    """The pipeline version and the run a submit or launch started."""
    version = f"({how})" if how else f"({result.version_id})"
    click.echo(f"pipeline {result.pipeline_id} version {result.version_name} {version}")
    click.echo(f"run {result.run_id} in experiment {result.experiment_id}: {result.run_url}")


@click.group("runs")
def runs_group():
    """List and inspect pipeline runs on Kubeflow."""


@runs_group.command("list")
@cluster_options
@click.option("--experiment-id", default=None, help="Only runs of this experiment.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 200))
@config_options
def runs_list(cfg, cluster, experiment_id, limit):
    """The most recent runs, newest first."""
    from pipelines.submit import api_call

    response = api_call(
        "listing runs",
        cluster["host"],
        cluster["client"].list_runs,
        page_size=limit,
        sort_by="created_at desc",
        experiment_id=experiment_id,
        namespace=cluster["namespace"],
    )
    runs = response.runs or []
    if not runs:
        click.echo("no runs")
    for run in runs:
        click.echo(
            f"{run.run_id}  {str(run.state or ''):10s}  {run.created_at}  {run.display_name}"
        )


@runs_group.command("get")
@click.argument("run_id")
@cluster_options
@config_options
def runs_get(run_id, cfg, cluster):
    """One run's state, times and task states."""
    from pipelines.submit import api_call

    run = api_call("reading the run", cluster["host"], cluster["client"].get_run, run_id)
    click.echo(f"run {run.run_id}: {run.display_name}")
    click.echo(f"  state     {run.state}")
    click.echo(f"  created   {run.created_at}")
    click.echo(f"  finished  {run.finished_at}")
    if run.error:
        click.echo(f"  error     {run.error.message}")
    details = run.run_details.task_details if run.run_details else None
    for task in details or []:
        click.echo(f"  task {task.display_name:24s} {task.state}")


@click.command("smoke-test")
@pipeline_arg
@click.option("--pipeline-root", default=None, help="Folder for the run's artifacts.")
@config_options
def smoke_test_cmd(pipeline, pipeline_root, config_path, overrides):
    """Run PIPELINE in the component images with KFP's DockerRunner (needs a Docker engine)."""
    from pipelines.local import smoke_test

    cfg = load_config(config_path, overrides)
    result = smoke_test(pipeline, cfg, pipeline_root=pipeline_root)
    click.echo(result.summary())


def register(group: click.Group) -> None:
    for command in (compile_cmd, run_cmd, submit_cmd, runs_group, smoke_test_cmd):
        group.add_command(command)
