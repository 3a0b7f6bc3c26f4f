"""`segloop preprocess | train | evaluate | register | compare` (see docs/stages/)."""

from __future__ import annotations

import click

from components.core.config import stage_run_dir
from components.core.errors import SegloopError
from pipelines.cli.common import config_options, set_if
from pipelines.config import load_config

OUT_HELP = "Output folder or s3:// prefix (default: <out_root>/<project>/<subname>/{})."


@click.command("preprocess")
@config_options
@click.option(
    "--input",
    "-i",
    "inputs",
    multiple=True,
    help="Dataset folder or s3:// prefix (repeatable, oldest first).",
)
@click.option("--out", "out_dir", default=None, help=OUT_HELP.format("preprocess"))
@click.option("--tile-size", type=int, default=None, help="Training tile side in pixels.")
@click.option("--mode", type=click.Choice(["grid", "resize"]), default=None)
@click.option("--overlap", type=int, default=None, help="Grid mode: pixels shared by neighbours.")
@click.option(
    "--min-foreground",
    type=float,
    default=None,
    help="Drop train tiles with less labelled foreground.",
)
@click.option("--val-fraction", type=float, default=None)
@click.option("--test-fraction", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--workers", type=int, default=None)
def preprocess_command(config_path, overrides, inputs, out_dir, **options):
    """Merge annotation datasets, split by image (stratified), tile, compute stats."""
    from components.preprocess.stage import run_preprocess

    cfg = load_config(config_path, overrides, {"preprocess": set_if({}, inputs=inputs, **options)})
    out = out_dir or stage_run_dir(cfg, "preprocess")
    m = run_preprocess(cfg, out=out)
    click.echo(
        f"preprocess: images {m['images']}, tiles {m['tiles']}, {m['failed']} failed, "
        f"split {m['split_hash'][:12]} -> {out}"
    )


@click.command("train")
@config_options
@click.option("--data", default=None, help="A preprocess output (default: this project's).")
@click.option("--out", "out_dir", default=None, help=OUT_HELP.format("train"))
@click.option(
    "--resume", default=None, help="A previous train output: continue its epochs and MLflow run."
)
@click.option("--arch", default=None)
@click.option("--encoder", "encoder_name", default=None)
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default=None)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="DDP processes on this machine (one per GPU; Gloo on CPU). 1 trains in this process.",
)
def train_command(config_path, overrides, data, out_dir, resume, nproc, **options):
    """Train a segmentation model on preprocessed tiles; log it to MLflow."""
    from components.train.launch import train_processes

    cfg = load_config(config_path, overrides, {"train": set_if({}, **options)})
    data = data or stage_run_dir(cfg, "preprocess")
    out = out_dir or stage_run_dir(cfg, "train")
    m = train_processes(cfg, data=data, out=out, resume=resume, nproc=nproc)
    if "run_id" in m:
        click.echo(
            f"train: best val mean IoU {m['best_val_mean_iou']:.4f} after epoch {m['last_epoch']}, "
            f"run {m['run_id']}, model {m['model_uri']} -> {out}"
        )


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
@click.option("--device", default=None)
def evaluate_command(config_path, overrides, model, data, out_dir, device):
    """Evaluate on the full-resolution test split; write a report with pictures."""
    from components.evaluate.stage import run_evaluate

    cfg = load_config(config_path, overrides, {"evaluate": set_if({}, device=device)})
    model = model or stage_run_dir(cfg, "train")
    data = data or stage_run_dir(cfg, "preprocess")
    out = out_dir or stage_run_dir(cfg, "evaluate")
    m = run_evaluate(cfg, model=model, data=data, out=out)
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in m["iou"].items() if v is not None)
    click.echo(
        f"evaluate: mean IoU {m['mean_iou']:.4f} ({per_class}) on {m['images']} images -> {out}"
    )


@click.command("register")
@config_options
@click.option("--evaluation", default=None, help="An evaluate output (default: this project's).")
@click.option(
    "--model", "-m", default=None, help="MLflow model URI to register (default: the evaluated one)."
)
@click.option("--out", "out_dir", default=None, help=OUT_HELP.format("register"))
@click.option("--min-improvement", type=float, default=None)
def register_command(config_path, overrides, evaluation, model, out_dir, min_improvement):
    """Register the evaluated model; alias challenger; champion only if it wins."""
    from components.register.stage import run_register

    cfg = load_config(
        config_path, overrides, {"register": set_if({}, min_improvement=min_improvement)}
    )
    evaluation = evaluation or stage_run_dir(cfg, "evaluate")
    out = out_dir or stage_run_dir(cfg, "register")
    d = run_register(cfg, evaluation=evaluation, model=model, out=out)
    state = "is now champion" if d["promoted"] else "stays challenger"
    click.echo(f"register: {d['name']} version {d['version']} {state}: {d['reason']}")


@click.command("compare")
@config_options
@click.option(
    "--model", "name", default=None, help="Registered model name (default: the project's)."
)
@click.option("--versions", "by_versions", is_flag=True, help="ITEMS are version numbers.")
@click.option("--aliases", "by_aliases", is_flag=True, help="ITEMS are aliases.")
@click.option("--last", type=int, default=None, help="The last N versions (default 5).")
@click.option("--out", "out_dir", default=None, help=OUT_HELP.format("compare"))
@click.argument("items", nargs=-1)
def compare_command(config_path, overrides, name, by_versions, by_aliases, last, out_dir, items):
    """Side-by-side table of model versions: `--versions 3 5`, `--aliases champion challenger`, `--last N`."""
    from components.register.compare import run_compare

    if items and not (by_versions or by_aliases):
        raise click.UsageError("give --versions or --aliases before the items")
    if (by_versions or by_aliases) and not items:
        raise click.UsageError("--versions/--aliases need at least one item")
    try:
        versions = [int(v) for v in items] if by_versions else None
    except ValueError:
        raise SegloopError(f"--versions takes numbers, got {' '.join(items)}") from None
    cfg = load_config(config_path, overrides)
    out = out_dir or stage_run_dir(cfg, "compare")
    r = run_compare(
        cfg, out=out, model=name, versions=versions,
        aliases=list(items) if by_aliases else None, last=last,
    )  # fmt: skip
    click.echo(r["markdown"])
    for w in r["warnings"]:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    click.echo(f"written: {out}/compare.md, compare.csv, compare.html")


def register(group: click.Group) -> None:
    for command in (
        preprocess_command, train_command, evaluate_command, register_command, compare_command,
    ):  # fmt: skip
        group.add_command(command)
