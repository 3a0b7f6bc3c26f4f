"""Config section `infer` (see docs/stages/infer.md)."""

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
        description="checkpoint folder, s3:// prefix, models:/<name>@<alias>, "
        "models:/<name>/<version> or runs:/<id>/<path> (MLflow URIs resolve on "
        "mlflow.tracking_uri, else $MLFLOW_TRACKING_URI)",
    )
    # The infer stage's own alias, not `register.champion_alias`: a stage reads only the shared
    # sections and its own, and the alias pre-annotation uses is a per-run choice of its own
    # (e.g. `challenger` to try the newest version) while `register.*_alias` names what register
    # writes. Moving both into the shared `mlflow` section would need a validator to keep
    # `register.champion_alias` an accepted key; renaming the champion means setting both.
    model_alias: str = Field(
        "champion",
        min_length=1,
        description="with no model: pre-annotate with models:/<registered model>@<this alias>",
    )
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto | cpu | cuda | cuda:N"
    )
    tile_size: int | None = Field(None, ge=16, description="default: the model's tile size")
    overlap: float = Field(
        0.25, ge=0.0, lt=0.9, description="share of a tile that neighbours share"
    )
    window: Literal["hann", "gaussian"] = Field(
        "hann", description="how overlapping tiles are blended: weights fall off to the tile edges"
    )
    batch_size: int = Field(8, ge=1, description="tiles per forward pass (from several images)")
    num_workers: int | None = Field(
        None,
        ge=0,
        description="image decoding workers: processes on CUDA, threads on CPU (0 = main "
        "thread); default: from the CPU budget (CPU: 2 threads, 1 in a 1-CPU budget; CUDA: "
        "the budget's CPUs less one, 1 to 8)",
    )
    prefetch: int = Field(2, ge=1, description="decoded images queued per worker")
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 on CUDA (fp16 on older GPUs) and on CPUs with AMX/AVX512-BF16, else fp32",
    )
    channels_last: bool = Field(True, description="NHWC memory layout (faster convolutions)")
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
    embeddings: bool = Field(
        True,
        description="write each image's pooled encoder features to the manifest (`embedding`), "
        "for selection in the model's feature space (select.strategy kcenter, badge, "
        "uncertain_kcenter); free for a Unet, one more encoder pass for other architectures",
    )
    coco: bool = Field(True, description="write predictions.json (COCO, RLE)")
    overlays: bool = Field(False, description="write overlays/<id>.jpg: the mask over the image")
    overlay_max_side: int = Field(2048, ge=64, description="overlays are downscaled to this")
    max_failures: int = Field(
        0,
        ge=0,
        description="images that may fail (each recorded in the manifest) before the stage fails",
    )
    shards: int = Field(
        1,
        ge=1,
        description="KFP pipelines: parallel infer tasks (contiguous blocks of records) merged "
        "into one output; shapes the graph, so changing it needs a recompile (1: one infer task)",
    )
    overwrite: bool = Field(
        False,
        description="start the output folder afresh (an earlier run's outputs are removed); "
        "needed when it was made with other settings",
    )


# The `model_uri` a pipeline passes to infer for "the registered model at `infer.model_alias`,
# both named by the run's config_json" (active_learning: the champion after this round's
# register, whatever `infer.model` says). Resolved by `components.infer.stage.pipeline_model`.
REGISTERED_MODEL = "models:/{mlflow.registered_model}@{infer.model_alias}"


class InferConfig(SharedConfig):
    """What the infer stage reads: the shared sections and its own `infer` section."""

    infer: InferSettings = InferSettings()
