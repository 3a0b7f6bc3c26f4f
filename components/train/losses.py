"""Losses from segmentation-models-pytorch: Dice + cross-entropy (or focal), binary or multi-class.

Pixels with the ignore index (padding) are left out of every term.
"""

from __future__ import annotations

import torch
from segmentation_models_pytorch import losses as smp_losses

from components.core.metrics import IGNORE_INDEX
from components.train.settings import TrainSettings


class CombinedLoss(torch.nn.Module):
    def __init__(self, s: TrainSettings, binary: bool):
        super().__init__()
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
            self.ce = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)

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
