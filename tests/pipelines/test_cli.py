"""The `segloop` command line: its command table, and what a command loads before it works."""

from __future__ import annotations

import importlib
import json
import sqlite3
import subprocess
import sys

import click
from click.testing import CliRunner
from paths import REPO_ROOT  # tests/ is on sys.path

from pipelines.cli import COMMANDS, SUMMARIES, cli


def test_command_table_matches_what_the_modules_register():
    for module in dict.fromkeys(COMMANDS.values()):
        group = click.Group()
        importlib.import_module(module).register(group)
        assert set(group.commands) == {n for n, m in COMMANDS.items() if m == module}, module


def test_help_summaries_are_the_commands_own():
    """`segloop --help` lists SUMMARIES (so it imports no command module); each is the first
    paragraph of the command's own help."""
    assert set(SUMMARIES) == set(COMMANDS)
    ctx = click.Context(cli)
    for name in COMMANDS:
        own = cli.get_command(ctx, name).help.split("\n\n")[0].replace("\n", " ")
        assert SUMMARIES[name] == own, name


def test_help_loads_no_command_module():
    code = (
        "import json, sys\n"
        "from pipelines.cli import cli\n"
        "try:\n    cli.main(['--help'], standalone_mode=False)\n"
        "except SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    modules = set(json.loads(out.splitlines()[-1]))
    assert not modules & {*COMMANDS.values(), "pydantic", "pipelines.config"}


def test_help_lists_every_command_and_a_typo_gets_a_suggestion():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = result.output.split("Commands:")[1]
    assert all(f"  {name} " in listed for name in COMMANDS)
    result = CliRunner().invoke(cli, ["quer"])
    assert result.exit_code == 2 and "Did you mean 'query'?" in result.output


def test_query_loads_only_what_it_needs(tmp_path):
    """`segloop query` (issue #16, start-up): its own command module, no numpy (sampling runs
    in SQL), no OmegaConf (plain overrides merge as dicts), no boto3 (local paths)."""
    with sqlite3.connect(tmp_path / "t.db") as conn:
        conn.execute("CREATE TABLE images (image_id TEXT PRIMARY KEY, image_uri TEXT)")
        conn.executemany(
            "INSERT INTO images VALUES (?, ?)", [(f"i{i}", f"/x/{i}.jpg") for i in range(5)]
        )
    code = f"""
import json, sys
from pipelines.cli import cli
cli.main(["query", "--db-url", "sqlite:///{tmp_path / "t.db"}", "--table", "images",
          "--sample", "seeded:n=3,seed=1", "-o", "io.out_root={tmp_path / "runs"}",
          "-o", "query.allow_empty=true"], standalone_mode=False)
print(json.dumps(sorted(sys.modules)))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    modules = set(json.loads(out.splitlines()[-1]))
    assert {m for m in modules if m.startswith("pipelines.cli.")} == {
        "pipelines.cli.common",
        "pipelines.cli.options",  # the options made from the stage's settings
        "pipelines.cli.query",
    }
    assert not modules & {"numpy", "omegaconf", "boto3"}
    assert "3 rows" in out
