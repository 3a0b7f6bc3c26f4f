"""`segloop init | deploy | launch`: scaffold a project, deploy it to Kubeflow, start runs."""

from __future__ import annotations

import click

from pipelines.cli.common import config_options
from pipelines.cli.kfp import cluster_options, echo_run, run_options
from pipelines.settings import PIPELINE_NAMES, TEMPLATES


@click.command("init")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option(
    "--template",
    "-t",
    type=click.Choice(TEMPLATES),
    default="pre_annotation",
    show_default=True,
    help="pre_annotation: exg pre-annotation; training: the whole loop with a labels file; "
    "predictor: your own model as a predictor module.",
)
@click.option(
    "--demo-images",
    type=click.IntRange(0, 1000),
    default=4,
    show_default=True,
    help="Synthetic demo images (and image DB) to write under FOLDER/data (0: none).",
)
@click.option("--force", is_flag=True, help="Write into an existing, non-empty folder.")
def init_cmd(folder, template, demo_images, force):
    """Scaffold FOLDER: run config, README, a test on synthetic images (+ a predictor module)."""
    from pipelines.lifecycle import init_project

    scaffold = init_project(folder, template, demo_images=demo_images, force=force)
    click.echo(scaffold.summary())


@click.command("deploy")
@click.option(
    "--pipeline",
    "-p",
    "pipelines",
    multiple=True,
    type=click.Choice(PIPELINE_NAMES),
    help="Pipeline to upload (repeatable; default: all).",
)
@cluster_options
@click.option("--skip-images", is_flag=True, help="Do not build or push images.")
@click.option(
    "--require-images",
    is_flag=True,
    help="Fail when the images cannot be built here (no Docker engine).",
)
@click.option("--no-push", is_flag=True, help="Build the images but do not push them.")
@click.option(
    "--context",
    type=click.Path(file_okay=False, exists=True),
    default=".",
    show_default=True,
    help="Docker build context: the segloop source tree (with images/*.Dockerfile).",
)
@config_options
def deploy_cmd(pipelines, cfg, cluster, skip_images, require_images, no_push, context):
    """Build and push the images (where Docker runs), then upload each pipeline as a new version."""
    from pipelines.lifecycle import deploy

    result = deploy(
        cfg,
        **cluster,
        pipelines=list(pipelines) or list(PIPELINE_NAMES),
        build_images=not skip_images,
        require_images=require_images,
        push=not no_push,
        context=context,
    )
    click.echo(result.images_note)
    for p in result.pipelines:
        click.echo(
            f"deployed {p['pipeline']} as {p['kfp_name']} ({p['pipeline_id']}), "
            f"version {p['version_name']} ({p['version_id']})"
        )


@click.command("launch")
@click.argument("pipeline", type=click.Choice(PIPELINE_NAMES), default="pre_annotation")
@cluster_options
@run_options
@click.option(
    "--upload", is_flag=True, help="Compile and upload a new version first (as `segloop submit`)."
)
@config_options
def launch_cmd(pipeline, cfg, cluster, run, upload):
    """Start a cluster run of the deployed PIPELINE (default: pre_annotation) with this config."""
    from pipelines.lifecycle import launch

    result = launch(pipeline, cfg, **cluster, **run, upload=upload)
    for warning in result.warnings:
        click.echo(
            f"warning: {warning} is on this machine; the cluster's pods cannot read it "
            "(override it with -o, e.g. an s3:// URI)",
            err=True,
        )
    echo_run(result, "uploaded now" if result.uploaded else "deployed")


def register(group: click.Group) -> None:
    for command in (init_cmd, deploy_cmd, launch_cmd):
        group.add_command(command)
