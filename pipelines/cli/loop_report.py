"""`segloop loop-report` (docs/stages/loop-report.md)."""

from __future__ import annotations

import click

from components.core.config import stage_run_dir
from components.loop_report.settings import LoopReportSettings
from pipelines.cli.common import OUT_HELP, config_options, set_if
from pipelines.cli.options import settings_options
from pipelines.config import load_config


@click.command("loop-report")
@config_options
@click.option(
    "--download",
    default=None,
    help="This round's download-cvat output (default: this project's).",
)
@click.option(
    "--model", "registry_model", default=None, help="Registered model (default: the project's)."
)
@click.option("--out", "out_dir", default=None, help=OUT_HELP.format("loop_report"))
@settings_options(LoopReportSettings, "samples")
def loop_report_command(config_path, overrides, download, registry_model, out_dir, **options):
    """The loop so far as one HTML page: rounds, test IoU, correction effort, samples."""
    from components.loop_report.stage import run_loop_report

    cfg = load_config(config_path, overrides, {"loop_report": set_if({}, **options)})
    download = download or stage_run_dir(cfg, "download_cvat")
    out = out_dir or stage_run_dir(cfg, "loop_report")
    m = run_loop_report(cfg, download=download, registry_model=registry_model, out=out)
    click.echo(
        f"loop report: {m['rounds']} rounds of {m['registered_model']}, {m['samples']} samples "
        f"-> {out}/loop_report.html"
    )


def register(group: click.Group) -> None:
    group.add_command(loop_report_command)
