"""KFP component `evaluate`: per-class IoU/Dice and a report (logic: components.evaluate)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def evaluate(
    config_json: str,
    model: Input[Model],
    splits: Input[Dataset],
    evaluation: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Evaluate `model` on the test split; the HTML report is shown in the KFP UI."""
    import os

    from components.component_io import log_metrics, self_contained_html
    from components.config import config_from_json
    from components.evaluate.stage import run_evaluate

    result = run_evaluate(
        config_from_json(config_json), model=model.path, data=splits.path, out=evaluation.path
    )
    self_contained_html(os.path.join(evaluation.path, "report.html"), report.path)
    log_metrics(metrics, result)
