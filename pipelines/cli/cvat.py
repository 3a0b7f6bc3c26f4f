"""`segloop upload-cvat` and `segloop download-cvat`: the hand-off to people and back."""

from __future__ import annotations

import click

from components.core.config import stage_run_dir
from pipelines.cli.common import config_options, set_if
from pipelines.config import load_config

STATUSES = ["annotation", "validation", "completed", "any"]


def backend_options(func):
    func = click.option("--org", "organization", default=None, help="CVAT organization slug.")(func)
    func = click.option(
        "--dir",
        "folder",
        default=None,
        help="Folder backend: the folder (or s3:// prefix) of task folders.",
    )(func)
    func = click.option(
        "--backend",
        type=click.Choice(["cvat", "folder"]),
        default=None,
        help="cvat (default; CVAT_HOST and credentials from the environment) or folder.",
    )(func)
    return func


def _cvat_section(backend, folder, organization) -> dict:
    if folder and not backend:
        backend = "folder"
    return set_if({}, backend=backend, folder=folder, organization=organization)


@click.command("upload-cvat")
@config_options
@click.option(
    "--predictions", required=True, help="An `infer` or `select` output folder or S3 prefix."
)
@click.option(
    "--project", default=None, help="CVAT project id or name (default: standalone tasks)."
)
@click.option(
    "--create-project", is_flag=True, default=None, help="Create the project if it is missing."
)
@click.option(
    "--task-name",
    default=None,
    help="Template: {cvat_project} {project} {subname} {date} {part} {parts} (default: "
    "{cvat_project}-{date}-part{part}, or {project}-{subname}-{date}-part{part} without --project).",
)
@click.option("--max-images-per-task", type=int, default=None)
@click.option(
    "--segment-size", type=int, default=None, help="Frames per job (0: one job per task)."
)
@click.option("--shape", type=click.Choice(["mask", "polygon"]), default=None)
@click.option("--create-missing-labels", is_flag=True, default=None)
@click.option("--max-shapes-per-request", type=int, default=None)
@click.option("--if-exists", type=click.Choice(["skip", "new", "fail"]), default=None)
@backend_options
@click.option(
    "--out-dir",
    default=None,
    help="Output folder (default: <out_root>/<project>/<subname>/upload_cvat).",
)
def upload_cvat_command(
    config_path,
    overrides,
    predictions,
    project,
    create_project,
    task_name,
    max_images_per_task,
    segment_size,
    shape,
    create_missing_labels,
    max_shapes_per_request,
    if_exists,
    backend,
    folder,
    organization,
    out_dir,
):
    """Create annotation tasks with the images and their pre-annotations (masks or polygons)."""
    from components.upload_cvat.upload import run_upload_cvat

    extra = {
        "cvat": _cvat_section(backend, folder, organization),
        "upload_cvat": set_if(
            {},
            project=project,
            create_project=create_project,
            task_name=task_name,
            max_images_per_task=max_images_per_task,
            segment_size=segment_size,
            shape=shape,
            create_missing_labels=create_missing_labels,
            max_shapes_per_request=max_shapes_per_request,
            if_exists=if_exists,
        ),
    }
    cfg = load_config(config_path, overrides, extra)
    out = out_dir or stage_run_dir(cfg, "upload_cvat")
    metrics = run_upload_cvat(cfg, predictions=predictions, out=out)
    click.echo(
        f"{metrics['images']} images in {metrics['tasks']} tasks ({metrics['tasks_created']} created, "
        f"{metrics['tasks_completed']} completed, {metrics['tasks_skipped']} skipped; "
        f"{metrics['images_per_s']} images/s) -> {out}"
    )
    from components.core import storage

    for task in storage.read_json(storage.join(out, "tasks.json"))["tasks"]:
        click.echo(f"  {task['outcome']:>9}  {task['name']}  {task['url']}")


@click.command("download-cvat")
@config_options
@click.option("--project", default=None, help="Take the tasks of this CVAT project (id or name).")
@click.option("--task-id", "task_ids", type=int, multiple=True, help="Take this task (repeatable).")
@click.option("--name-pattern", default=None, help="Take tasks whose name matches this glob.")
@click.option(
    "--upload-dir", default=None, help="An upload-cvat output: frame map, pre-annotations, tasks."
)
@click.option(
    "--status",
    "statuses",
    type=click.Choice(STATUSES),
    multiple=True,
    help="Required task status (repeatable; default: completed, or any with a job filter).",
)
@click.option(
    "--job-stage", type=click.Choice(["annotation", "validation", "acceptance"]), default=None
)
@click.option(
    "--job-state", type=click.Choice(["new", "in progress", "rejected", "completed"]), default=None
)
@click.option(
    "--format", "fmt", type=click.Choice(["Segmentation mask 1.1", "COCO 1.0"]), default=None
)
@click.option(
    "--no-images", is_flag=True, default=False, help="Masks only; images stay where they are."
)
@click.option("--no-resume", is_flag=True, default=False, help="Export every task again.")
@click.option(
    "--overwrite",
    is_flag=True,
    default=False,
    help="Empty an earlier download in the output folder first (to rerun with other settings).",
)
@click.option(
    "--image-source",
    type=click.Choice(["original", "export"]),
    default=None,
    help="original (default): each record's own image file (CVAT's copy only where it is "
    "unreachable or changed); export: CVAT's re-encoded copies.",
)
@click.option(
    "--missing-mask",
    type=click.Choice(["error", "empty"]),
    default=None,
    help="A frame without a mask: error (default) or empty (all background, in completed "
    "tasks or jobs only).",
)
@click.option(
    "--on-duplicate",
    type=click.Choice(["newest", "error"]),
    default=None,
    help="A record in several selected tasks: take it from the task updated last (newest, the "
    "default) or stop without writing anything (error).",
)
@backend_options
@click.option(
    "--out-dir",
    default=None,
    help="Output folder (default: <out_root>/<project>/<subname>/download_cvat).",
)
def download_cvat_command(
    config_path,
    overrides,
    project,
    task_ids,
    name_pattern,
    upload_dir,
    statuses,
    job_stage,
    job_state,
    fmt,
    no_images,
    no_resume,
    overwrite,
    image_source,
    missing_mask,
    on_duplicate,
    backend,
    folder,
    organization,
    out_dir,
):
    """Download refined annotations as class-id masks aligned with the images."""
    from components.download_cvat.download import run_download_cvat

    status = None
    if statuses:
        status = ["annotation", "validation", "completed"] if "any" in statuses else list(statuses)
    section = set_if(
        {},
        project=project,
        task_ids=task_ids,
        name_pattern=name_pattern,
        upload_dir=upload_dir,
        status=status,
        job_stage=job_stage,
        job_state=job_state,
        format=fmt,
        image_source=image_source,
        missing_mask=missing_mask,
        on_duplicate=on_duplicate,
    )
    if no_images:
        section["include_images"] = False
    if no_resume:
        section["resume"] = False
    if overwrite:
        section["overwrite"] = True
    extra = {"cvat": _cvat_section(backend, folder, organization), "download_cvat": section}
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
    group.add_command(upload_cvat_command)
    group.add_command(download_cvat_command)
