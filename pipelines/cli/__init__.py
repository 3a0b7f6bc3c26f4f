"""The `segloop` command line. Each area registers its commands from its own module."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from components.core import redact, shutdown
from components.core.errors import SegloopError
from pipelines.cli.common import setup_logging

# The commands and the module that defines each (one module per stage, one per other area;
# each exposes `register(group)`, which adds its commands). A module is imported when one of
# its commands is looked up, so `segloop query` loads the query command alone; `--help` lists,
# and so imports, them all. tests/pipelines/test_cli.py checks this table against the modules.
COMMANDS = {
    "data": "pipelines.cli.data",
    **dict.fromkeys(("up", "status", "down"), "pipelines.cli.stack"),
    # One module per stage, in loop order.
    "query": "pipelines.cli.query",
    "infer": "pipelines.cli.infer",
    "select": "pipelines.cli.select",
    "upload-cvat": "pipelines.cli.upload_cvat",
    "download-cvat": "pipelines.cli.download_cvat",
    "preprocess": "pipelines.cli.preprocess",
    "train": "pipelines.cli.train",
    "evaluate": "pipelines.cli.evaluate",
    **dict.fromkeys(("register", "compare"), "pipelines.cli.register"),
    "loop-report": "pipelines.cli.loop_report",
    **dict.fromkeys(("compile", "run", "submit", "runs", "smoke-test"), "pipelines.cli.kfp"),
    **dict.fromkeys(("init", "deploy", "launch"), "pipelines.cli.lifecycle"),
    "demo": "pipelines.cli.demo",
}


# What `segloop --help` lists for each command: the first paragraph of the command's own help
# (tests/pipelines/test_cli.py checks each against it), so listing the commands imports none of
# their modules, nor pydantic and the config models they load (start-up: issue #22).
SUMMARIES = {
    "data": "Datasets and the image database.",
    "up": "Start SeaweedFS (S3) and an MLflow server on 127.0.0.1.",
    "status": "Show what the embedded stack runs.",
    "down": "Stop exactly the processes `segloop up` started.",
    "query": "Select image records (records.jsonl + query_spec.json).",
    "infer": "Segment images into masks/, predictions.json (COCO) and per-image uncertainty.",
    "select": "Pick the images to annotate first (uncertainty, diverse, random, stratified).",
    "upload-cvat": "Create annotation tasks with the images and their pre-annotations (masks or polygons).",
    "download-cvat": "Download refined annotations as class-id masks aligned with the images.",
    "preprocess": "Merge annotation datasets, split by image (stratified), tile, compute stats.",
    "train": "Train a segmentation model on preprocessed tiles; log it to MLflow.",
    "evaluate": "Evaluate on the full-resolution test split; write a report with pictures.",
    "register": "Register the evaluated model; alias challenger; champion only if it wins.",
    "compare": "Side-by-side table of model versions: `--versions 3 5`, `--aliases champion challenger`, `--last N`.",
    "loop-report": "The loop so far as one HTML page: rounds, test IoU, correction effort, samples.",
    "compile": "Compile PIPELINE to KFP YAML with the config's platform options (what CI runs).",
    "run": "Run PIPELINE on KFP's local runner against the embedded stack.",
    "submit": "Compile PIPELINE, upload it to Kubeflow (new pipeline or new version) and start a run.",
    "runs": "List and inspect pipeline runs on Kubeflow.",
    "smoke-test": "Run PIPELINE in the component images with KFP's DockerRunner (needs a Docker engine).",
    "init": "Scaffold FOLDER: run config, README, a test on synthetic images (+ a predictor module).",
    "deploy": "Build and push the images (where Docker runs), then upload each pipeline as a new version.",
    "launch": "Start a cluster run of the deployed PIPELINE (default: pre_annotation) with this config.",
    "demo": "Run the active-learning loop end to end on the embedded stack.",
}


class LazyGroup(click.Group):
    """A group whose commands are registered by their module when first looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            # An unknown name loads them all, for click's "Did you mean ...?".
            modules = [COMMANDS[cmd_name]] if cmd_name in COMMANDS else COMMANDS.values()
            for module in dict.fromkeys(modules):
                importlib.import_module(module).register(self)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's command list, from SUMMARIES for the commands not loaded yet."""
        limit = formatter.width - 6 - max(len(name) for name in self.list_commands(ctx))
        rows = [
            (
                name,
                self.commands[name].get_short_help_str(limit)
                if name in self.commands
                else click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit),
            )
            for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="segloop")
def cli(verbose: bool) -> None:
    """segloop: human-in-the-loop segmentation on Kubeflow Pipelines."""
    setup_logging(verbose)


# An error message longer than this is cut: a message is read, never a data dump.
MAX_MESSAGE_CHARS = 4000


def clip_message(text: str, size: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= size else f"{text[:size]}... (cut; {len(text):,} characters)"


def main() -> None:
    # Before anything runs: no secret reaches the terminal, and SIGTERM cleans up like Ctrl-C.
    redact.install()
    redact.guard_streams()
    shutdown.exit_cleanly_on_sigterm()
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:  # Ctrl-C inside a command: click's KeyboardInterrupt
        click.echo("aborted", err=True)
        shutdown.exit_now(130)
    except shutdown.Terminated:
        click.echo("terminated", err=True)
        shutdown.exit_now(shutdown.EXIT_CODE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SegloopError as exc:
        click.secho(f"error: {clip_message(str(exc))}", fg="red", err=True)
        sys.exit(2)
    except OSError as exc:
        if exc.filename is None:
            _library_s3_failure(exc)  # botocore's timeouts are OSErrors without a path
            raise  # not about a path: a bug to see whole
        # A path the system refuses (read-only, not a folder, disk full): one line, no traceback.
        logging.getLogger("segloop").debug("OS error", exc_info=True)
        click.secho(
            f"error: cannot use {clip_message(str(exc.filename), 300)}: "
            f"{exc.strerror or type(exc).__name__}; choose a path you may write (the "
            "command's --out, --out-dir or -O) or fix the path and its permissions",
            fg="red",
            err=True,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        shutdown.exit_now(130)
    except Exception as exc:
        _library_s3_failure(exc)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _library_s3_failure(exc: BaseException) -> None:
    """Exit with one line when `exc` is an S3 failure of a library's own client (MLflow's
    artifact store: segloop's own S3 calls already raise SegloopError); else return."""
    if "botocore" not in sys.modules:
        return  # no boto3 client was ever made (and storage stays out of start-up)
    from components.core import storage

    failure = storage.library_s3_failure(exc)
    if failure is not None:
        logging.getLogger("segloop").debug("S3 error", exc_info=True)
        click.secho(f"error: {clip_message(str(failure))}", fg="red", err=True)
        sys.exit(2)
