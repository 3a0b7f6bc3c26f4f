"""Per-channel mean and std, accumulated image by image (never all pixels in memory)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ChannelStats:
    count: int = 0
    total: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.float64))
    total_sq: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.float64))

    def add(self, image: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add an HxWx3 uint8 image; `valid` (HxW bool) leaves padding out."""
        pixels = image.reshape(-1, 3) if valid is None else image[valid]
        pixels = pixels.astype(np.float64) / 255.0
        self.count += len(pixels)
        self.total += pixels.sum(axis=0)
        self.total_sq += np.square(pixels).sum(axis=0)

    def merge(self, other: ChannelStats) -> None:
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq

    def result(self) -> dict:
        if not self.count:
            return {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "pixels": 0}
        mean = self.total / self.count
        var = np.maximum(self.total_sq / self.count - np.square(mean), 1e-12)
        return {"mean": mean.tolist(), "std": np.sqrt(var).tolist(), "pixels": int(self.count)}
