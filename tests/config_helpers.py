"""Configs the stage tests build: the defaults with a few sections or overrides changed."""

from __future__ import annotations

from typing import Any

from pipelines.config import SegloopConfig, load_config

# infer in this process on the CPU: no worker processes, small batches.
CPU_INFER = {"device": "cpu", "num_workers": 0, "batch_size": 4}


def config_with(*overrides: str, **sections: dict[str, Any]) -> SegloopConfig:
    """The default config with whole sections as dicts (`select={"budget": 3}`), and `-o`
    style `overrides` over them."""
    return load_config(None, list(overrides), extra=sections)


def infer_config(*overrides: str, **infer: Any) -> SegloopConfig:
    """`config_with` an infer section of `CPU_INFER` and the settings given."""
    return config_with(*overrides, infer={**CPU_INFER, **infer})
