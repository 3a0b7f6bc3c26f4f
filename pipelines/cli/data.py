"""`segloop data synth`: a small synthetic agricultural dataset and its image table."""

from __future__ import annotations

import click

from pipelines.cli.common import config_options, set_if
from pipelines.config import load_config
from pipelines.demo_scaffolding import demo_scaffolding


@click.group()
def data() -> None:
    """Datasets and the image database."""


@data.command()
@click.option("--n", "n", type=int, required=True, help="Number of images.")
@click.option("--out", "out", required=True, help="Folder or s3:// prefix for images and masks.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same dataset.")
@click.option("--db-url", default=None, help="SQLAlchemy URL of the image DB (default: db.url).")
@click.option("--table", default=None, help="Table to (re)create (default: db.table).")
@click.option(
    "--size",
    default="128x128",
    show_default=True,
    help="Image size WxH, or ranges like 64-256x64-192.",
)
@click.option(
    "--large",
    type=int,
    default=0,
    show_default=True,
    help="How many of the N images are 2048x1536 (to exercise tiling).",
)
@click.option(
    "--pool",
    type=click.Choice(["plain", "field"]),
    default="plain",
    show_default=True,
    help="plain: independent images; field: plot sessions of near-duplicate shots that differ "
    "in light and residue, with a rare weed (rosette) in about 8% of images.",
)
@click.option(
    "--singles",
    type=int,
    default=0,
    show_default=True,
    help="field: the first N images are one shot each (a curated test or seed set).",
)
@config_options
def synth(n, out, seed, db_url, table, size, large, pool, singles, config_path, overrides):
    """Write N field images with ground-truth masks, labels.yaml and an image table."""
    from components.core.db import safe_url

    synthetic = demo_scaffolding("synthetic")

    cfg = load_config(config_path, overrides, {"db": set_if({}, url=db_url, table=table)})
    result = synthetic.make_dataset(
        out,
        n,
        seed=seed,
        db_url=cfg.db.url,
        table=cfg.db.table,
        size=synthetic.parse_size(size),
        large=large,
        pool=pool,
        singles=singles,
    )
    empty = sum(1 for r in result.records if not r["has_masks"])
    click.echo(
        f"wrote {len(result.records)} images ({empty} without plants) and masks to {result.out_uri}"
    )
    click.echo(f"labels: {result.labels_uri}")
    click.echo(f"table '{result.table}' in {safe_url(result.db_url)}")


def register(group: click.Group) -> None:
    group.add_command(data)
