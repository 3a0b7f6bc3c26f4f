"""KFP component `infer`: pre-annotation masks and uncertainty (logic: components.infer)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components.images import cuda_image


@dsl.component(base_image=cuda_image(), install_kfp_package=False)
def infer(
    config_json: str,
    records: Input[Dataset],
    model_uri: str,
    predictions: Output[Dataset],
    metrics: Output[Metrics],
):
    """Segment the queried images with `model_uri` (a checkpoint URI or models:/name@alias;
    empty: the config's `infer.model`, or none for predictors that need no checkpoint)."""
    import os

    from components.component_io import log_metrics
    from components.config import config_from_json
    from components.infer.infer import run_infer

    result = run_infer(
        config_from_json(config_json),
        records=os.path.join(records.path, "records.jsonl"),
        model=model_uri or None,
        out=predictions.path,
    )
    log_metrics(metrics, result)
