"""Segmentation model factory (segmentation-models-pytorch) and the model description `ModelSpec`.

API (stable; the train, evaluate and infer stages use it):

- `archs()`: the architectures segloop builds, every one the installed smp registers (names
  as in smp: "Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus", "Segformer", "DPT", ...).
- `build_model(arch, encoder_name, encoder_weights=None, in_channels=3, classes=1, **kwargs)`
  -> `torch.nn.Module` returning logits NxCxHxW. `kwargs` go to the smp constructor (e.g.
  `decoder_channels=(32, 16, 8, 8, 8)` for a small Unet). Unknown arch or encoder -> SegloopError.
- `build_from_spec(spec)`: the same from a `ModelSpec`.
- `ModelSpec`: everything needed to rebuild and use a model, saved as `model.json` next to the
  weights (see `components.core.checkpoint`). Conventions:
  * `classes` is the number of output channels. `classes == 1` means a binary model (sigmoid);
    then `labels` has two entries (background, foreground). Otherwise `len(labels) == classes`
    and the model is multi-class (softmax). Label id == output channel (class 0 = background).
  * `mean` / `std` are per channel on the 0..1 scale: the model input is
    `(rgb_uint8 / 255 - mean) / std`.
  * `tile_size` is the preferred inference tile; `pad_divisor` the multiple that input sides
    must have (the encoder's output stride, 32 for most encoders).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from components.core.errors import SegloopError
from components.core.labels import Label, LabelSet
from components.core.version import segloop_version

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPEC_FORMAT = 1


def archs() -> tuple[str, ...]:
    """The architectures the installed smp builds (its own registry; imported on first use)."""
    import segmentation_models_pytorch as smp

    return tuple(cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values())


def _arch_class(arch: str):
    import segmentation_models_pytorch as smp

    key = str(arch).lower().replace("_", "").replace("-", "")
    cls = smp.MODEL_ARCHITECTURES_MAPPING.get(key)
    if cls is None:
        raise SegloopError(f"unknown model arch {arch!r}; allowed: {', '.join(archs())}")
    return cls.__name__, cls


def canonical_arch(arch: str) -> str:
    """'unet' -> 'Unet'; raises SegloopError listing the allowed archs."""
    return _arch_class(arch)[0]


def build_model(
    arch: str,
    encoder_name: str,
    encoder_weights: str | None = None,
    in_channels: int = 3,
    classes: int = 1,
    **kwargs: Any,
) -> torch.nn.Module:
    """An smp model that returns logits (no activation)."""
    import segmentation_models_pytorch as smp

    _, cls = _arch_class(arch)
    if encoder_name not in smp.encoders.get_encoder_names():
        # smp also accepts "tu-<timm name>" encoders; let those through to smp itself.
        if not encoder_name.startswith("tu-"):
            raise SegloopError(
                f"unknown encoder {encoder_name!r}; see segmentation_models_pytorch."
                "encoders.get_encoder_names() (e.g. resnet18, resnet34, mobilenet_v2, mit_b0)"
            )
    try:
        return cls(
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=classes,
            **kwargs,
        )
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise SegloopError(
            f"cannot build {arch} with encoder {encoder_name} "
            f"(weights={encoder_weights}, in_channels={in_channels}, classes={classes}, "
            f"options={kwargs}): {exc}"
        ) from exc
    except OSError as exc:  # weights download failed (offline)
        raise SegloopError(
            f"cannot fetch {encoder_weights} weights for encoder {encoder_name}: {exc}; "
            "use encoder_weights=None where there is no internet"
        ) from exc


class ModelSpec(BaseModel):
    """`model.json`: how to rebuild a model and how to feed it. See the module docstring."""

    # Newer segloop versions may add fields; older ones ignore them rather than fail.
    model_config = ConfigDict(extra="ignore")

    format: int = SPEC_FORMAT
    arch: str
    encoder_name: str
    encoder_weights: str | None = None
    in_channels: int = Field(3, ge=1)
    classes: int = Field(ge=1, description="output channels; 1 = binary (sigmoid)")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra smp constructor options (decoder sizes...)"
    )
    labels: list[Label]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    tile_size: int = Field(512, ge=16)
    pad_divisor: int = Field(32, ge=1)
    data_hash: str | None = None
    segloop_version: str = Field(default_factory=segloop_version)

    @field_validator("arch")
    @classmethod
    def _arch(cls, value: str) -> str:
        try:
            return canonical_arch(value)
        except SegloopError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("std")
    @classmethod
    def _std(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(s <= 0 for s in value):
            raise ValueError(f"std values must be > 0, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        LabelSet(labels=self.labels)  # ids 0..n-1, unique names
        want = 2 if self.classes == 1 else self.classes
        if len(self.labels) != want:
            raise ValueError(
                f"{len(self.labels)} labels for a model with {self.classes} output channel(s); "
                f"expected {want} ({'background + foreground for a binary model' if self.classes == 1 else 'one per channel'})"
            )
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(
                f"mean/std need {self.in_channels} values (in_channels), got {len(self.mean)}/{len(self.std)}"
            )
        if self.tile_size % self.pad_divisor:
            raise ValueError(
                f"tile_size {self.tile_size} must be a multiple of pad_divisor {self.pad_divisor}"
            )
        return self

    @property
    def label_set(self) -> LabelSet:
        return LabelSet(labels=self.labels)

    @property
    def binary(self) -> bool:
        return self.classes == 1

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def build_from_spec(spec: ModelSpec) -> torch.nn.Module:
    return build_model(
        spec.arch,
        spec.encoder_name,
        encoder_weights=None,  # the checkpoint's weights replace any pretrained ones
        in_channels=spec.in_channels,
        classes=spec.classes,
        **spec.model_kwargs,
    )
