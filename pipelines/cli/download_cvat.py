"""`segloop download-cvat`: the refined masks back (docs/stages/download-cvat.md)."""

from __future__ import annotations

import click

from components.core.config import stage_run_dir
from components.download_cvat.settings import DownloadCvatSettings
from pipelines.cli.common import OUT_HELP, config_options, set_if
from pipelines.cli.cvat_backend import backend_options, cvat_section
from pipelines.cli.options import settings_options
from pipelines.config import load_config

STATUSES = ["annotation", "validation", "completed"]


@click.command("download-cvat")
@config_options
@click.option(
    "--status",
    "statuses",
    type=click.Choice([*STATUSES, "any"]),
    multiple=True,
    help="Required task status (repeatable; default: completed, or any with a job filter).",
)
@click.option(
    "--no-images", is_flag=True, default=False, help="Masks only; images stay where they are."
)
@settings_options(
    DownloadCvatSettings,
    "project",
    "name_pattern",
    "upload_dir",
    "job_stage",
    "job_state",
    "format",
    "image_source",
    "missing_mask",
    "resume",
    "overwrite",
    "on_duplicate",
    "max_failures",
    task_ids="--task-id",
)
@backend_options
@click.option("--out-dir", default=None, help=OUT_HELP.format("download_cvat"))
def download_cvat_command(config_path, overrides, statuses, no_images, out_dir, **options):
    """Download refined annotations as class-id masks aligned with the images."""
    from components.download_cvat.stage import run_download_cvat

    cvat = cvat_section(options)
    if statuses:
        options["status"] = STATUSES if "any" in statuses else list(statuses)
    if no_images:
        options["include_images"] = False
    extra = {"cvat": cvat, "download_cvat": set_if({}, **options)}
    cfg = load_config(config_path, overrides, extra)
    out = out_dir or stage_run_dir(cfg, "download_cvat")
    metrics = run_download_cvat(cfg, out=out)
    effort = metrics["correction"]
    click.echo(
        f"{metrics['images']} images from {metrics['tasks']} tasks ({metrics['tasks_exported']} exported, "
        f"{metrics['tasks_unchanged']} unchanged, {metrics['tasks_rejected']} not ready) -> {out}"
    )
    if effort["images"]:
        click.echo(
            f"  correction effort: {effort['changed_share']:.2%} of pixels changed, "
            f"mean IoU of the pre-annotations {effort['mean_iou']:.3f} ({effort['images_changed']} of "
            f"{effort['images']} images edited)"
        )


def register(group: click.Group) -> None:
    group.add_command(download_cvat_command)
