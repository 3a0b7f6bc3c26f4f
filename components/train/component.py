"""KFP component `train`: a segmentation model from the splits (logic: components.train)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import cuda_image


@dsl.component(base_image=cuda_image(), install_kfp_package=False)
def train(
    config_json: str,
    splits: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Train by `train.*`; writes the checkpoint and model.json, logs an MLflow run."""
    from components.component_io import log_metrics
    from components.config import config_from_json
    from components.train.stage import run_train

    result = run_train(config_from_json(config_json), data=splits.path, out=model.path)
    log_metrics(metrics, result)
