"""Tile datasets and joint image+mask augmentation with `torchvision.transforms.v2`.

Images and masks travel as `tv_tensors.Image` (uint8, CxHxW) and `tv_tensors.Mask` (HxW), so
every geometric transform moves both the same way (masks with nearest neighbour) and colour
transforms touch only the image. Normalization happens on the device after the batch arrives
(`Normalizer`): a uint8 batch is a quarter of the bytes to copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from components.core.errors import SegloopError
from components.core.images import open_checked
from components.core.metrics import IGNORE_INDEX
from components.train.settings import AugmentSettings


class RandomRot90(v2.Transform):
    """Rotate image and mask together by a random multiple of 90 degrees (exact, no resampling)."""

    _transformed_types = (tv_tensors.Image, tv_tensors.Mask)

    def make_params(self, flat_inputs):
        return {"k": int(torch.randint(0, 4, ()).item())}

    def transform(self, inpt, params):
        if params["k"] == 0:
            return inpt
        return tv_tensors.wrap(torch.rot90(inpt, params["k"], dims=(-2, -1)), like=inpt)


def build_transforms(aug: AugmentSettings, tile_size: int, train: bool) -> v2.Transform | None:
    if not train:
        return None
    steps: list[v2.Transform] = []
    if aug.scale:
        steps.append(v2.RandomResizedCrop(tile_size, scale=tuple(aug.scale), antialias=True))
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.vflip:
        steps.append(v2.RandomVerticalFlip(aug.vflip))
    if aug.rot90:
        steps.append(RandomRot90())
    if aug.color_jitter or aug.hue:
        j = aug.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=aug.hue))
    return v2.Compose(steps) if steps else None


def _read(path: Path, mask: bool) -> np.ndarray:
    with open_checked(path, str(path)) as img:  # within the decode pixel budget
        return np.array(img if mask else img.convert("RGB"), dtype=np.uint8)  # writable copy


class TileDataset(Dataset):
    """`<split>/images/*` with `<split>/masks/<same stem>.png`; optionally decoded once and cached."""

    def __init__(self, root: Path, split: str, transform=None, cache: bool = True):
        folder = Path(root) / split
        self.images = sorted(p for p in (folder / "images").glob("*") if p.is_file())
        self.masks = [folder / "masks" / f"{p.stem}.png" for p in self.images]
        missing = [m for m in self.masks if not m.is_file()]
        if missing:
            raise SegloopError(
                f"{len(missing)} tiles in {folder}/images have no mask (e.g. {missing[0]}); "
                "re-run `segloop preprocess`"
            )
        self.transform = transform
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if cache:
            # Decoding PNGs every epoch costs more than the model on small tiles; keep uint8 copies.
            self.cache = [self._load(i) for i in range(len(self.images))]

    def __len__(self) -> int:
        return len(self.images)

    def pixels_per_class(self, num_classes: int) -> torch.Tensor:
        """Pixel count of each class over the masks (the ignore index left out)."""
        counts = torch.zeros(num_classes, dtype=torch.int64)
        for index in range(len(self)):
            mask = self.cache[index][1] if self.cache is not None else self._load(index)[1]
            kept = mask[mask != IGNORE_INDEX].long()
            counts += torch.bincount(kept.clamp(max=num_classes - 1), minlength=num_classes)
        return counts

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(_read(self.images[index], False)).permute(2, 0, 1).contiguous()
        mask = torch.from_numpy(_read(self.masks[index], True))
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.cache[index] if self.cache is not None else self._load(index)
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()


class Normalizer(torch.nn.Module):
    """uint8 NxCxHxW -> float, `(x/255 - mean) / std`, on the model's device."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch.float() / 255.0 - self.mean) / self.std


def binary_target(mask: torch.Tensor) -> torch.Tensor:
    """Class ids -> 0/1 foreground with the ignore index kept (binary models)."""
    return torch.where(mask == IGNORE_INDEX, mask, (mask > 0).long())
