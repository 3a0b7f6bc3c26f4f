"""MLflow helpers: where to track, which experiment and registered model, dataset inputs.

Tracking URI: `mlflow.tracking_uri` in the config, else `$MLFLOW_TRACKING_URI`, else a SQLite
file under the stack folder (works with no server). Experiment and registered model default to
the project name. Model versions are addressed by aliases (`champion`, `challenger`), never by
the deprecated stages.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from components.core.config import SharedConfig
from components.core.errors import SegloopError

log = logging.getLogger(__name__)

# Prefix of the tags segloop sets on model versions (`segloop.mean_iou`, `segloop.iou.<class>`).
TAG = "segloop."


def tracking_uri(cfg: SharedConfig) -> str:
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    folder = Path(cfg.stack.dir)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}"


def experiment_name(cfg: SharedConfig) -> str:
    return cfg.mlflow.experiment or cfg.project.name


def registered_model_name(cfg: SharedConfig) -> str:
    return cfg.mlflow.registered_model or cfg.project.name


def setup(cfg: SharedConfig, experiment: bool = True):
    """Point mlflow at the tracking server (and experiment); returns the mlflow module."""
    import mlflow

    # Before set_tracking_uri, which exports MLFLOW_TRACKING_URI itself.
    fallback = not (cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    if experiment:
        try:
            if fallback and mlflow.get_experiment_by_name(experiment_name(cfg)) is None:
                # The no-server fallback keeps artifacts beside its database, not in ./mlruns.
                artifacts = (Path(cfg.stack.dir) / "mlartifacts").resolve()
                mlflow.create_experiment(experiment_name(cfg), artifact_location=artifacts.as_uri())
            mlflow.set_experiment(experiment_name(cfg))
        except Exception as exc:  # connection refused, auth, bad URI: all end here
            raise SegloopError(
                f"cannot reach MLflow at {uri} ({type(exc).__name__}: {str(exc)[:300]}); "
                "start the stack (`segloop up`) or set MLFLOW_TRACKING_URI"
            ) from exc
    return mlflow


def client(cfg: SharedConfig):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(cfg))


def log_split_input(split: dict[str, Any], source: str, context: str = "training") -> None:
    """Log the preprocessed split as an MLflow dataset input (name + digest = split hash)."""
    import mlflow
    import pandas as pd

    rows = [
        {"split": name, "record_id": rid}
        for name, ids in split.get("records", {}).items()
        for rid in ids
    ]
    with warnings.catch_warnings():
        # A local path "can be interpreted in multiple ways" by MLflow; any of them is fine.
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            pd.DataFrame(rows, columns=["split", "record_id"]),
            source=source,
            name=f"split-{split['hash'][:12]}",
            digest=split["hash"][:36],
        )
    mlflow.log_input(dataset, context=context)


def params_flat(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as `a.b: value` strings (MLflow params are flat, <= 6000 chars)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(params_flat(value, prefix=f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


def run_id_for_model(uri: str) -> str | None:
    """The MLflow run that produced a model URI (runs:/, models:/name/v, @alias, m-<id>)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = str(uri)
    try:
        if uri.startswith("runs:/"):
            return uri[len("runs:/") :].split("/", 1)[0]
        if not uri.startswith("models:/"):
            return None
        ref = uri[len("models:/") :].strip("/")
        if ref.startswith("m-"):
            return mlflow.get_logged_model(ref.split("/", 1)[0]).source_run_id
        client = MlflowClient()
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        name, _, version = ref.partition("/")
        return client.get_model_version(name, version).run_id
    except MlflowException as exc:
        log.warning("cannot find the MLflow run of %s: %s", uri, exc)
        return None
