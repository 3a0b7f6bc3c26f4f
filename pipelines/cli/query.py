"""`segloop query`: select image records from the image DB."""

from __future__ import annotations

import json
import shlex

import click

from pipelines.cli.common import config_options, set_if
from pipelines.config import load_config


@click.command()
@click.option(
    "--filters",
    "-f",
    multiple=True,
    help="Filter (repeatable, ANDed): k=v, k=a,b, k!=v, k>=v, k<=v, k>v, k<v, "
    "'k is null', 'k is not null', 'k between a and b'; a column name with spaces or other "
    "signs in double quotes: '\"field name\"=v'.",
)
@click.option(
    "--sample",
    help="random:n=N | seeded:n=N,seed=S | stratified:by=c1|c2,per_group=N[,seed=S]",
)
@click.option("--projection", help="Comma-separated columns to keep (the id is always kept).")
@click.option("--sort", help="e.g. datetime:desc,image_id")
@click.option("--limit", type=int, help="At most this many rows.")
@click.option("--offset", type=int, help="Skip this many rows first.")
@click.option(
    "--out", "out_format", type=click.Choice(["jsonl", "csv", "parquet"]), help="Extra format."
)
@click.option("--out-dir", help="Output folder or s3:// prefix (default: <out_root>/.../query).")
@click.option("--preview", type=int, help="Print the first N rows.")
@click.option("--allow-empty", is_flag=True, default=None, help="An empty result is not an error.")
@click.option("--from-spec", type=str, help="Replay a query_spec.json (same rows).")
@click.option("--db-url", help="SQLAlchemy URL of the image DB (default: db.url).")
@click.option("--table", help="Image table (default: db.table).")
@click.option("--id-column", help="Row id column (default: the primary key, or image_id).")
@click.option("--image-column", help="Column with image locations (default: image_uri).")
@click.option("--image-root", help="Folder or s3:// prefix that relative image paths hang from.")
@click.option("--mask-column", help="Column with mask locations (default: mask_uri, if any).")
@click.option(
    "--image-id-column",
    help="Cutout-level tables: the column grouping rows into images (records: whole images).",
)
@config_options
def query(
    filters,
    sample,
    projection,
    sort,
    limit,
    offset,
    out_format,
    out_dir,
    preview,
    allow_empty,
    from_spec,
    db_url,
    table,
    id_column,
    image_column,
    image_root,
    mask_column,
    image_id_column,
    config_path,
    overrides,
):
    """Select image records (records.jsonl + query_spec.json)."""
    from components.query.query import (
        run_query,  # here, not at the top: keeps `segloop --help` fast
    )

    section = set_if(
        {},
        filters=filters,
        sample=sample,
        projection=[c.strip() for c in projection.split(",") if c.strip()] if projection else None,
        sort=sort,
        limit=limit,
        offset=offset,
        out_format=out_format,
        preview=preview,
        allow_empty=allow_empty,
        id_column=id_column,
        image_column=image_column,
        image_root=image_root,
        mask_column=mask_column,
        image_id_column=image_id_column,
    )
    cfg = load_config(
        config_path,
        overrides,
        {"query": section, "db": set_if({}, url=db_url, table=table)},
    )
    result = run_query(cfg, out=out_dir, from_spec=from_spec)
    for row in result["preview"]:
        click.echo(json.dumps(row, default=str))
    groups = f" in {result['groups']} groups" if result["groups"] is not None else ""
    if "cutouts" in result:
        groups += f" (images of {result['cutouts']} cutouts)"
    click.echo(
        f"{result['rows']} rows{groups} ({result['matched']} matched the filters) "
        f"-> {result['records']}",
        err=bool(result["preview"]),
    )
    replay = shlex.join(["segloop", "query", "--from-spec", result["query_spec"]])
    click.echo(f"replay with: {replay}", err=True)


def register(group: click.Group) -> None:
    group.add_command(query)
