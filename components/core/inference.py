"""The tiled, batched inference engine: images in, blended probability bands out.

`TileEngine.submit(image, on_band, on_done)` cuts an HxWx3 uint8 image into tiles
(`components.core.tiling`), queues them with the tiles of other images and runs the predictor
on full batches (tiles of the same shape, from any image). Each finished band of rows goes to
`on_band(top_row, probs)`; `on_done()` is called once the image's last tile is blended. Memory
per image: the decoded image plus a one-tile-high accumulator.

Device work per batch: uint8 tiles (pinned on CUDA) are copied once, normalized on the device,
fed channels_last under `torch.inference_mode()` and `torch.autocast` when AMP is on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from components.core.errors import SegloopError
from components.core.predictor import Predictor, last_embedding
from components.core.tiling import BandCallback, Grid, StreamingBlender, make_grid, pad_image


@dataclass
class _Job:
    image: np.ndarray  # padded
    grid: Grid
    blender: StreamingBlender
    on_done: Callable[[], None]
    queued: int = 0
    on_embedding: Callable[[torch.Tensor], None] | None = None  # one call per tile


@dataclass
class TileEngine:
    predictor: Predictor
    device: torch.device
    tile_size: int | None = None
    overlap: float = 0.25
    window: str = "hann"
    batch_size: int = 8
    amp_dtype: torch.dtype | None = None
    channels_last: bool = True
    _pending: list[tuple[_Job, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        info = self.predictor.info
        self.tile = self.tile_size or info.tile_size
        if self.tile % info.pad_divisor:
            raise SegloopError(
                f"tile size {self.tile} is not a multiple of the model's pad divisor "
                f"{info.pad_divisor}; use e.g. {info.pad_divisor * max(1, round(self.tile / info.pad_divisor))}"
            )
        self.num_classes = info.num_classes
        scale = torch.tensor([255.0 * s for s in info.std], device=self.device).view(1, 3, 1, 1)
        shift = torch.tensor([255.0 * m for m in info.mean], device=self.device).view(1, 3, 1, 1)
        self._scale, self._shift = scale, shift
        self.pin = self.device.type == "cuda"
        self.tiles_run = 0

    def grid_for(self, height: int, width: int) -> Grid:
        return make_grid(height, width, self.tile, self.overlap, self.predictor.info.pad_divisor)

    def submit(
        self,
        image: np.ndarray,
        on_band: BandCallback,
        on_done: Callable[[], None],
        on_embedding: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
        grid = self.grid_for(image.shape[0], image.shape[1])
        blender = StreamingBlender(grid, self.num_classes, on_band, self.window, self.device)
        job = _Job(pad_image(image, grid), grid, blender, on_done, on_embedding=on_embedding)
        for index in range(grid.num_tiles):
            if self._pending and self._pending[-1][0].grid.tile_h != grid.tile_h:
                self.flush()
            elif self._pending and self._pending[-1][0].grid.tile_w != grid.tile_w:
                self.flush()
            self._pending.append((job, index))
            if len(self._pending) >= self.batch_size:
                self.flush()

    def flush(self) -> None:
        """Run the queued tiles through the predictor and blend them."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        crops = []
        for job, index in pending:
            y, x = job.grid.tile(index)
            crops.append(job.image[y : y + job.grid.tile_h, x : x + job.grid.tile_w])
        probs = self.predict_tiles(np.stack(crops))
        embeddings = last_embedding(self.predictor)
        for i, (job, index) in enumerate(pending):
            if job.on_embedding is not None and embeddings is not None:
                job.on_embedding(embeddings[i])  # before on_done: the image's last tile counts
            job.blender.add(index, probs[i])
            if job.blender.done:
                job.image = None  # type: ignore[assignment]  # free it before writing outputs
                job.on_done()

    def predict_tiles(self, tiles: np.ndarray) -> torch.Tensor:
        """N x h x w x 3 uint8 tiles -> N x C x h x w float32 probabilities on the device."""
        batch = torch.from_numpy(tiles)
        if self.pin:
            batch = batch.pin_memory()
        # NHWC memory viewed as NCHW is exactly the channels_last layout: no copy needed.
        x = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = x.sub_(self._shift).div_(self._scale)
        x = x.contiguous(
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )
        n, _, h, w = x.shape
        name = getattr(self.predictor, "name", type(self.predictor).__name__)
        try:
            with (
                torch.inference_mode(),
                torch.autocast(
                    self.device.type,
                    dtype=self.amp_dtype or torch.float32,
                    enabled=self.amp_dtype is not None,
                ),
            ):
                probs = self.predictor.predict(x)
        except SegloopError:
            raise
        except Exception as exc:
            raise SegloopError(
                f"predictor {name!r} failed on a batch of {n} tiles of {h}x{w}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(probs, torch.Tensor) or tuple(probs.shape) != (n, self.num_classes, h, w):
            got = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
            raise SegloopError(
                f"predictor {name!r} returned {got}; expected probabilities of shape "
                f"{(n, self.num_classes, h, w)} (batch, one channel per label, tile height, width)"
            )
        self.tiles_run += n
        return probs.float()


def predict_image(engine: TileEngine, image: np.ndarray) -> torch.Tensor:
    """The blended C x H x W probabilities of one image (for tests, evaluation, small images)."""
    out = torch.zeros((engine.num_classes, image.shape[0], image.shape[1]), device=engine.device)

    def band(top: int, probs: torch.Tensor) -> None:
        out[:, top : top + probs.shape[1]] = probs

    engine.submit(image, band, lambda: None)
    engine.flush()
    return out
