"""The torch device a stage runs on, from its `device` setting (infer, train and evaluate)."""

from __future__ import annotations

import torch

from components.core.errors import SegloopError


def pick_device(name: str, setting: str = "device", local_rank: int | None = None) -> torch.device:
    """`auto` -> cuda when available, else cpu; a `cuda[:N]` named must exist here.

    `setting` is the config key the errors name (`infer.device`). Under DDP (`local_rank` set)
    a CUDA device is the rank's own GPU, whichever index the setting gave.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        return torch.device("cpu")
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise SegloopError(
            f"{setting}={name} but no CUDA device is available; use {setting}=auto or cpu"
        )
    if local_rank is not None:
        return torch.device("cuda", local_rank)
    if (device.index or 0) >= torch.cuda.device_count():
        raise SegloopError(
            f"{setting}={name}: only {torch.cuda.device_count()} CUDA device(s) here"
        )
    return device
