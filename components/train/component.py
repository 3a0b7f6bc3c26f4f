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
    nproc: int = 1,
):
    """Train by `train.*`; writes the checkpoint and model.json, logs an MLflow run.

    `nproc` (the pipeline sets it to `kfp.gpu.accelerator_count`): DDP processes started in
    this pod, one per GPU; 1 trains in the component's own process."""
    from components.component_io import log_metrics
    from components.config import config_from_json
    from components.train.launch import train_processes

    result = train_processes(
        config_from_json(config_json), data=splits.path, out=model.path, nproc=nproc
    )
    log_metrics(metrics, result)
