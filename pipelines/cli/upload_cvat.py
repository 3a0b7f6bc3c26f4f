"""`segloop upload-cvat`: the hand-off to people (docs/stages/upload-cvat.md)."""

from __future__ import annotations

import click

from components.core.config import stage_run_dir
from components.upload_cvat.settings import UploadCvatSettings
from pipelines.cli.common import OUT_HELP, config_options, set_if
from pipelines.cli.cvat_backend import backend_options, cvat_section
from pipelines.cli.options import settings_options
from pipelines.config import load_config


@click.command("upload-cvat")
@config_options
@click.option(
    "--predictions", required=True, help="An `infer` or `select` output folder or S3 prefix."
)
@settings_options(
    UploadCvatSettings,
    "project",
    "create_project",
    "task_name",
    "max_images_per_task",
    "segment_size",
    "shape",
    "create_missing_labels",
    "max_shapes_per_request",
    "max_request_mb",
    "if_exists",
    "image_quality",
    "workers",
    "max_failures",
)
@backend_options
@click.option("--out-dir", default=None, help=OUT_HELP.format("upload_cvat"))
def upload_cvat_command(config_path, overrides, predictions, out_dir, **options):
    """Create annotation tasks with the images and their pre-annotations (masks or polygons)."""
    from components.core import storage
    from components.upload_cvat.stage import run_upload_cvat

    extra = {"cvat": cvat_section(options), "upload_cvat": set_if({}, **options)}
    cfg = load_config(config_path, overrides, extra)
    out = out_dir or stage_run_dir(cfg, "upload_cvat")
    metrics = run_upload_cvat(cfg, predictions=predictions, out=out)
    click.echo(
        f"{metrics['images']} images in {metrics['tasks']} tasks ({metrics['tasks_created']} created, "
        f"{metrics['tasks_completed']} completed, {metrics['tasks_skipped']} skipped; "
        f"{metrics['images_per_s']} images/s) -> {out}"
    )
    for task in storage.read_json(storage.join(out, "tasks.json"))["tasks"]:
        click.echo(f"  {task['outcome']:>9}  {task['name']}  {task['url']}")


def register(group: click.Group) -> None:
    group.add_command(upload_cvat_command)
