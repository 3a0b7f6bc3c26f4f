"""The labels file: the single source of truth for class names, ids and colours.

Format (YAML or JSON): `{"labels": [{"name": "background", "id": 0, "color": "#000000"}, ...]}`.
Class 0 is background; ids are contiguous from 0 so that they index model outputs.

The labels' own colours are for annotation tools (CVAT); reports draw masks over photos of soil
and plants with `OVERLAY_COLORS` instead (`LabelSet.overlay_palette`, `LabelSet.legend`,
`paint_overlay`), saturated hues that none of soil, green leaves or reddish leaves look like.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, Field, ValidationError, field_validator

from components.core import limits, storage
from components.core.config import load_yaml
from components.core.errors import SegloopError

HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
# Overlay colours of classes 1, 2, ... (cycled): blue, yellow, cyan, white, orange, violet,
# red. They stand out against brown and grey soil and against green and reddish leaves; magenta
# is left for error and change maps.
OVERLAY_COLORS = ("#1f5fff", "#ffe600", "#00e5ff", "#ffffff", "#ff7f00", "#b84dff", "#ff2a2a")
MARK_RGB = (255, 0, 255)  # magenta: wrong or changed pixels


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

    def overlay_palette(self) -> list[tuple[int, int, int]]:
        """Report colours by class id (class 0, background, is never drawn)."""
        return [(0, 0, 0)] + [_rgb(overlay_color(i)) for i in range(1, self.num_classes)]

    def legend(self) -> list[tuple[str, str]]:
        """(class name, overlay colour as #rrggbb) of the classes reports draw (not background)."""
        return [(label.name, overlay_color(label.id)) for label in self.labels[1:]]

    @classmethod
    def load(cls, uri: str | Path) -> LabelSet:
        text = limits.read_user_text(uri, limits.LABELS)
        try:
            if str(uri).endswith(".json"):
                data = json.loads(text)
            else:  # as a config: no duplicate keys, aliases bounded
                data = load_yaml(text, f"labels file {uri}")
            if isinstance(data, list):
                data = {"labels": data}
            return cls.model_validate(data)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise SegloopError(f"labels file {uri} cannot be parsed: {exc}") from None
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


# ---------------------------------------------------------------- overlays for reports


def overlay_color(class_id: int) -> str:
    """The report colour of class `class_id` (>= 1)."""
    return OVERLAY_COLORS[(class_id - 1) % len(OVERLAY_COLORS)]


def _rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def shrink(image: np.ndarray, masks: list[np.ndarray], max_side: int | None):
    """An image (bilinear) and its masks (nearest) scaled down to `max_side`, so that outlines
    drawn afterwards stay one pixel wide instead of being averaged away."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image, masks
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    return small, [
        np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) for m in masks
    ]


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a class region that touch another class (4-neighbourhood)."""
    edge = np.zeros(mask.shape, dtype=bool)
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    return edge


def paint_overlay(
    image: np.ndarray, mask: np.ndarray, palette: list[tuple[int, int, int]], alpha: float = 0.5
) -> np.ndarray:
    """Classes > 0 filled at `alpha` with solid outlines, over a dimmed copy of the image (so the
    colours, not the plants, are what stands out); class 0 and 255 (ignore) stay uncoloured."""
    lut = np.zeros((256, 3), dtype=np.float32)
    lut[1 : len(palette)] = np.asarray(palette[1:], dtype=np.float32)
    drawn = (mask > 0) & (mask != 255)
    out = image.astype(np.float32) * 0.7
    color = lut[mask]
    out[drawn] = (1 - alpha) * out[drawn] + alpha * color[drawn]
    edge = outline(np.where(drawn, mask, 0)) & drawn
    out[edge] = color[edge]
    return np.clip(out, 0, 255).astype(np.uint8)


def mark_pixels(image: np.ndarray, where: np.ndarray) -> np.ndarray:
    """The image dimmed to a third, with the pixels `where` is true in magenta."""
    out = image // 3
    out[where] = MARK_RGB
    return out
