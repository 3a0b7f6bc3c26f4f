"""`segloop select`: which pre-annotated images people should refine first."""

from __future__ import annotations

from typing import get_args

import click

from components.core.config import stage_run_dir
from components.select.settings import SelectSettings
from pipelines.cli.common import config_options, set_if
from pipelines.config import load_config

# The strategies the `select` section accepts (one list: the settings' own).
STRATEGIES = get_args(SelectSettings.model_fields["strategy"].annotation)


@click.command("select")
@config_options
@click.option("--predictions", required=True, help="An `infer` output folder or S3 prefix.")
@click.option(
    "--records", default=None, help="Query records.jsonl (for stratifying by a DB column)."
)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default=None,
)
@click.option("--budget", "-n", type=int, default=None, help="How many images to pick.")
@click.option("--metric", type=click.Choice(["entropy", "margin", "uncertain_share"]), default=None)
@click.option("--stratify-by", default=None, help="'dominant_class' or a records column.")
@click.option("--seed", type=int, default=None)
@click.option(
    "--out-dir",
    default=None,
    help="Output folder (default: <out_root>/<project>/<subname>/select).",
)
def select_command(
    config_path,
    overrides,
    predictions,
    records,
    strategy,
    budget,
    metric,
    stratify_by,
    seed,
    out_dir,
):
    """Pick the images to annotate first (uncertainty, diverse, random, stratified)."""
    from components.select.select import (
        run_select,  # here, not at the top: keeps `segloop --help` fast
    )

    extra = {
        "select": set_if(
            {}, strategy=strategy, budget=budget, metric=metric, stratify_by=stratify_by, seed=seed
        )
    }
    cfg = load_config(config_path, overrides, extra)
    out = out_dir or stage_run_dir(cfg, "select")
    metrics = run_select(cfg, predictions=predictions, records=records, out=out)
    click.echo(
        f"selected {metrics['selected']} of {metrics['candidates']} images ({metrics['strategy']}) -> {out}"
    )


def register(group: click.Group) -> None:
    group.add_command(select_command)
