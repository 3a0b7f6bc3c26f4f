"""`segloop preprocess` (docs/stages/preprocess.md)."""

from __future__ import annotations

import click

from components.core.config import stage_run_dir
from components.preprocess.settings import PreprocessSettings
from pipelines.cli.common import OUT_HELP, config_options, set_if
from pipelines.cli.options import settings_options
from pipelines.config import load_config


@click.command("preprocess")
@config_options
@click.option("--out", "out_dir", default=None, help=OUT_HELP.format("preprocess"))
@settings_options(
    PreprocessSettings,
    "test_inputs",
    "tile_size",
    "mode",
    "overlap",
    "min_foreground",
    "val_fraction",
    "test_fraction",
    "seed",
    "stratify",
    "tile_format",
    "workers",
    "max_failures",
    inputs="--input -i",
)
def preprocess_command(config_path, overrides, out_dir, **options):
    """Merge annotation datasets, split by image (stratified), tile, compute stats."""
    from components.preprocess.stage import run_preprocess

    cfg = load_config(config_path, overrides, {"preprocess": set_if({}, **options)})
    out = out_dir or stage_run_dir(cfg, "preprocess")
    m = run_preprocess(cfg, out=out)
    click.echo(
        f"preprocess: images {m['images']}, tiles {m['tiles']}, {m['failed']} failed, "
        f"split {m['split_hash'][:12]} -> {out}"
    )


def register(group: click.Group) -> None:
    group.add_command(preprocess_command)
