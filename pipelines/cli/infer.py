"""`segloop infer`: pre-annotate images with a segmentation model (see docs/stages/infer.md)."""

from __future__ import annotations

import click

from components.core.config import stage_run_dir
from components.infer.settings import InferSettings
from pipelines.cli.common import OUT_HELP, config_options, set_if
from pipelines.cli.options import settings_options
from pipelines.config import load_config


@click.command("infer")
@config_options
@click.option("--records", default=None, help="records.jsonl from `segloop query`.")
@click.option(
    "--images",
    default=None,
    help="A folder or s3:// prefix of images, searched recursively; a record id is the "
    "path below it without the suffix (field1/img_001.jpg -> field1/img_001).",
)
@click.option("--out", "out_dir", default=None, help=OUT_HELP.format("infer"))
@settings_options(
    InferSettings,
    "predictor",
    "model_alias",
    "device",
    "tile_size",
    "overlap",
    "window",
    "batch_size",
    "num_workers",
    "amp",
    "channels_last",
    "threshold",
    "min_area",
    "uncertain_margin",
    "embeddings",
    "coco",
    "overlays",
    "overlay_max_side",
    "max_failures",
    "overwrite",
    model="-m",
)
def infer_command(config_path, overrides, records, images, out_dir, **options):
    """Segment images into masks/, predictions.json (COCO) and per-image uncertainty."""
    from components.core import storage  # here, not at the top: keeps `segloop --help` fast
    from components.infer.stage import failure_lines, run_infer, throughput

    extra = {"infer": set_if({}, **options)}
    cfg = load_config(config_path, overrides, extra)
    out = out_dir or stage_run_dir(cfg, "infer")
    m = run_infer(cfg, records=records, images=images, out=out)
    click.echo(
        f"infer: {m['ok']} ok, {m['failed']} failed, {m['skipped_done']} already done, "
        f"{m['annotations']} regions, {throughput(m)} -> {out}"
    )
    for line in failure_lines(m, storage.join(out, "manifest.jsonl")):
        click.echo(line)


def register(group: click.Group) -> None:
    group.add_command(infer_command)
