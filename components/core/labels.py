"""The labels file: the single source of truth for class names, ids and colours.

Format (YAML or JSON): `{"labels": [{"name": "background", "id": 0, "color": "#000000"}, ...]}`.
Class 0 is background; ids are contiguous from 0 so that they index model outputs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from components.core import storage
from components.core.errors import SegloopError

HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


class Label(BaseModel):
    name: str = Field(min_length=1)
    id: int = Field(ge=0, le=254)
    color: str = "#000000"

    @field_validator("color")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not HEX_COLOR.match(value):
            raise ValueError(f"color {value!r} must look like #rrggbb")
        return value.lower()

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


class LabelSet(BaseModel):
    labels: list[Label]

    @field_validator("labels")
    @classmethod
    def _consistent(cls, labels: list[Label]) -> list[Label]:
        ids = sorted(label.id for label in labels)
        if ids != list(range(len(labels))):
            raise ValueError(f"class ids must be 0..{len(labels) - 1} without gaps, got {ids}")
        names = [label.name for label in labels]
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be unique, got {names}")
        return sorted(labels, key=lambda label: label.id)

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def by_name(self, name: str) -> Label:
        for label in self.labels:
            if label.name == name:
                return label
        raise SegloopError(f"unknown label {name!r}; known labels: {', '.join(self.names)}")

    def palette(self) -> list[tuple[int, int, int]]:
        return [label.rgb for label in self.labels]

    @classmethod
    def load(cls, uri: str | Path) -> LabelSet:
        text = storage.read_text(uri)
        try:
            data = json.loads(text) if str(uri).endswith(".json") else yaml.safe_load(text)
            if isinstance(data, list):
                data = {"labels": data}
            return cls.model_validate(data)
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise SegloopError(f"labels file {uri} cannot be parsed: {exc}") from exc
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise SegloopError(f"labels file {uri} is invalid: {problems}") from None

    def save(self, uri: str | Path) -> None:
        if str(uri).endswith(".json"):
            storage.write_json(uri, self.model_dump())
        else:
            storage.write_text(uri, yaml.safe_dump(self.model_dump(), sort_keys=False))
