"""Config section `train`."""

from typing import Any, Literal

from pydantic import Field

from components.core.config import SharedConfig
from components.core.settings_base import Section


class AugmentSettings(Section):
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    vflip: float = Field(0.5, ge=0, le=1)
    rot90: bool = Field(True, description="random multiples of 90 degrees")
    scale: tuple[float, float] | None = Field(
        (0.5, 1.0), description="random resized crop area range; null = off"
    )
    color_jitter: float = Field(0.2, ge=0, le=1, description="brightness/contrast/saturation")
    hue: float = Field(0.02, ge=0, le=0.5)


class TrainSettings(Section):
    arch: str = Field("Unet", description="segmentation_models_pytorch architecture")
    encoder_name: str = Field("resnet18", description="smp encoder")
    encoder_weights: str | None = Field(
        None, description="pretrained encoder weights, e.g. imagenet (downloaded; none: random)"
    )
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra smp options")
    binary: bool = Field(False, description="one sigmoid channel (needs exactly 2 labels)")
    epochs: int = Field(30, ge=1, description="passes over the training tiles")
    batch_size: int = Field(8, ge=1, description="tiles per step (per process with DDP)")
    accumulate: int = Field(1, ge=1, description="gradient accumulation steps")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    scheduler: Literal["cosine", "plateau", "none"] = Field(
        "cosine", description="learning-rate schedule"
    )
    loss: Literal["dice_ce", "dice_focal", "ce"] = Field(
        "dice_ce", description="Dice plus cross-entropy, Dice plus focal, or cross-entropy"
    )
    dice_weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(1.0, ge=0)
    focal_gamma: float = Field(2.0, ge=0)
    class_weights: Literal["none", "balanced"] | list[float] = Field(
        "none",
        description="cross-entropy class weights: balanced = 1/sqrt(pixel share of the class in "
        "the training tiles), so rare classes (thin leaves) count more; or one weight per label",
    )
    patience: int = Field(10, ge=0, description="early stopping on val mean IoU; 0 = off")
    keep: Literal["best", "last"] = Field(
        "best",
        description="the run's model (best/): the epoch with the best val mean IoU, or the last "
        "epoch (when the val split is a few images, its best epoch is mostly noise)",
    )
    seed: int = Field(0, description="seed of weights, shuffling and augmentation")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto",
        description="auto: bf16 on CUDA (fp16 on older GPUs) and on CPUs with AMX/AVX512-BF16, else fp32",
    )
    channels_last: bool | None = Field(None, description="default: on (CUDA and CPU)")
    workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader workers; default 0 on CPU (cores train), on CUDA half of the "
        "rank's CPU budget, 1 to 4",
    )
    cache_images: bool = Field(True, description="decode tiles once and keep them in memory")
    augment: AugmentSettings = AugmentSettings()
    resume: str | None = Field(
        None, description="a previous train output: continue its epochs and MLflow run"
    )
    init_from: str | None = Field(
        None,
        description="start from these weights (fine-tune): a model URI, or alias:<alias> for the "
        "registered model at that alias (alias:champion); from scratch while it does not exist",
    )
    pad_divisor: int = Field(32, ge=1)
    log_model: bool = Field(True, description="log the best model to MLflow")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap (smoke runs, benches)")


class TrainConfig(SharedConfig):
    """What the train stage reads: the shared sections and its own `train` section."""

    train: TrainSettings = TrainSettings()
