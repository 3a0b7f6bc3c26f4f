"""The whole config: what a run can change (`components.config.RunConfig`) plus the `kfp`
section, which is fixed when a pipeline compiles (images, GPU placement, resources, Secrets,
caching, retries). Components receive only the run-time part (`run_config_json`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import RunConfig
from components.core.config import load_into, parse_json_into
from components.register.settings import RegisterSettings
from pipelines.settings import KfpSettings


class SegloopConfig(RunConfig):
    kfp: KfpSettings = KfpSettings()
    # Re-declared for the reason given on RunConfig.register.
    register: RegisterSettings = RegisterSettings()


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> SegloopConfig:
    """Load the config file (optional), apply `extra` (CLI flags) and `-o` overrides, validate."""
    return load_into(SegloopConfig, path, overrides, extra)


def config_from_json(text: str) -> SegloopConfig:
    return parse_json_into(SegloopConfig, text)


def run_config_json(cfg: RunConfig) -> str:
    """The `config_json` a pipeline run gets: every run-time section, without `kfp`."""
    return cfg.model_dump_json(exclude={"kfp"})
