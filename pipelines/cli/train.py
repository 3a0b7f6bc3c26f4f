"""`segloop train` (docs/stages/train.md)."""

from __future__ import annotations

import click

from components.core.config import stage_run_dir
from components.train.settings import TrainSettings
from pipelines.cli.common import OUT_HELP, config_options, set_if
from pipelines.cli.options import settings_options
from pipelines.config import load_config


@click.command("train")
@config_options
@click.option("--data", default=None, help="A preprocess output (default: this project's).")
@click.option("--out", "out_dir", default=None, help=OUT_HELP.format("train"))
@settings_options(
    TrainSettings,
    "arch",
    "encoder_weights",
    "binary",
    "epochs",
    "batch_size",
    "accumulate",
    "lr",
    "weight_decay",
    "scheduler",
    "loss",
    "class_weights",
    "patience",
    "keep",
    "seed",
    "device",
    "amp",
    "workers",
    "resume",
    "init_from",
    "max_steps_per_epoch",
    encoder_name="--encoder",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="DDP processes on this machine (one per GPU; Gloo on CPU). 1 trains in this process.",
)
def train_command(config_path, overrides, data, out_dir, nproc, **options):
    """Train a segmentation model on preprocessed tiles; log it to MLflow."""
    from components.train.launch import train_processes

    cfg = load_config(config_path, overrides, {"train": set_if({}, **options)})
    data = data or stage_run_dir(cfg, "preprocess")
    out = out_dir or stage_run_dir(cfg, "train")
    m = train_processes(cfg, data=data, out=out, nproc=nproc)
    if "run_id" in m:
        click.echo(
            f"train: best val mean IoU {m['best_val_mean_iou']:.4f} after epoch {m['last_epoch']}, "
            f"run {m['run_id']}, model {m['model_uri']} -> {out}"
        )


def register(group: click.Group) -> None:
    group.add_command(train_command)
