"""The manual (docs/, mkdocs.yml, README.md) cannot drift from the code: it builds with
`mkdocs build --strict`, the getting-started commands marked `<!-- docs-test: run -->` run,
every `segloop` command line shown anywhere names a real command and real options, and every
file of the repository it names exists."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from pipelines.cli import cli

# The repository root: the folder above this file that holds mkdocs.yml (wherever tests/ puts it).
ROOT = next(d for d in Path(__file__).resolve().parents if (d / "mkdocs.yml").is_file())
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
RUN_MARKER = "<!-- docs-test: run -->"
SHELL_LANGS = {"bash", "sh", "shell"}
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
# A repository path as the manual writes it: in a code span, or a file name with its suffix.
REPO_PATH = re.compile(
    r"`((?:components|pipelines|tests|benchmarks|images|manifests|\.ci)/[\w./-]*)`"
    r"|(?<![\w/.])((?:components|pipelines|tests|benchmarks|images|manifests)/[\w./-]+"
    r"\.(?:py|sh|yaml|Dockerfile|conf|md))"
)


def shell_blocks(text: str) -> list[tuple[int, str]]:
    """(offset, body) of each fenced bash/sh block of a page."""
    return [(m.start(), m.group(2)) for m in FENCE.finditer(text) if m.group(1) in SHELL_LANGS]


def marked_blocks(text: str) -> list[str]:
    """The shell blocks right after a RUN_MARKER line: the commands the test runs."""
    return [
        body for start, body in shell_blocks(text) if text[:start].rstrip().endswith(RUN_MARKER)
    ]


def segloop_command_lines(body: str) -> list[list[str]]:
    """Each `segloop ...` invocation of a shell block, as words (continuations joined,
    comments dropped, split at `&&`, `;`, `|`)."""
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            words = list(lexer)
        except ValueError:  # an unbalanced quote in an example: not a command to check
            continue
        current: list[str] = []
        for word in [*words, ";"]:
            if word in {"&&", "||", ";", "|", "&"}:
                if current and Path(current[0]).name == "segloop":
                    commands.append(current[1:])
                current = []
            else:
                current.append(word)
    return commands


def option_names(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names


def check_command(words: list[str]) -> str | None:
    """What is wrong with `segloop WORDS`, or None. Placeholders (`<stage>`, `...`) are skipped."""
    command: click.Command = cli
    ctx = click.Context(cli)
    rest = [w for w in words if w not in {"-v", "--verbose"}]
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        if "<" in name or name in {"...", "COMMAND"}:
            return None
        sub = command.get_command(ctx, name)
        if sub is None:
            return f"no command {name!r}"
        command = sub
    known = option_names(command)
    for word in rest:
        if word == "--":
            break
        if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", word) and word.split("=")[0] not in known:
            return f"{command.name}: no option {word.split('=')[0]!r}"
    return None


def test_site_builds_strict(tmp_path):
    """A broken link or anchor, a page left out of the nav, or a missing page fails."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,  # a bound, not a goal: the build takes seconds on an idle machine
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "stages" / "query" / "index.html").is_file()


def test_every_segloop_command_shown_exists_with_its_options():
    problems, checked = [], 0
    for page in PAGES:
        for _, body in shell_blocks(page.read_text()):
            for words in segloop_command_lines(body):
                checked += 1
                if problem := check_command(words):
                    problems.append(
                        f"{page.relative_to(ROOT)}: segloop {shlex.join(words)}: {problem}"
                    )
    assert checked > 50, "the manual's command lines were not found"
    assert not problems, "\n".join(problems)


def test_every_repository_file_named_exists():
    """Files the manual names (`components/core/redact.py`, `tests/kfp_stub.py`, ...) exist,
    so a move or a rename updates the page. Env files are the reader's own (git ignores them)."""
    named = {
        (page.relative_to(ROOT), (match.group(1) or match.group(2)).rstrip("."))
        for page in PAGES
        for match in REPO_PATH.finditer(page.read_text())
    }
    assert len(named) > 20, "the manual's file names were not found"
    missing = [f"{page}: {path}" for page, path in named if not (ROOT / path).exists()]
    missing = [line for line in missing if not line.endswith(".env")]
    assert not missing, "\n".join(sorted(set(missing)))


def test_getting_started_commands_run(tmp_path):
    """The marked blocks of the getting-started page run, in an empty folder, as a reader
    would type them (`.venv/bin` first on the PATH; no config from the environment)."""
    blocks = marked_blocks((ROOT / "docs" / "getting-started.md").read_text())
    assert len(blocks) >= 2, f"no blocks marked {RUN_MARKER!r}"
    env = {k: v for k, v in os.environ.items() if k != "SEGLOOP_CONFIG"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for body in blocks:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", body],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=480,  # a bound, not a goal: seconds on an idle machine
        )
        assert result.returncode == 0, f"{body}\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize(
    ("words", "problem"),
    [
        (["query", "--filters", "a=b", "--preview", "2"], None),
        (["data", "synth", "--n", "4"], None),
        (["query", "--no-such-flag"], "query: no option '--no-such-flag'"),
        (["frobnicate"], "no command 'frobnicate'"),
        (["<stage>", "--whatever"], None),
    ],
)
def test_the_command_check_itself(words, problem):
    assert check_command(words) == problem
