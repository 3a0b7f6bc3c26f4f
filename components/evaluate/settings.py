"""Config section `evaluate`."""

from pydantic import Field

from components.core.config import SharedConfig
from components.core.settings_base import Section


class EvaluateSettings(Section):
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    overlap: float = Field(
        0.25, ge=0, lt=1, description="tile overlap share, full-resolution inference"
    )
    amp: str = Field("auto", pattern="^(auto|bf16|fp16|off)$", description="as infer.amp")
    batch_size: int = Field(8, ge=1, description="tiles per forward pass")
    grid_images: int = Field(4, ge=1, description="best and worst images shown in the report")
    log_to_mlflow: bool = Field(True, description="log metrics and report to the model's run")
    max_failures: int = Field(
        0,
        ge=0,
        description="images that may fail (each recorded in the manifest) before the stage fails",
    )


class EvaluateConfig(SharedConfig):
    """What the evaluate stage reads: the shared sections and its own `evaluate` section."""

    evaluate: EvaluateSettings = EvaluateSettings()
