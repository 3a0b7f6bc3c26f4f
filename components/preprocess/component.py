"""KFP component `preprocess`: merge, split and tile datasets (logic: components.preprocess)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def preprocess(
    config_json: str,
    dataset: Input[Dataset],
    splits: Output[Dataset],
    metrics: Output[Metrics],
    earlier_datasets: list = [],  # noqa: B006 - KFP reads the default from the signature
):
    """Merge `dataset` with earlier rounds' datasets (`earlier_datasets`; empty: the run's
    `preprocess.inputs` from config_json), split by image and tile."""
    from components.component_io import log_metrics
    from components.config import config_from_json
    from components.preprocess.stage import pipeline_inputs, run_preprocess

    cfg = config_from_json(config_json)
    result = run_preprocess(
        cfg,
        inputs=pipeline_inputs(cfg, earlier_datasets, dataset.path),
        out=splits.path,
    )
    log_metrics(metrics, result)
