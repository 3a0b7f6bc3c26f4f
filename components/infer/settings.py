"""Config section `infer` (see README, "segloop infer")."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from components.core.config import SharedConfig
from components.core.settings_base import Section


class InferSettings(Section):
    predictor: str = Field("smp", description="predictor name (smp = a segloop checkpoint)")
    predictor_params: dict[str, Any] = Field(default_factory=dict)
    label_map: dict[str, str] = Field(
        default_factory=dict, description="model class name -> project label name"
    )
    drop: list[str] = Field(
        default_factory=list, description="model classes merged into background"
    )
    model: str | None = Field(
        None,
        description="checkpoint folder, s3:// prefix, models:/<name>@<alias>, models:/<name>/<version> or runs:/<id>/<path>",
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    tile_size: int | None = Field(None, ge=16, description="default: the model's tile size")
    overlap: float = Field(
        0.25, ge=0.0, lt=0.9, description="share of a tile that neighbours share"
    )
    window: Literal["hann", "gaussian"] = "hann"
    batch_size: int = Field(8, ge=1, description="tiles per forward pass (from several images)")
    num_workers: int = Field(2, ge=0, description="image decoding processes (0 = main process)")
    prefetch: int = Field(2, ge=1, description="decoded images queued per worker")
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 on CUDA (fp16 on older GPUs) and on CPUs with AMX/AVX512-BF16, else fp32",
    )
    channels_last: bool = True
    threshold: float | dict[str, float] | None = Field(
        None,
        description="none: argmax; a number or {class name: t} (others 0.5): the most probable class reaching its threshold",
    )
    min_area: int = Field(
        0, ge=0, description="regions smaller than this (pixels) become background"
    )
    uncertain_margin: float = Field(
        0.2, gt=0.0, le=1.0, description="a pixel is uncertain when top-1 minus top-2 < this"
    )
    coco: bool = Field(True, description="write predictions.json (COCO, RLE)")
    overlays: bool = False
    overlay_max_side: int = Field(2048, ge=64, description="overlays are downscaled to this")
    max_failures: int = Field(0, ge=0)
    overwrite: bool = False


class InferConfig(SharedConfig):
    """What the infer stage reads: the shared sections and its own `infer` section."""

    infer: InferSettings = InferSettings()
