"""Compile a pipeline to KFP IR YAML (what CI builds and `segloop submit` uploads)."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from components.core.config import SegloopConfig
from pipelines.graphs import build


def compile_pipeline(name: str, cfg: SegloopConfig, output: str | Path) -> Path:
    """Write pipeline `name`, built from `cfg`, to `output` (parent folders created)."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=build(name, cfg), package_path=str(path))
    return path
