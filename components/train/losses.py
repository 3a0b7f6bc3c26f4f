"""Losses from segmentation-models-pytorch: Dice + cross-entropy (or focal), binary or multi-class.

Pixels with the ignore index (padding) are left out of every term. `train.class_weights` weighs
the cross-entropy term per class (multi-class); `balanced` weights come from the training
tiles' pixel counts (`balanced_weights`).
"""

from __future__ import annotations

import torch
from segmentation_models_pytorch import losses as smp_losses

from components.core.errors import SegloopError
from components.core.metrics import IGNORE_INDEX
from components.train.settings import TrainSettings


def balanced_weights(pixels: torch.Tensor) -> torch.Tensor:
    """1/sqrt(share) per class from pixel counts, scaled so that the average pixel weighs 1
    (the loss keeps its size); a class with no pixel gets the largest weight of the others."""
    share = pixels.double() / pixels.sum().clamp(min=1)
    weights = torch.where(share > 0, share.clamp(min=1e-12).rsqrt(), torch.zeros_like(share))
    weights[share == 0] = weights.max() if weights.max() > 0 else 1.0
    return (weights / (weights * share).sum().clamp(min=1e-12)).float()


def class_weights(s: TrainSettings, num_classes: int, pixels) -> torch.Tensor | None:
    """The cross-entropy weights `train.class_weights` asks for (`pixels`: a callable giving
    the training tiles' pixel count per class, only called for `balanced`)."""
    if s.class_weights == "none":
        return None
    if s.loss == "dice_focal":
        raise SegloopError(
            "train.class_weights applies to the cross-entropy term; train.loss=dice_focal has "
            "none (use train.loss=dice_ce, or train.class_weights=none)"
        )
    if s.class_weights == "balanced":
        return balanced_weights(pixels())
    if len(s.class_weights) != num_classes:
        raise SegloopError(
            f"train.class_weights has {len(s.class_weights)} weights, the labels have "
            f"{num_classes} classes: give one weight per label, in label order"
        )
    return torch.tensor(s.class_weights, dtype=torch.float32)


class CombinedLoss(torch.nn.Module):
    def __init__(self, s: TrainSettings, binary: bool, weights: torch.Tensor | None = None):
        super().__init__()
        if binary and weights is not None:
            raise SegloopError(
                "train.class_weights needs a multi-class model; with train.binary=true leave "
                "it at none"
            )
        mode = smp_losses.BINARY_MODE if binary else smp_losses.MULTICLASS_MODE
        self.binary = binary
        self.dice_weight = s.dice_weight if s.loss != "ce" else 0.0
        self.ce_weight = s.ce_weight
        self.dice = smp_losses.DiceLoss(mode, from_logits=True, ignore_index=IGNORE_INDEX)
        if s.loss == "dice_focal":
            self.ce = smp_losses.FocalLoss(mode, gamma=s.focal_gamma, ignore_index=IGNORE_INDEX)
        elif binary:
            self.ce = smp_losses.SoftBCEWithLogitsLoss(ignore_index=IGNORE_INDEX)
        else:
            self.ce = torch.nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE_INDEX)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # losses in fp32 even under autocast
        if self.binary:
            ce = self.ce(logits, target.unsqueeze(1).float())
        else:
            ce = self.ce(logits, target)
        loss = self.ce_weight * ce
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, target)
        return loss
