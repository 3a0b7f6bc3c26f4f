"""Compile a pipeline to KFP IR YAML (what CI builds and `segloop submit` uploads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kfp import compiler
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from components.core.config import SECRET_WORDS
from components.core.errors import SegloopError
from pipelines.config import SegloopConfig
from pipelines.graphs import build


def _credential_keys(data: Any, prefix: str = "") -> list[str]:
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{prefix}{key}"
            if (
                any(w in str(key).lower() for w in SECRET_WORDS)
                and isinstance(value, str)
                and value
            ):
                found.append(name)
            else:
                found += _credential_keys(value, f"{name}.")
    return found


def check_no_credentials(cfg: SegloopConfig) -> None:
    """The config becomes a pipeline parameter in clear text: refuse one that holds credentials."""
    try:
        url = make_url(cfg.db.url)
    except ArgumentError:
        url = None
    if url is not None and url.password:
        raise SegloopError(
            "db.url contains a password, which would be written into the pipeline YAML and the "
            "run's parameters; remove it from the URL and give the database password to the "
            "pods from a Kubernetes Secret instead (e.g. PGPASSWORD for PostgreSQL, listed under "
            "kfp.env_from.extra)"
        )
    keys = _credential_keys(cfg.model_dump(mode="json"))
    if keys:
        raise SegloopError(
            f"config keys {keys} hold credentials, which would be written into the pipeline YAML; "
            "pass them to the pods from a Kubernetes Secret (kfp.env_from) instead"
        )


def compile_pipeline(name: str, cfg: SegloopConfig, output: str | Path) -> Path:
    """Write pipeline `name`, built from `cfg`, to `output` (parent folders created)."""
    check_no_credentials(cfg)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=build(name, cfg), package_path=str(path))
    return path
