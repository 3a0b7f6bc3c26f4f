"""The whole config: what a run can change (`components.config.RunConfig`) plus the `kfp`
section, which is fixed when a pipeline compiles (images, GPU placement, resources, Secrets,
caching, retries). Components receive only the run-time part (`run_config_json`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import RunConfig
from components.core.config import load_into
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
    """The whole config: the file (optional) < `extra` (CLI flags; empty sections skipped) <
    `-o` overrides, validated. The components' side is `components.config.config_from_json`."""
    sections = {key: value for key, value in (extra or {}).items() if value}
    return load_into(SegloopConfig, path, overrides, sections)


def run_config_json(cfg: RunConfig) -> str:
    """The `config_json` a pipeline run gets: every run-time section, without `kfp`."""
    return cfg.model_dump_json(exclude={"kfp"})
