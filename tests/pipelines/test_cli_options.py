"""Stage commands take their setting flags from the stage's settings model
(pipelines/cli/options.py), so a flag cannot drift from its setting."""

from __future__ import annotations

import typing

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from components.config import RunConfig
from pipelines.cli import COMMANDS, cli
from pipelines.cli.common import set_if
from pipelines.cli.options import _command_line_type, setting_option

# Each stage command and the config section its setting flags belong to.
STAGE_SECTIONS = {
    "query": "query",
    "infer": "infer",
    "select": "select",
    "upload-cvat": "upload_cvat",
    "download-cvat": "download_cvat",
    "preprocess": "preprocess",
    "train": "train",
    "evaluate": "evaluate",
    "register": "register",
    "loop-report": "loop_report",
}
# The one flag kept by hand, and why.
MADE_BY_HAND = {("query", "projection"): "comma-separated on the command line, a list in the file"}
SECTIONS = {
    name: field.annotation
    for name, field in RunConfig.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
}


def command(name: str) -> click.Command:
    return cli.get_command(click.Context(cli), name)


def test_every_stage_has_its_own_command_module():
    assert len({COMMANDS[name] for name in STAGE_SECTIONS}) == len(STAGE_SECTIONS)
    for name, section in STAGE_SECTIONS.items():
        assert COMMANDS[name].rsplit(".", 1)[1] == section, name


@pytest.mark.parametrize("name", sorted(STAGE_SECTIONS))
def test_a_flag_named_after_a_setting_is_made_from_it(name):
    """No stage command copies a setting by hand: an option whose destination is a field of the
    stage's section carries that field's help (and so its type and choices, made with it)."""
    model = SECTIONS[STAGE_SECTIONS[name]]
    generated = [
        p
        for p in command(name).params
        if isinstance(p, click.Option)
        and p.name in model.model_fields
        and (name, p.name) not in MADE_BY_HAND
    ]
    assert generated, name
    for option in generated:
        made = setting_option(model, option.name)(lambda **_: None).__click_params__[0]
        assert option.help == made.help, (name, option.name)
        assert type(option.type) is type(made.type), (name, option.name)


def _value_for(info: FieldInfo) -> str | None:
    """A command-line value the setting accepts (its default where it has one, else one that
    meets its bounds), or None where the flag takes no value."""
    annotation = _command_line_type(info.annotation)
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation) or (str,)
        annotation = _command_line_type(annotation)
    if annotation is bool:
        return None
    default = info.get_default(call_default_factory=True)
    default = default[0] if isinstance(default, list) and default else default
    if typing.get_origin(annotation) is typing.Literal:
        return str(default if default is not None else typing.get_args(annotation)[-1])
    if default not in (None, [], ""):
        return str(default)
    low = max([getattr(m, "ge", None) or getattr(m, "gt", None) or 1 for m in info.metadata] or [1])
    return {int: str(low), float: str(float(low))}.get(annotation, "x")


CASES = [
    (section, field)
    for section, model in SECTIONS.items()
    for field, info in model.model_fields.items()
    if not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel))
    and typing.get_origin(_command_line_type(info.annotation)) is not dict
    and _command_line_type(info.annotation) is not dict
]


@pytest.mark.parametrize(("section", "field"), CASES)
def test_every_setting_made_into_a_flag_reaches_its_section(section, field):
    """For every setting of every section: the flag made from it parses a value the setting
    takes, and the value lands in the config section under the field's name."""
    model = SECTIONS[section]
    seen = {}

    @click.command()
    @setting_option(model, field)
    def probe(**options):
        seen.update(set_if({}, **options))

    flag = "--" + field.replace("_", "-")
    value = _value_for(model.model_fields[field])
    args = [flag] if value is None else [flag, value]
    result = CliRunner().invoke(probe, args)
    assert result.exit_code == 0, result.output
    try:
        parsed = model.model_validate(seen)
    except Exception as exc:  # a value the flag takes but the setting refuses: a drifted type
        pytest.fail(f"{section}.{field}: {args} -> {seen}: {exc}")
    assert field in parsed.model_fields_set
