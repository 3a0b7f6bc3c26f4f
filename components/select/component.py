"""KFP component `select`: the images people should refine first (logic: components.select)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def select(
    config_json: str,
    predictions: Input[Dataset],
    records: Input[Dataset],
    selected: Output[Dataset],
    metrics: Output[Metrics],
):
    """Pick `select.budget` pre-annotated images by `select.strategy`."""
    import os

    from components.component_io import log_metrics
    from components.config import config_from_json
    from components.select.stage import run_select

    result = run_select(
        config_from_json(config_json),
        predictions=predictions.path,
        records=os.path.join(records.path, "records.jsonl"),
        out=selected.path,
    )
    log_metrics(metrics, result)
