"""`segloop select`: which pre-annotated images people should refine first."""

from __future__ import annotations

import click

from components.core.config import stage_run_dir
from components.select.settings import SelectSettings
from pipelines.cli.common import config_options, set_if
from pipelines.cli.options import settings_options
from pipelines.config import load_config


@click.command("select")
@config_options
@click.option("--predictions", required=True, help="An `infer` output folder or S3 prefix.")
@click.option(
    "--records", default=None, help="Query records.jsonl (for stratifying by a DB column)."
)
@settings_options(
    SelectSettings,
    "strategy",
    "metric",
    "stratify_by",
    "seed",
    "random_share",
    "candidate_factor",
    "group_by",
    "min_hash_distance",
    budget="-n",
)
@click.option(
    "--out-dir",
    default=None,
    help="Output folder (default: <out_root>/<project>/<subname>/select).",
)
def select_command(config_path, overrides, predictions, records, out_dir, **options):
    """Pick the images to annotate first (uncertainty, diverse, random, stratified)."""
    from components.select.stage import (
        run_select,  # here, not at the top: keeps `segloop --help` fast
    )

    extra = {"select": set_if({}, **options)}
    cfg = load_config(config_path, overrides, extra)
    out = out_dir or stage_run_dir(cfg, "select")
    metrics = run_select(cfg, predictions=predictions, records=records, out=out)
    click.echo(
        f"selected {metrics['selected']} of {metrics['candidates']} images ({metrics['strategy']}) -> {out}"
    )


def register(group: click.Group) -> None:
    group.add_command(select_command)
