"""`segloop evaluate` (docs/stages/evaluate.md)."""

from __future__ import annotations

import click

from components.core.config import stage_run_dir
from components.evaluate.settings import EvaluateSettings
from pipelines.cli.common import OUT_HELP, config_options, set_if
from pipelines.cli.options import settings_options
from pipelines.config import load_config


@click.command("evaluate")
@config_options
@click.option(
    "--model",
    "-m",
    default=None,
    help="Train output, checkpoint, s3://, models:/NAME@ALIAS or runs:/ (default: this project's train output).",
)
@click.option("--data", default=None, help="A preprocess output (default: this project's).")
@click.option("--out", "out_dir", default=None, help=OUT_HELP.format("evaluate"))
@settings_options(
    EvaluateSettings,
    "device",
    "overlap",
    "amp",
    "batch_size",
    "grid_images",
    "log_to_mlflow",
    "max_failures",
)
def evaluate_command(config_path, overrides, model, data, out_dir, **options):
    """Evaluate on the full-resolution test split; write a report with pictures."""
    from components.evaluate.stage import run_evaluate

    cfg = load_config(config_path, overrides, {"evaluate": set_if({}, **options)})
    model = model or stage_run_dir(cfg, "train")
    data = data or stage_run_dir(cfg, "preprocess")
    out = out_dir or stage_run_dir(cfg, "evaluate")
    m = run_evaluate(cfg, model=model, data=data, out=out)
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in m["iou"].items() if v is not None)
    click.echo(
        f"evaluate: mean IoU {m['mean_iou']:.4f} ({per_class}) on {m['images']} images -> {out}"
    )


def register(group: click.Group) -> None:
    group.add_command(evaluate_command)
