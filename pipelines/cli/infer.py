"""`segloop infer`: pre-annotate images with a segmentation model (see docs/stages/infer.md)."""

from __future__ import annotations

import click

from components.core.config import stage_run_dir
from pipelines.cli.common import config_options, set_if
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
@click.option(
    "--model",
    "-m",
    default=None,
    help="Checkpoint folder, s3:// prefix, models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/PATH "
    "(MLflow URIs resolve on mlflow.tracking_uri, else $MLFLOW_TRACKING_URI).",
)
@click.option("--predictor", default=None, help="Predictor name (default: smp).")
@click.option(
    "--out",
    "out_dir",
    default=None,
    help="Output folder or s3:// prefix (default: <out_root>/<project>/<subname>/infer).",
)
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N")
@click.option(
    "--tile-size", type=int, default=None, help="Tile side in pixels (default: the model's)."
)
@click.option(
    "--overlap", type=float, default=None, help="Share of a tile shared with neighbours (0..0.9)."
)
@click.option("--window", type=click.Choice(["hann", "gaussian"]), default=None)
@click.option("--batch-size", type=int, default=None, help="Tiles per forward pass.")
@click.option(
    "--num-workers",
    type=int,
    default=None,
    help="Decoding workers (threads on CPU, processes on CUDA).",
)
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default=None)
@click.option(
    "--threshold", type=float, default=None, help="One threshold for every class (default: argmax)."
)
@click.option("--min-area", type=int, default=None, help="Drop regions smaller than this (pixels).")
@click.option("--overlays/--no-overlays", default=None, help="Write overlays/<id>.jpg.")
@click.option("--max-failures", type=int, default=None)
@click.option(
    "--overwrite",
    is_flag=True,
    default=None,
    help="Start the output folder afresh (an earlier run's outputs are removed); needed when "
    "it was made with other settings.",
)
def infer_command(config_path, overrides, records, images, model, predictor, out_dir, **options):
    """Segment images into masks/, predictions.json (COCO) and per-image uncertainty."""
    from components.core import storage  # here, not at the top: keeps `segloop --help` fast
    from components.infer.infer import failure_lines, run_infer, throughput

    extra = {"infer": set_if({}, model=model, predictor=predictor, **options)}
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
