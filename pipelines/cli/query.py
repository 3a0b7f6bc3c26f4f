"""`segloop query`: select image records from the image DB."""

from __future__ import annotations

import json
import shlex

import click

from components.query.settings import QuerySettings
from pipelines.cli.common import config_options, set_if
from pipelines.cli.options import settings_options
from pipelines.config import load_config


@click.command()
@settings_options(
    QuerySettings, "sample", "sort", "limit", "offset", filters="-f", out_format="--out"
)
@click.option("--projection", help="Comma-separated columns to keep (the id is always kept).")
@click.option("--out-dir", help="Output folder or s3:// prefix (default: <out_root>/.../query).")
@settings_options(
    QuerySettings,
    "preview",
    "allow_empty",
    "id_column",
    "image_column",
    "image_root",
    "mask_column",
    "image_id_column",
)
@click.option("--from-spec", type=str, help="Replay a query_spec.json (same rows).")
@click.option("--db-url", help="SQLAlchemy URL of the image DB (default: db.url).")
@click.option("--table", help="Image table (default: db.table).")
@config_options
def query(projection, out_dir, from_spec, db_url, table, config_path, overrides, **options):
    """Select image records (records.jsonl + query_spec.json)."""
    from components.query.stage import (
        run_query,  # here, not at the top: keeps `segloop --help` fast
    )

    section = set_if(
        {},
        projection=[c.strip() for c in projection.split(",") if c.strip()] if projection else None,
        **options,
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
