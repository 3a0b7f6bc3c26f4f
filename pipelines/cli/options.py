"""Command-line options made from a stage's settings model, so a flag cannot drift from its
setting: the flag's name, type, choices and help all come from the pydantic field.

`@settings_options(InferSettings, "tile_size", "overlap", batch_size="-b")` adds `--tile-size`,
`--overlap` and `--batch-size/-b`; each passes its value to the command under the field's name
(None when not given), ready for `set_if(section, **options)`. Written here because click has no
bridge to pydantic that keeps options optional (only given flags override the config); the
pydanclick builds the whole model from the flags, so its defaults would override the config file.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any, Literal

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

SCALARS = {int: int, float: float, str: str}


def _command_line_type(annotation: Any) -> Any:
    """What a flag of this setting takes: `X | None` -> X; a union of a scalar or a choice and
    a structure (`float | dict[str, float]`) -> the scalar or choice (the structure is for
    the config file)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        simple = [a for a in args if a in SCALARS or typing.get_origin(a) is Literal]
        return args[0] if len(args) == 1 else (simple[0] if simple else str)
    return annotation


def _click_type(annotation: Any) -> Any:
    if typing.get_origin(annotation) is Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)])
    return SCALARS.get(annotation, str)


def _help(field: FieldInfo) -> str:
    text = (field.description or "").strip()
    default = field.get_default(call_default_factory=True)
    if default not in (None, "", [], {}):
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        text = f"{text} (default: {shown})" if text else f"default: {shown}"
    return text


def setting_option(model: type[BaseModel], name: str, *aliases: str) -> Callable:
    """The click option of settings field `name` of `model` (see the module docstring)."""
    field = model.model_fields[name]  # KeyError: a flag for a setting that does not exist
    annotation = _command_line_type(field.annotation)
    flag = "--" + name.replace("_", "-")
    kwargs: dict[str, Any] = {"default": None, "help": _help(field)}
    if annotation is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, *aliases, **kwargs)
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (str,)
        kwargs.update(multiple=True, type=_click_type(_command_line_type(item)))
        kwargs["help"] += " (repeatable)"
    else:
        kwargs["type"] = _click_type(annotation)
    return click.option(flag, *aliases, name, **kwargs)


def settings_options(model: type[BaseModel], /, *names: str, **aliases: str) -> Callable:
    """`setting_option` for each of `names` and of `aliases` (field -> its extra flags, space
    separated: `inputs="--input -i"`)."""

    def decorate(func: Callable) -> Callable:
        for name in reversed([*names, *aliases]):
            extra = tuple(aliases.get(name, "").split())
            func = setting_option(model, name, *extra)(func)
        return func

    return decorate
