"""`segloop demo`: the active-learning loop end to end (what `make demo` runs)."""

from __future__ import annotations

import logging
import os

import click

from pipelines.cli.common import config_options
from pipelines.demo_scaffolding import demo_scaffolding


@click.command("demo")
@click.option(
    "--small",
    is_flag=True,
    help="A faster, smaller run (fewer and fewer-epoch rounds): what the tests run.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="Active-learning rounds after round 0.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the synthetic dataset, the probe set, training and random selection.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Run folder (default: runs/demo/<time>).",
)
@click.option(
    "--wait",
    is_flag=True,
    help="People refine the tasks (in CVAT when CVAT_HOST is set, else in the task folders): "
    "wait until they complete them instead of using the simulated annotator.",
)
@click.option(
    "--wait-timeout",
    "wait_timeout_s",
    type=click.FloatRange(min=1),
    default=7200,
    show_default=True,
    help="--wait: give up after this many seconds per round.",
)
@click.option(
    "--poll",
    "poll_s",
    type=click.FloatRange(min=0.05),
    default=10,
    show_default=True,
    help="--wait: seconds between looks at the tasks.",
)
@click.option(
    "--pool",
    type=click.Choice(["field", "plain"]),
    default="field",
    show_default=True,
    help="The synthetic pool: field (plot sessions of near-duplicate shots, a rare weed) or "
    "plain (independent images).",
)
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=None,
    help="Pool images the champion pre-annotates each round, of which select sends the budget "
    "to people [default: 36; 10 with --small].",
)
@config_options
def demo(
    small, rounds, seed, workdir, wait, wait_timeout_s, poll_s, pool, window, config_path, overrides
):
    """Run the active-learning loop end to end on the embedded stack.

    Starts the stack if needed, writes a synthetic dataset, trains a first model on a labelled
    seed set (round 0), then runs ROUNDS rounds of: refine the pre-annotated batch (simulated
    annotator, or people with --wait) -> the active_learning pipeline on KFP's local runner.
    Ends with a summary table, the HTML loop report and the MLflow UI address.
    """
    demo = demo_scaffolding("run")

    # The demo tells its own story (one line per task); stage logs go to the task log files.
    # `segloop -v` or SEGLOOP_LOG_LEVEL bring the in-process log lines back.
    root = logging.getLogger()
    if root.level > logging.DEBUG and "SEGLOOP_LOG_LEVEL" not in os.environ:
        demo.quiet_console()

    demo.run_demo(
        config_path,
        overrides,
        small=small,
        rounds=rounds,
        seed=seed,
        workdir=workdir,
        wait=wait,
        wait_timeout_s=wait_timeout_s,
        poll_s=poll_s,
        echo=click.echo,
        pool=pool,
        window=window,
    )


def register(group: click.Group) -> None:
    group.add_command(demo)
