"""The training and validation loops, shared by `segloop train` and the benchmark.

What makes them fast: uint8 batches normalized on the device, channels_last memory format,
autocast on CUDA (bf16, or fp16 with loss scaling), `set_to_none` gradients, and tiles decoded once (see `data.TileDataset`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from components.core.cpu_budget import cpu_budget, local_processes
from components.core.errors import SegloopError
from components.core.metrics import confusion_matrix_torch
from components.train.data import Normalizer, binary_target


def pick_workers(workers: int | None, device: torch.device) -> int:
    """On CPU the model needs every core and cached tiles are cheap to augment: no workers.
    On CUDA half of this rank's share of the CPU budget (the quota, not the node's cores), 1-4."""
    if workers is not None:
        return workers
    if device.type != "cuda":
        return 0
    return min(4, max(1, cpu_budget().per_rank(local_processes()) // 2))


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = True
    binary: bool = False
    num_classes: int = 2  # labels, including background
    normalizer: Normalizer | None = None
    scaler: torch.amp.GradScaler | None = field(default=None)

    def __post_init__(self) -> None:
        if self.scaler is None:
            # Loss scaling only for fp16 (bf16 has fp32's range).
            self.scaler = torch.amp.GradScaler(
                self.device.type, enabled=self.amp_dtype == torch.float16
            )

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def inputs(self, images: torch.Tensor, masks: torch.Tensor):
        pin = self.device.type == "cuda"
        x = images.to(self.device, non_blocking=pin)
        y = masks.to(self.device, non_blocking=pin)
        x = self.normalizer(x) if self.normalizer is not None else x.float() / 255.0
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.binary:
            y = binary_target(y)
        return x, y

    def predict_classes(self, logits: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return (logits[:, 0] > 0).long()
        return logits.argmax(1)


def train_epoch(
    model: torch.nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    loss_fn,
    rt: Runtime,
    accumulate: int = 1,
    max_steps: int | None = None,
    on_step=None,
) -> dict[str, float]:
    """One pass over `loader`; returns mean loss, images and images/s."""
    model.train()
    total_loss, images, steps = 0.0, 0, 0
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    n_batches = len(loader) if max_steps is None else min(len(loader), max_steps)
    for step, (x_cpu, y_cpu) in enumerate(loader):
        if step >= n_batches:
            break
        x, y = rt.inputs(x_cpu, y_cpu)
        # DDP: only sync gradients on the step that applies them.
        last_micro = (step + 1) % accumulate == 0 or step + 1 == n_batches
        sync = (
            model.no_sync()
            if hasattr(model, "no_sync") and not last_micro
            else contextlib.nullcontext()
        )
        with sync:
            with rt.autocast():
                logits = model(x)
            loss = loss_fn(logits, y)
            if not torch.isfinite(loss):
                raise SegloopError(
                    f"training loss became {loss.item()} at step {step}; lower train.lr or "
                    "turn AMP off (train.amp=off)"
                )
            rt.scaler.scale(loss / accumulate).backward()
        if last_micro:
            rt.scaler.step(optimizer)
            rt.scaler.update()
            optimizer.zero_grad(set_to_none=True)
        total_loss += loss.item() * len(x)
        images += len(x)
        steps += 1
        if on_step:
            on_step(step, total_loss / images)
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    seconds = time.perf_counter() - start
    return {
        "loss": total_loss / max(images, 1),
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds if seconds else math.nan,
    }


@torch.inference_mode()
def validate(model: torch.nn.Module, loader, loss_fn, rt: Runtime) -> tuple[np.ndarray, float]:
    """(confusion matrix over labels, mean loss) on `loader`."""
    model.eval()
    cm = torch.zeros((rt.num_classes, rt.num_classes), dtype=torch.long, device=rt.device)
    total_loss, images = 0.0, 0
    for x_cpu, y_cpu in loader:
        x, y = rt.inputs(x_cpu, y_cpu)
        with rt.autocast():
            logits = model(x)
        total_loss += loss_fn(logits, y).item() * len(x)
        images += len(x)
        cm += confusion_matrix_torch(y, rt.predict_classes(logits), rt.num_classes)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(cm)
        stats = torch.tensor([total_loss, images], dtype=torch.float64, device=rt.device)
        torch.distributed.all_reduce(stats)
        total_loss, images = float(stats[0]), int(stats[1])
    return cm.cpu().numpy(), total_loss / max(images, 1)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
