"""KFP components of the infer stage (logic: components.infer): `infer` (all records in one
task), and for `infer.shards` > 1 `infer_shard` (one block of records, in a ParallelFor) and
`infer_merge` (the shards' outputs -> one predictions artifact, like `infer`'s)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components.images import cpu_image, cuda_image


@dsl.component(base_image=cuda_image(), install_kfp_package=False)
def infer(
    config_json: str,
    records: Input[Dataset],
    model_uri: str,
    predictions: Output[Dataset],
    metrics: Output[Metrics],
):
    """Segment the queried images with `model_uri` (a checkpoint URI or models:/name@alias).
    Empty: resolved now from `config_json` (`infer.model`, else for the smp predictor
    models:/<mlflow.registered_model or project.name>@<infer.model_alias>); see
    `components.infer.stage.pipeline_model`."""
    import os

    from components.component_io import log_metrics
    from components.config import config_from_json
    from components.infer.stage import pipeline_model, run_infer

    cfg = config_from_json(config_json)
    result = run_infer(
        cfg,
        records=os.path.join(records.path, "records.jsonl"),
        model=pipeline_model(cfg, model_uri),
        out=predictions.path,
    )
    log_metrics(metrics, result)


@dsl.component(base_image=cuda_image(), install_kfp_package=False)
def infer_shard(
    config_json: str,
    records: Input[Dataset],
    model_uri: str,
    shard: int,
    shards: int,
    predictions: Output[Dataset],
    metrics: Output[Metrics],
):
    """Segment shard `shard` of `shards` (a contiguous block) of the queried images."""
    import os

    from components.component_io import log_metrics
    from components.config import config_from_json
    from components.infer.shards import run_infer_shard
    from components.infer.stage import pipeline_model

    cfg = config_from_json(config_json)  # the model is resolved as in `infer`
    result = run_infer_shard(
        cfg,
        records=os.path.join(records.path, "records.jsonl"),
        shard=shard,
        shards=shards,
        model=pipeline_model(cfg, model_uri),
        out=predictions.path,
    )
    log_metrics(metrics, result)


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def infer_merge(
    config_json: str,
    records: Input[Dataset],
    shards: Input[list[Dataset]],
    predictions: Output[Dataset],
    metrics: Output[Metrics],
):
    """Merge every `infer_shard` output into one predictions artifact (one COCO file, one
    manifest, merged metrics); fails naming shards and records past `infer.max_failures`."""
    import os

    from components.component_io import log_metrics
    from components.config import config_from_json
    from components.infer.shards import merge_shards

    result = merge_shards(
        config_from_json(config_json),
        records=os.path.join(records.path, "records.jsonl"),
        shard_outputs=[s.path for s in shards],
        out=predictions.path,
    )
    log_metrics(metrics, result)
