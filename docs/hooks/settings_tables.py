"""MkDocs hook, so that a stage's reference page and the code (or the troubleshooting page)
cannot disagree:

- a `<!-- settings: SECTION -->` line becomes the table of that config section, made from its
  pydantic model (key, type, default, CLI flag, description); an unknown section fails the build;
- a `<!-- errors: STAGE -->` line becomes the rows of troubleshooting.md's table for that stage.
"""

from __future__ import annotations

import json
import posixpath
import re
import types
import typing
from pathlib import Path

import click
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

MARKER = re.compile(r"^<!-- settings: ([a-z_]+) -->$", re.M)
ERRORS_MARKER = re.compile(r"^<!-- errors: ([a-z_]+) -->$", re.M)
TROUBLESHOOTING = Path(__file__).resolve().parents[1] / "troubleshooting.md"
# The names a stage goes by in the troubleshooting table's first column ("query / data", ...).
ERROR_NAMES = {
    "query": {"query", "data", "data synth"},
    "infer": {"infer"},
    "select": {"select"},
    "upload_cvat": {"upload-cvat", "upload"},
    "download_cvat": {"download-cvat", "download"},
    "preprocess": {"preprocess"},
    "train": {"train"},
    "evaluate": {"evaluate"},
    "register": {"register"},
    "loop_report": {"loop-report"},
}

# The command whose flags set a section's keys (a flag sets the key it is named after).
COMMAND_OF_SECTION = {
    "query": ["query"],
    "infer": ["infer"],
    "select": ["select"],
    "upload_cvat": ["upload-cvat"],
    "download_cvat": ["download-cvat"],
    "preprocess": ["preprocess"],
    "train": ["train"],
    "evaluate": ["evaluate"],
    "register": ["register"],
    "loop_report": ["loop-report"],
    "cvat": ["upload-cvat", "download-cvat"],
}


def cell(text: str) -> str:
    """A table cell: `|` escaped; `<` too outside code spans (`alias:<alias>` is no HTML tag)."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        named = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or none" if type(None) in args else "")
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def default_text(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(to_jsonable_python(value))}`"


def cli_flags(section: str) -> dict[str, str]:
    """Setting name -> the flags that set it, over the section's commands."""
    from pipelines.cli import cli

    flags: dict[str, list[str]] = {}
    ctx = click.Context(cli)
    for name in COMMAND_OF_SECTION.get(section, []):
        for param in cli.get_command(ctx, name).params:
            if isinstance(param, click.Option) and param.name:
                for opt in param.opts:
                    if opt.startswith("--") and opt not in flags.setdefault(param.name, []):
                        flags[param.name].append(opt)
    return {key: ", ".join(f"`{o}`" for o in opts) for key, opts in flags.items()}


def rows(model: type[BaseModel], prefix: str, flags: dict[str, str]) -> list[str]:
    out = []
    for key, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += rows(annotation, f"{prefix}{key}.", flags)
            continue
        flag = flags.get(key, "") if not prefix.count(".") > 1 else ""
        out.append(
            f"| `{prefix}{key}` | {cell(type_name(annotation))} | {cell(default_text(field))} "
            f"| {flag} | {cell(field.description or '')} |"
        )
    return out


def settings_table(section: str) -> str:
    from pipelines.config import SegloopConfig

    field = SegloopConfig.model_fields.get(section)
    if field is None:
        raise ValueError(f"docs: no config section {section!r} (settings marker)")
    header = ["| key | type | default | CLI flag | meaning |", "|---|---|---|---|---|"]
    return "\n".join(header + rows(field.annotation, f"{section}.", cli_flags(section)))


def errors_table(stage: str, page_path: str) -> str:
    """The troubleshooting rows of STAGE, links rebased from troubleshooting.md to the page."""
    if stage not in ERROR_NAMES:
        raise ValueError(f"docs: no stage {stage!r} (errors marker)")
    lines = TROUBLESHOOTING.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| stage |"))
    picked = [
        line
        for line in lines[header + 2 :]
        if line.startswith("|")
        and {name.strip() for name in line.split("|")[1].split("/")} & ERROR_NAMES[stage]
    ]
    up = posixpath.relpath(".", posixpath.dirname(page_path) or ".")

    def rebase(match: re.Match) -> str:
        target = match.group(1)
        if re.match(r"[a-z]+:|#", target):
            return match.group(0)
        return f"]({posixpath.normpath(posixpath.join(up, target))})"

    rows = [re.sub(r"\]\(([^)]+)\)", rebase, line) for line in picked]
    return "\n".join(lines[header : header + 2] + rows) if rows else "None of its own."


def on_page_markdown(markdown: str, page, **_) -> str:
    markdown = MARKER.sub(lambda m: settings_table(m.group(1)), markdown)
    return ERRORS_MARKER.sub(lambda m: errors_table(m.group(1), page.file.src_uri), markdown)
