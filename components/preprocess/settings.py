"""Config section `preprocess`."""

from typing import Literal

from pydantic import Field, model_validator

from components.core.config import SharedConfig
from components.core.settings_base import Section


class PreprocessSettings(Section):
    inputs: list[str] = Field(
        default_factory=list,
        description="annotation datasets (folders or s3:// prefixes), oldest first",
    )
    test_inputs: list[str] = Field(
        default_factory=list,
        description="fixed held-out test datasets: all their images form the test split (the "
        "other images are split into train/val only), so successive models are compared on "
        "the same test split",
    )
    tile_size: int = Field(512, ge=16, description="training tile edge in pixels")
    mode: Literal["grid", "resize"] = Field(
        "grid",
        description="grid: pad + cut full-resolution tiles; resize: whole image resized to the tile",
    )
    overlap: int = Field(0, ge=0, description="grid mode: pixels shared by neighbouring tiles")
    min_foreground: float = Field(
        0.0,
        ge=0,
        le=1,
        description="train tiles whose labelled non-background share is below this are dropped",
    )
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    seed: int = Field(0, description="seed of the split")
    stratify: bool = Field(True, description="stratify the split by each image's dominant class")
    tile_format: Literal["png", "jpg"] = "png"
    workers: int = Field(4, ge=1, description="parallel image workers")
    max_failures: int = Field(
        0,
        ge=0,
        description="images that may fail (each recorded in the manifest) before the stage fails",
    )

    @model_validator(mode="after")
    def _check(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave images for training (< 1)")
        if self.overlap >= self.tile_size:
            raise ValueError("overlap must be smaller than tile_size")
        return self


class PreprocessConfig(SharedConfig):
    """What the preprocess stage reads: the shared sections and its own `preprocess` section."""

    preprocess: PreprocessSettings = PreprocessSettings()
